"""msnet.qcfc: QC-FC statistics against statsmodels, the ROI-first denoising against the
voxelwise route, the subject file, the rule's tables and bad inputs."""

import json

import numpy as np
import pandas as pd
import pytest

from msnet import qcfc
from msnet.connectivity import relmat, sphere_means, sphere_membership
from msnet.denoise import clean_signals, clean_subject, resolve_options
from msnet.errors import MsnetInputError

from test_denoise import NO_QC, TR, write_subject


# --------------------------------------------------------------------------- statistics


def _subjects(rng, n=90, n_studies=3):
    table = pd.DataFrame({
        "study_id": rng.choice([f"S{i}" for i in range(n_studies)], n),
        "age": rng.normal(40, 10, n),
        "sex": rng.choice(["F", "M"], n),
        "group": rng.choice(["MS", "HC"], n),
    })
    table["mean_fd"] = rng.gamma(2.0, 0.08, n) + 0.05 * (table["group"] == "MS")
    return table


def test_partial_correlation_equals_statsmodels_ols():
    """r = correlation of the OLS residuals of edge and FD on the covariates (pingouin's
    definition); p = the OLS t test of FD's coefficient in edge ~ FD + covariates."""
    import statsmodels.api as sm

    rng = np.random.default_rng(1)
    table = _subjects(rng)
    covs, names = qcfc.covariate_matrix(table, ["age", "sex", "group"])
    assert names[:3] == ["age", "sex", "group"] and names[3:] == ["study_S1", "study_S2"]
    fd = table["mean_fd"].to_numpy()
    y = rng.normal(size=(len(fd), 7)) + np.outer(fd, np.linspace(-2, 2, 7)) + covs[:, :1] * 0.01
    r, p, df = qcfc.partial_correlation(y, fd, covs)
    z = sm.add_constant(covs)
    assert df == len(fd) - z.shape[1] - 1
    rx = sm.OLS(fd, z).fit().resid
    for k in range(y.shape[1]):
        ry = sm.OLS(y[:, k], z).fit().resid
        assert r[k] == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-12)
        full = sm.OLS(y[:, k], np.column_stack([z, fd])).fit()
        assert p[k] == pytest.approx(full.pvalues[-1], rel=1e-9, abs=1e-15)
    one = qcfc.partial_correlation(y[:, 3], fd, covs)
    assert one[0] == pytest.approx(r[3]) and one[1] == pytest.approx(p[3])


def test_partial_correlation_bad_inputs():
    x = np.arange(10.0)
    with pytest.raises(MsnetInputError, match="one row per subject"):
        qcfc.partial_correlation(np.zeros((9, 2)), x)
    with pytest.raises(MsnetInputError, match="no degrees of freedom"):
        qcfc.partial_correlation(np.zeros((3, 2)), x[:3], np.arange(3.0)[:, None])
    with pytest.raises(MsnetInputError, match="finite"):
        qcfc.partial_correlation(np.zeros((10, 2)), np.r_[np.nan, x[1:]])
    r, p, _ = qcfc.partial_correlation(np.ones((10, 2)), x)  # a constant edge: n/a, not 0
    assert np.isnan(r).all() and np.isnan(p).all()


def test_strategy_metrics_detect_a_planted_motion_edge_effect_and_its_distance_dependence():
    rng = np.random.default_rng(2)
    n, n_edges = 120, 400
    fd = rng.gamma(2.0, 0.1, n)
    distance = rng.uniform(10, 150, n_edges)
    slope = np.where(distance < 50, 1.5, 0.0)  # motion inflates short edges only
    fc = rng.normal(0, 0.2, (n, n_edges)) + np.outer(fd, slope)
    summary, edges = qcfc.strategy_metrics(fc, fd, np.zeros((n, 0)), distance)
    short = distance < 50
    assert summary["n"] == n and summary["n_edges"] == n_edges
    assert summary["pct_sig_fdr"] == pytest.approx(100 * np.mean(edges["q_fdr"] < 0.05))
    assert (edges["q_fdr"][short] < 0.05).mean() > 0.9 and (edges["q_fdr"][~short] < 0.05).mean() < 0.05
    assert summary["distance_rho"] < -0.5
    null, _ = qcfc.strategy_metrics(rng.normal(size=(n, n_edges)), fd, np.zeros((n, 0)), distance)
    assert null["pct_sig_fdr"] < 1.0 and 2.0 < null["pct_sig_uncorrected"] < 8.0
    assert null["median_abs_r"] == pytest.approx(null["null_median_abs_r"], rel=0.15)


def test_fd_group_tests_equal_scipy_and_statsmodels():
    import statsmodels.formula.api as smf
    from scipy import stats

    rng = np.random.default_rng(3)
    table = _subjects(rng, n=80)
    out = qcfc.fd_group_tests(table).set_index("test")
    ms, hc = (table.loc[table["group"] == g, "mean_fd"] for g in ("MS", "HC"))
    welch = stats.ttest_ind(ms, hc, equal_var=False)
    assert out.loc["Welch t", "p"] == pytest.approx(welch.pvalue)
    assert out.loc["Welch t", "test_statistic"] == pytest.approx(welch.statistic)
    assert out.loc["Mann-Whitney U", "p"] == pytest.approx(
        stats.mannwhitneyu(ms, hc, alternative="two-sided").pvalue)
    fit = smf.ols("mean_fd ~ C(group, Treatment('HC')) + C(study_id)", table).fit()
    term = "C(group, Treatment('HC'))[T.MS]"
    assert out.loc["OLS with study indicators", "fd_difference"] == pytest.approx(fit.params[term])
    assert out.loc["OLS with study indicators", "p"] == pytest.approx(fit.pvalues[term])
    assert out.loc["Welch t", "n_ms"] == len(ms)


# --------------------------------------------------------------------------- options


def test_strategies_resolve_over_the_denoise_section_main_first():
    strategies = qcfc.resolve_strategies({}, {"smoothing_fwhm": 4.0})
    assert list(strategies) == ["main", "simple", "scrubbing", "compcor", "gsr"]
    assert all(o["smoothing_fwhm"] == 4.0 for o in strategies.values())
    assert strategies["gsr"]["global_signal"] == "basic" and strategies["gsr"]["scrub"] is None
    assert strategies["main"] == resolve_options({"smoothing_fwhm": 4.0})
    same = qcfc.resolve_strategies({"strategies": [{"name": "simple", "strategy": "simple"},
                                                   {"name": "mine", "scrub": 5}]}, {})
    assert list(same) == ["mine", "simple"]  # the listed twin of the main analysis names it
    aroma = qcfc.resolve_strategies({}, {"strategy": "ica_aroma"})
    assert list(aroma) == ["main"]  # the others' BOLD (desc-preproc) is not the one read


@pytest.mark.parametrize("strategies, words", [
    ([{"strategy": "simple"}], "name must be letters and digits"),
    ([{"name": "a-b"}], "name must be letters and digits"),
    ([{"name": "main"}], "reserved for the main analysis"),
    ([{"name": "a"}, {"name": "a"}], "used twice"),
    ([{"name": "a", "smoothing_fwhm": 4}], "cannot set"),
    ([{"name": "a", "multi_run": "concatenate"}], "cannot set"),
    ([{"name": "a", "strategy": "ica_aroma"}], "ica_aroma"),
    ([{"name": "a", "motion": "lots"}], "denoise.motion"),
    ([{"name": "a", "high_pass": 0.1, "low_pass": 0.05}], "high_pass"),
    (["simple"], "must be a mapping"),
])
def test_bad_strategies_are_named(strategies, words):
    with pytest.raises(MsnetInputError, match=words):
        qcfc.resolve_strategies({"strategies": strategies}, {})


@pytest.mark.parametrize("options, words", [
    ({"alpha": 0.7}, "qcfc.alpha"), ({"max_pct_fdr": -1}, "qcfc.max_pct_fdr"),
    ({"covariates": ["age", "edss"]}, "qcfc.covariates"), ({"enable": True}, "unknown key"),
    ({"strategies": "simple"}, "list of strategies"),
])
def test_bad_options_are_named(options, words):
    with pytest.raises(MsnetInputError, match=words):
        qcfc.resolve_options(options)


def test_config_validation_lists_every_strategy_problem():
    from msnet.config import validate_config

    with pytest.raises(MsnetInputError) as err:
        validate_config({"qcfc": {"strategies": [{"name": "main"}, {"name": "x", "scrub": -2}]}})
    text = str(err.value)
    assert "qcfc.strategies[0].name 'main'" in text and "qcfc.strategies[1] (x)" in text
    assert validate_config({"qcfc": {"enabled": False, "strategies": [{"name": "main"}]}})


# --------------------------------------------------------------------------- subject stage


def _centres(mask_img, k=14, seed=0):
    from msnet import atlas

    coords = atlas.mask_coordinates(mask_img)
    return coords[np.random.default_rng(seed).choice(len(coords), k, replace=False)]


STRATEGIES = {
    "main": {},
    "gsr": {"scrub": None, "global_signal": "basic"},
    "simple": {"strategy": "simple"},
    "scrub2": {"fd_threshold": 0.2, "std_dvars_threshold": 1.2, "scrub": 3, "wm_csf": "full"},
    "nofilter": {"high_pass": None, "low_pass": None, "motion": "basic"},
}


@pytest.mark.parametrize("multi_run", ["first", "concatenate"])
def test_roi_first_denoising_equals_voxel_first(tmp_path, multi_run):
    """Cleaning the ROI means of the uncleaned data (one read of the BOLD for every strategy)
    gives the ROI series and FC of cleaning every voxel first and then averaging."""
    write_subject(tmp_path, run=1, n=90, seed=1, fd_spikes=(20, 45), dvars_spikes=(30,))
    files = write_subject(tmp_path, run=2, n=80, seed=2, fd_spikes=(10,))
    base = {"multi_run": multi_run}
    first = clean_subject(files, base, NO_QC)
    centres = _centres(first.mask_img)

    def membership(mask_img):
        return sphere_membership(mask_img, centres, 6.0)[0]

    shared = clean_subject(files, base, NO_QC, roi_membership=membership)
    assert len(shared.runs) == (2 if multi_run == "concatenate" else 1)
    np.testing.assert_array_equal(shared.data, first.data)  # keeping ROI means changes nothing
    for name, opts in STRATEGIES.items():
        opts = {**base, **opts}
        voxelwise = clean_subject(files, opts, NO_QC)
        expected = sphere_means(voxelwise.data, membership(voxelwise.mask_img))
        got = clean_signals(shared.runs, opts, TR)
        scale = expected.std(axis=0).max()
        assert got.series.shape == expected.shape, name
        np.testing.assert_allclose(got.series, expected, rtol=0, atol=1e-5 * scale, err_msg=name)
        fc_expected = relmat(pd.DataFrame(expected)).to_numpy()[np.triu_indices(len(centres), 1)]
        np.testing.assert_allclose(qcfc.edge_fc(got.series), fc_expected, atol=2e-5,
                                   err_msg=name)
        runs = [r for r in voxelwise.qc["runs"] if r["usable"]]
        assert got.n_regressors == sum(r["n_regressors"] for r in runs), name
        post = sum(r["n_volumes"] - r["n_dummy"] for r in runs)
        assert (got.n_volumes, got.n_censored) == (post, post - sum(r["n_kept"] for r in runs))
        assert got.tdof_loss == got.n_regressors + got.n_censored


def test_edge_fc_equals_relmat_upper_triangle():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 9)).cumsum(axis=0)
    x[:, 3] = 7.0  # constant ROI
    x[:, 5] = np.nan  # missing ROI
    x[:, 8] = x[:, 7]  # identical ROIs
    ref = relmat(pd.DataFrame(x)).to_numpy()[np.triu_indices(9, 1)]
    np.testing.assert_allclose(qcfc.edge_fc(x), ref, atol=1e-12, equal_nan=True)


def test_subject_edges_file_round_trip_and_unusable_strategy(tmp_path):
    files = write_subject(tmp_path, n=90, seed=3, fd_spikes=(20,))
    first = clean_subject(files, {}, NO_QC)
    centres = _centres(first.mask_img, k=6)
    cleaned = clean_subject(files, {}, NO_QC, roi_membership=lambda m: sphere_membership(
        m, centres, 6.0)[0])
    strategies = qcfc.resolve_strategies({"strategies": [
        {"name": "everything", "fd_threshold": 0.0001, "std_dvars_threshold": 0.0001},
        {"name": "compcor", "strategy": "compcor"}]}, {})
    edges = qcfc.subject_edges(cleaned, strategies)
    assert list(edges["usable"]) == [True, False, False]
    assert "all 90 volumes censored" in edges["reason"][1]
    assert "CompCor" in edges["reason"][2]  # the synthetic table has no sidecar
    assert np.isnan(edges["fc"][1:]).all() and np.isfinite(edges["fc"][0]).all()
    path = tmp_path / "sub-01_atlas-Seitzman300_desc-strategies_edges.npz"
    qcfc.write_subject_edges(edges, path, strategies)
    back = qcfc.read_subject_edges(path)
    assert list(back["strategies"]) == list(strategies)
    np.testing.assert_array_equal(back["fc"], edges["fc"])
    sidecar = json.loads(path.with_suffix("").with_suffix(".json").read_text())
    assert sidecar["Units"] == "Fisher z" and set(sidecar["Strategies"]) == set(strategies)
    path.write_bytes(b"not a zip")
    with pytest.raises(MsnetInputError, match="re-run the subject stage"):
        qcfc.read_subject_edges(path)


# --------------------------------------------------------------------------- the rule


def _rule_inputs(tmp_path, n=40, strategies=("main", "simple"), seed=5):
    """QC tables, participants and subject edge files for compute_qcfc, with motion that
    inflates the edges of the 'simple' strategy only."""
    rng = np.random.default_rng(seed)
    table = _subjects(rng, n=n, n_studies=2)
    table["participant_id"] = [f"sub-{i:03d}" for i in range(n)]
    table["include"] = True
    table.loc[0, "include"] = False
    participants, qc_tables, edge_files = {}, [], {}
    n_edges = 300 * 299 // 2
    for study, sub in table.groupby("study_id"):
        participants[study] = tmp_path / f"{study}_participants.tsv"
        sub[["participant_id", "group", "age", "sex"]].to_csv(participants[study], sep="\t",
                                                              index=False)
        qc_tables.append(tmp_path / f"{study}_qc.tsv")
        sub.assign(exclusion_reason="").to_csv(qc_tables[-1], sep="\t", index=False)
    for row in table.itertuples():
        noise = rng.normal(0, 0.2, (len(strategies), n_edges)).astype(np.float32)
        noise[1] += np.float32(2.0 * row.mean_fd)
        path = tmp_path / f"{row.participant_id}.npz"
        qcfc.write_subject_edges({
            "strategies": list(strategies), "fc": noise, "n_regressors": np.array([26, 31]),
            "n_censored": np.array([5, 0]), "n_volumes": np.array([140, 140]),
            "usable": np.array([True, True]), "reason": np.array(["", ""])}, path,
            {s: {} for s in strategies})
        edge_files[(row.study_id, row.participant_id)] = str(path)
    return qc_tables, participants, edge_files


def test_compute_qcfc_writes_described_tables(tmp_path):
    from msnet.derivatives import COLUMNS

    qc_tables, participants, edge_files = _rule_inputs(tmp_path)
    options = {"strategies": [{"name": "simple", "strategy": "simple"}]}
    paths = qcfc.compute_qcfc(qc_tables, participants, edge_files, tmp_path / "qcfc", options, {})
    stats = pd.read_csv(paths["strategies"], sep="\t").set_index("strategy")
    assert list(stats.index) == ["main", "simple"] and stats["n"].tolist() == [39, 39]
    assert stats.loc["main", "pct_sig_fdr"] < 1 and stats.loc["simple", "pct_sig_fdr"] > 50
    assert bool(stats.loc["main", "acceptable"]) and not bool(stats.loc["simple", "acceptable"])
    assert stats.loc["main", "tdof_loss_mean"] == 31 and stats.loc["simple", "tdof_loss_mean"] == 31
    edges = pd.read_csv(paths["edges"], sep="\t")
    assert len(edges) == 2 * 44850 and edges["edge_distance_mm"].min() > 0
    for path in paths.values():
        table = pd.read_csv(path, sep="\t")
        assert all(c in COLUMNS for c in table.columns), path
        assert json.loads(open(path[:-4] + ".json").read())  # every table has its sidecar
    text = qcfc.verdict(pd.read_csv(paths["strategies"], sep="\t"), options)
    assert text.startswith("The main analysis used the strategy 'main'") and " acceptable" in text


def test_compute_qcfc_bad_inputs(tmp_path):
    qc_tables, participants, edge_files = _rule_inputs(tmp_path)
    options = {"strategies": [{"name": "simple", "strategy": "simple"}]}
    missing = dict(edge_files)
    missing[next(iter(missing))] = str(tmp_path / "nowhere.npz")
    key = [k for k in edge_files if k[1] != "sub-000"][0]
    missing[key] = str(tmp_path / "nowhere.npz")
    with pytest.raises(MsnetInputError, match="no edge file for 1 included subject"):
        qcfc.compute_qcfc(qc_tables, participants, missing, tmp_path / "q", options, {})
    other = {"strategies": [{"name": "compcor", "strategy": "compcor"}]}
    with pytest.raises(MsnetInputError, match="holds strategies"):
        qcfc.compute_qcfc(qc_tables, participants, edge_files, tmp_path / "q", other, {})


# --------------------------------------------------------------------------- simulation


def test_simulated_motion_artifact_grows_with_fd_and_is_spatially_smooth():
    from msnet import simulate

    cfg = simulate.sim_config({"resolution_mm": 8, "motion_artifact": 2.0, "n_volumes": 120,
                               "tr": 2.0})
    grid = simulate.load_grid(8)
    rng = np.random.default_rng(0)
    calm = simulate._motion_params(rng, 120, False)
    moving = simulate._motion_params(rng, 120, True)
    a = simulate.motion_artifact(cfg, grid, np.random.default_rng(1), calm)
    b = simulate.motion_artifact(cfg, grid, np.random.default_rng(1), moving)
    assert b.std() > 2 * a.std()
    centred = b - b.mean(axis=0)
    corr = np.corrcoef(centred[:, :400].T)
    d = np.linalg.norm(grid.coords[:400, None] - grid.coords[None, :400], axis=2)
    assert np.nanmean(corr[(d > 0) & (d <= 16)]) > np.nanmean(corr[d >= 60]) + 0.2
    off = simulate.sim_config({"resolution_mm": 8})
    assert off["motion_artifact"] == 0.0


# --------------------------------------------------------------------------- report


def test_report_section_states_the_main_strategy_its_verdict_and_cites(tmp_path):
    from msnet.config import validate_config
    from msnet.report import build_report, figure_paths, report_inputs

    qc_tables, participants, edge_files = _rule_inputs(tmp_path)
    config = validate_config({"qcfc": {"strategies": [{"name": "simple", "strategy": "simple"}]}})
    paths = qcfc.compute_qcfc(qc_tables, participants, edge_files, tmp_path / "qcfc",
                              config["qcfc"], config["denoise"])
    inputs = report_inputs(tmp_path, [], None, qcfc=True)
    assert inputs["qcfc"] == paths
    out = build_report(config, {"qcfc": paths}, tmp_path / "report.html", tmp_path / "figures")
    text = (tmp_path / "report.html").read_text()
    section = text.split('<h2 id="motion-qcfc">')[1].split("</section>")[0]
    assert "The main analysis used the strategy &#x27;main&#x27;" in section
    assert "Its QC-FC is acceptable by msnet&#x27;s criterion (at most 5% of edges" in section
    assert "Edges FDR q &lt; \u03b1 (%)" in section and "Median |QC-FC|" in section
    assert "Welch t" in section and section.count("<img ") == 2
    for png in figure_paths(tmp_path / "figures", qcfc=True)["qcfc_benchmarks"] + \
            figure_paths(tmp_path / "figures", qcfc=True)["qcfc_fd"]:
        assert png in out["figures"]
    assert figure_paths(tmp_path / "figures")["qcfc_fd"] == []
    methods = text.split('<h2 id="methods">')[1]
    assert "Motion benchmarks (QC-FC). Following (Ciric et al., 2017; Parkes et al., 2018)" \
        in methods
    bib = (tmp_path / "citations.bib").read_text()
    assert "10.1016/j.neuroimage.2017.03.020" in bib and "10.1016/j.neuroimage.2017.12.073" in bib
    off = build_report({**config, "qcfc": {"enabled": False}}, {}, tmp_path / "off" / "r.html",
                       tmp_path / "off" / "figures")
    off_text = (tmp_path / "off" / "r.html").read_text()
    assert "QC-FC was not computed (qcfc.enabled: false)" in off_text
    assert "Ciric" not in off_text and not any("qcfc" in f for f in off["figures"])
