"""Tests of msnet.clinical: regressions on disease duration and EDSS within MS."""

import nibabel as nib
import numpy as np
import pandas as pd
from test_group import AFFINE, SHAPE, set_qc, write_masks, write_study

from msnet import ANALYSIS_NETWORKS, clinical, group
from msnet import stats as st

VARS = ["disease_duration", "edss"]
OPTS = {"n_permutations": 50, "cluster_forming_p": 0.01, "seed": 1, "min_subjects": 5}


def ms_frame(rng, studies=("a", "b", "c"), n=30, slope=0.0):
    """Array-level MS subject table (as load_subjects gives) with clinical variables."""
    rows = []
    for s in studies:
        for i in range(n):
            dd = rng.uniform(0, 20)
            rows.append({"study_id": s, "participant_id": f"sub-{s}{i}", "group": "MS",
                         "include": True, "age": rng.uniform(20, 60),
                         "sex": rng.choice(["M", "F"]), "disease_duration": dd,
                         "edss": float(np.clip(np.round(dd / 4 + rng.normal(0, 1)), 0, 9))})
    df = pd.DataFrame(rows)
    shift = df["study_id"].map({s: rng.normal(0, 0.2) for s in studies})
    for m in group.analysis_metrics().metric:
        df[m] = rng.normal(0.3, 0.1, len(df)) + shift
    df["within_DMN"] += slope * df["edss"]
    return df


def test_study_rows_match_statsmodels_ols():
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(0)
    df = ms_frame(rng, ("a",), 40, slope=0.03)
    table, _ = clinical.clinical_effects(df, VARS, ["age", "sex"], pooled=False, study_id="a")
    ref = smf.ols("within_DMN ~ edss + disease_duration + age + C(sex)", df).fit()
    for v in VARS:
        row = table[(table.metric == "within_DMN") & (table.variable == v)].iloc[0]
        assert row.status == "ok" and row.method == "OLS" and row.n == 40
        np.testing.assert_allclose([row.beta, row.se, row.t, row.p],
                                   [ref.params[v], ref.bse[v], ref.tvalues[v], ref.pvalues[v]],
                                   rtol=1e-8)
        np.testing.assert_allclose([row.ci_low, row.ci_high], ref.conf_int().loc[v], rtol=1e-8)
        np.testing.assert_allclose(row.std_beta, ref.params[v] * df[v].std() /
                                   df.within_DMN.std(), rtol=1e-10)
    assert len(table) == 10 * len(VARS)


def test_pooled_rows_match_statsmodels_mixedlm():
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(1)
    df = ms_frame(rng, slope=0.03)
    table, _ = clinical.clinical_effects(df, VARS, ["age"], pooled=True, study_id="pooled")
    row = table[(table.metric == "within_DMN") & (table.variable == "edss")].iloc[0]
    for c in ("age", "disease_duration"):
        df[c + "_c"] = df[c] - df.groupby("study_id")[c].transform("mean")
    ref = smf.mixedlm("within_DMN ~ edss + disease_duration_c + age_c", df,
                      groups=df.study_id).fit()
    assert row.method == "MixedLM" and row.n_studies == 3
    np.testing.assert_allclose([row.beta, row.p], [ref.params["edss"], ref.pvalues["edss"]],
                               rtol=1e-3)
    np.testing.assert_allclose([row.ci_low, row.ci_high], ref.conf_int().loc["edss"], rtol=1e-3)


def test_null_clinical_nothing_significant_and_planted_slope_found():
    rng = np.random.default_rng(2)
    null, _ = clinical.clinical_effects(ms_frame(rng), VARS, ["age", "sex"], pooled=True)
    assert (null.status == "ok").all() and (null.q_fdr > 0.05).all()
    for slope in (0.04, -0.04):
        planted, _ = clinical.clinical_effects(ms_frame(rng, slope=slope), VARS, ["age", "sex"],
                                               pooled=True)
        hits = planted[planted.q_fdr < 0.05]
        assert list(zip(hits.metric, hits.variable)) == [("within_DMN", "edss")]
        assert np.sign(hits.beta.iloc[0]) == np.sign(slope)
        assert np.sign(hits.std_beta.iloc[0]) == np.sign(slope)


def test_voxelwise_null_and_planted_slope():
    rng = np.random.default_rng(3)
    df = ms_frame(rng, n=20)
    mask = np.ones((5, 4, 4), bool)
    design = st.build_design(df, ["edss"], ["disease_duration", "age"], "study_id")
    opts = {**st.INFERENCE_DEFAULTS, "n_permutations": 200, "cluster_forming_p": 0.01}
    Y = rng.normal(size=(len(df), mask.size))
    null = group.permutation_inference(Y, design, "edss", mask, opts, 0)
    assert null.p_fwe.min() > 0.05 and (st.fdr_bh(null.p) > 0.05).all()
    Y[:, :6] -= 1.0 * df[["edss"]].to_numpy()
    planted = group.permutation_inference(Y, design, "edss", mask, opts, 0)
    assert (planted.p_fwe[:6] < 0.05).all() and (planted.t[:6] < 0).all()
    assert (planted.p_fwe[6:] > 0.05).all()


def test_study_lacking_a_variable_is_left_out_of_that_model_only():
    rng = np.random.default_rng(4)
    df = ms_frame(rng)
    df.loc[df.study_id == "c", "edss"] = np.nan
    table, _ = clinical.clinical_effects(df, VARS, ["age"], pooled=True)
    dmn = table[table.metric == "within_DMN"].set_index("variable")
    assert dmn.loc["edss", "studies_without_variable"] == "c"
    assert dmn.loc["edss", "n"] == 60 and dmn.loc["edss", "n_studies"] == 2
    assert dmn.loc["disease_duration", "n"] == 90 and dmn.loc["disease_duration", "n_studies"] == 3
    assert "edss: not adjusted in study c" in dmn.loc["disease_duration", "covariates_dropped"]
    only_c, _ = clinical.clinical_effects(df[df.study_id == "c"], VARS, ["age"], pooled=False)
    assert set(only_c[only_c.variable == "edss"].status) == {"not_available"}
    assert set(only_c[only_c.variable == "disease_duration"].status) == {"ok"}


def test_partial_regression_slope_equals_fixed_effect_beta():
    rng = np.random.default_rng(5)
    df = ms_frame(rng, slope=0.03)
    scatter = clinical.partial_regression_data(df, VARS, ["age", "sex"])
    pts = scatter[(scatter.metric == "within_DMN") & (scatter.variable == "edss")]
    assert len(pts) == 90 and set(pts.study_id) == {"a", "b", "c"}
    design = st.build_design(df, ["edss"], ["disease_duration", "age", "sex"], "study_id")
    X, cols = design.with_study_dummies()
    beta = st.ols(df.within_DMN, X, np.eye(X.shape[1])[cols.index("edss")]).effect[0]
    slope = np.sum(pts.x_resid * pts.y_resid) / np.sum(pts.x_resid**2)
    np.testing.assert_allclose(slope, beta, rtol=1e-8)
    assert list(scatter.columns) == ["metric", "network_a", "network_b", "kind", "variable",
                                     "study_id", "participant_id", "x_resid", "y_resid"]


def test_clinical_files(tmp_path):
    rng = np.random.default_rng(6)
    studies = {"A": write_study(tmp_path, "A", 14, 4, rng, slope=0.1),
               "B": write_study(tmp_path, "B", 12, 4, rng, slope=0.1, edss=False)}
    set_qc(studies["A"]["qc"][0], include=False)
    masks = write_masks(tmp_path)
    cat = lambda key: [p for s in studies.values() for p in s[key]]  # noqa: E731
    maps = {net: [p for s in studies.values() for p in s["maps"][net]]
            for net in ANALYSIS_NETWORKS}
    path = clinical.clinical_study(studies["B"]["participants"], studies["B"]["qc"],
                                   studies["B"]["networks"], "B", tmp_path / "clin", OPTS)
    b = pd.read_csv(path, sep="\t")
    assert path.endswith("study-B_desc-clinical_networks.tsv")
    assert set(b[b.variable == "edss"].status) == {"not_available"}
    assert (b[b.variable == "disease_duration"].n == 12).all()
    out = clinical.clinical_pooled({k: s["participants"] for k, s in studies.items()},
                                   cat("qc"), cat("networks"), maps, masks, tmp_path / "clin",
                                   OPTS)
    table = pd.read_csv(out["networks"], sep="\t", keep_default_na=False)
    edss = table[(table.metric == "within_DMN") & (table.variable == "edss")].iloc[0]
    assert edss.studies_without_variable == "B" and int(edss.n) == 13
    assert float(edss.beta) > 0 and float(edss.q_fdr) < 0.05
    assert set(table.variable) == {"disease_duration", "edss", "t2lv"}
    assert set(table[table.variable == "t2lv"].status) == {"not_available"}
    for net in ANALYSIS_NETWORKS:
        for var in ("diseaseduration", "edss"):
            prefix = tmp_path / "clin" / f"pooled_network-{net}_var-{var}"
            for stat in ("t", "fdrq", "logpfwe", "logpcfwe"):
                img = nib.load(f"{prefix}_space-MNI152NLin2009cAsym_stat-{stat}_map.nii.gz")
                assert img.shape == SHAPE and np.allclose(img.affine, AFFINE)
            assert list(pd.read_csv(f"{prefix}_clusters.tsv", sep="\t").columns) == [
                "network", "variable"] + st.cluster_columns("beta")
    scatter = pd.read_csv(out["scatter"], sep="\t")
    assert set(scatter.variable) == {"disease_duration", "edss"} and len(scatter) > 0
    excl = pd.read_csv(out["exclusions"], sep="\t", keep_default_na=False)
    assert "QC: excluded" in set(excl.reason)


def test_clinical_voxelwise_leaves_out_voxels_without_signal(tmp_path):
    """An MS subject's NaN (flat) voxels are left out of the voxelwise clinical model, not 0."""
    rng = np.random.default_rng(8)
    s = write_study(tmp_path, "A", 14, 4, rng)
    masks = write_masks(tmp_path)
    region = np.zeros(SHAPE, bool)
    region[:2, :3, :2] = True
    args = ({"A": s["participants"]}, s["qc"], s["networks"])
    clinical.clinical_pooled(*args, dict(s["maps"]), masks, tmp_path / "ref", OPTS)
    vol = nib.load(s["maps"]["SMN"][1]).get_fdata(dtype=np.float32)
    vol[region] = np.nan
    nib.Nifti1Image(vol, AFFINE).to_filename(s["maps"]["SMN"][1])
    out = clinical.clinical_pooled(*args, dict(s["maps"]), masks, tmp_path / "flat", OPTS)
    name = "pooled_network-SMN_var-edss_space-MNI152NLin2009cAsym_stat-t_map.nii.gz"
    t = nib.load(tmp_path / "flat" / name).get_fdata()
    t_ref = nib.load(tmp_path / "ref" / name).get_fdata()
    assert np.isnan(t[region]).all()
    np.testing.assert_allclose(t[~region], t_ref[~region], rtol=1e-5)
    excl = pd.read_csv(out["exclusions"], sep="\t", keep_default_na=False)
    assert ((excl.level == "voxels") & excl.scope.str.startswith("map:SMN")
            & excl.reason.str.contains("sub-A01")).any()


def test_pooled_model_without_residual_df_beyond_study_intercepts_is_not_fitted():
    """Two MS per study in three studies: a MixedLM would 'fit' through its random
    intercepts and give absurd z values; the model is reported as not estimable."""
    rng = np.random.default_rng(3)
    table, _ = clinical.clinical_effects(ms_frame(rng, n=2), VARS, ["age", "sex"],
                                         pooled=True, min_subjects=5)
    assert (table["status"] == "excluded").all()
    assert table["reason"].str.contains("study intercepts").all()
    assert table["p"].isna().all()
    # with 10 per study the same model is estimated
    ok, _ = clinical.clinical_effects(ms_frame(rng, n=10), VARS, ["age", "sex"], pooled=True,
                                      min_subjects=5)
    assert (ok["status"] == "ok").all()
