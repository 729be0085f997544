"""Literature mode (issue 9): peaks and studies tables, coordinate and statistic conversion."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from msnet import literature as lit
from msnet.errors import MsnetInputError

STUDIES = """study_id\tn_ms\tn_hc\tthreshold_p\tnetworks\tedss
A\t30\t20\t0.001\tn/a\t2.5
B\t40\t25\tn/a\tDMN,SMN\t3.0
"""
PEAKS_HEADER = "study_id\tnetwork\tx\ty\tz\tspace\tstat\tstat_type\tdirection\n"
GOOD = [
    "A\tDMN\t-4\t42\t12\tMNI\t4.5\tt\tMS>HC",
    "A\tDMN\t-6\t-46\t28\tMNI\t-3.9\tz\tMS<HC",
    "B\tSMN\t36\t-18\t56\tTAL\t0.0005\tp\tMS>HC",
]


def _write(tmp_path, peaks_rows, studies=STUDIES):
    (tmp_path / "studies.tsv").write_text(studies)
    (tmp_path / "peaks.tsv").write_text(PEAKS_HEADER + "\n".join(peaks_rows) + "\n")
    table = lit.read_literature_studies(tmp_path / "studies.tsv")
    return table, tmp_path / "peaks.tsv"


def _read(tmp_path, rows):
    studies, path = _write(tmp_path, rows)
    return lit.read_peaks(path, studies, "studies.tsv")


def test_good_tables_are_read_and_converted(tmp_path):
    peaks = _read(tmp_path, GOOD)
    assert list(peaks.columns) == lit.PEAK_COLUMNS
    assert np.sign(peaks["t"]).tolist() == [1, -1, 1]
    # t -> g with the group stage's formulas
    d = 4.5 * np.sqrt(1 / 30 + 1 / 20)
    j = 1 - 3 / (4 * 50 - 9)
    assert peaks["g"][0] == pytest.approx(j * d)
    assert peaks["var_g"][0] == pytest.approx(j**2 * (1 / 30 + 1 / 20 + d**2 / 100))
    # z and p converted with df = n_ms + n_hc - 2 (one-sided p)
    assert stats.t.sf(abs(peaks["t"][1]), 48) == pytest.approx(stats.norm.sf(3.9))
    assert stats.t.sf(peaks["t"][2], 63) == pytest.approx(0.0005)
    studies = lit.read_literature_studies(tmp_path / "studies.tsv")
    assert studies.loc["A", "networks"] == ("DMN", "SMN", "VN", "SN")
    assert studies.loc["B", "networks"] == ("DMN", "SMN")
    assert studies.loc["B", "threshold_p"] == 0.001


def test_talairach_peak_within_1mm_of_nimare(tmp_path):
    from nimare.utils import tal2mni

    peaks = _read(tmp_path, GOOD)
    expected = tal2mni(np.array([[36.0, -18.0, 56.0]]))[0]
    got = peaks.loc[2, ["x_mni", "y_mni", "z_mni"]].to_numpy(float)
    assert np.linalg.norm(got - expected) < 1.0
    assert np.linalg.norm(got - [36, -18, 56]) > 1.0  # it did convert
    many = np.array([[-40.0, 20, 30], [10, -60, 5], [0, 0, 0], [50, -20, 40]])
    assert np.abs(lit.tal2mni(many) - tal2mni(many.copy())).max() < 1e-9


@pytest.mark.parametrize("row, needles", [
    ("A\tDMN\t-4\t42\t95\tMNI\t4\tt\tMS>HC", ["row 4", "outside the MNI152 brain mask",
                                              "signs and x y z order"]),
    ("C\tDMN\t-4\t42\t12\tMNI\t4\tt\tMS>HC", ["row 4", "study C has no row", "n_ms and n_hc"]),
    ("A\tDMN\t-4\t42\t12\tMNI\t3.0\tt\tMS>HC", ["row 4", "duplicate peak", "as row 1"]),
    ("A\tDAN\t-4\t42\t12\tMNI\t4\tt\tMS>HC", ["row 4", "column 'network'", "DMN, SMN, VN or SN"]),
    ("A\tDMN\t-4\t42\t12\tSPM\t4\tt\tMS>HC", ["row 4", "column 'space'", "TAL"]),
    ("A\tDMN\t-4\t42\t12\tMNI\t4\tF\tMS>HC", ["row 4", "column 'stat_type'"]),
    ("A\tDMN\t-4\t42\t12\tMNI\t-4\tt\tMS>HC", ["row 4", "sign opposite to direction"]),
    ("A\tDMN\t-4\t42\t12\tMNI\t0.2\tp\tMS>HC", ["row 4", "not a reported peak p"]),
    ("B\tVN\t-26\t-52\t54\tMNI\t4\tt\tMS<HC", ["row 4", "network VN is not among", "DMN,SMN"]),
])
def test_bad_peak_names_file_row_and_fix(tmp_path, row, needles):
    with pytest.raises(MsnetInputError) as err:
        _read(tmp_path, [*GOOD, row])
    message = str(err.value)
    assert "peaks.tsv" in message
    for needle in needles:
        assert needle in message, message


def test_all_problems_reported_together(tmp_path):
    rows = [*GOOD, "C\tDMN\t-4\t42\t12\tMNI\t4\tt\tMS>HC", "A\tDMN\t-4\t42\t95\tMNI\t4\tt\tMS>HC"]
    with pytest.raises(MsnetInputError) as err:
        _read(tmp_path, rows)
    assert "2 input problems" in str(err.value)


@pytest.mark.parametrize("studies, needles", [
    (STUDIES.replace("A\t30", "A\tthirty"), ["row 1", "'n_ms'", "not a number"]),
    (STUDIES.replace("A\t30", "A\t1"), ["row 1", "'n_ms'"]),
    (STUDIES + "A\t10\t10\tn/a\tn/a\tn/a\n", ["duplicate study_id A"]),
    (STUDIES.replace("DMN,SMN", "DMN,DAN"), ["row 2", "'networks'"]),
    (STUDIES.replace("A\t30\t20", "A\t30\tn/a"), ["row 1", "'n_hc' is empty"]),
])
def test_bad_studies_table(tmp_path, studies, needles):
    (tmp_path / "studies.tsv").write_text(studies)
    with pytest.raises(MsnetInputError) as err:
        lit.read_literature_studies(tmp_path / "studies.tsv")
    for needle in needles:
        assert needle in str(err.value), str(err.value)


# ------------------------------------------------------------------ ALE / MKDA via NiMARE
def _mask8():
    from nilearn import datasets, image

    mask = datasets.load_mni152_brain_mask(resolution=2)
    return image.resample_img(mask, target_affine=np.diag([8.0, 8.0, 8.0]),
                              interpolation="nearest", force_resample=True, copy_header=True)


def _synthetic_literature(n_studies=6, seed=3):
    rng = np.random.default_rng(seed)
    studies = pd.DataFrame({"study_id": [f"S{i}" for i in range(n_studies)],
                            "n_ms": rng.integers(20, 60, n_studies),
                            "n_hc": rng.integers(15, 40, n_studies)})
    studies["networks"] = [tuple(lit.ANALYSIS_NETWORKS)] * n_studies
    studies = studies.set_index("study_id", drop=False)
    rows = []
    for s in studies.index:
        for _ in range(3):
            xyz = np.array([-4.0, 42.0, 12.0]) + rng.normal(0, 6, 3)
            rows.append({"study_id": s, "network": "DMN", "direction": "MS>HC",
                         "x_mni": xyz[0], "y_mni": xyz[1], "z_mni": xyz[2]})
    return pd.DataFrame(rows), studies


@pytest.mark.parametrize("method", ["ALE", "MKDA"])
def test_ale_mkda_equal_nimare_called_directly(method, caplog):
    import logging
    import warnings

    from nimare.correct import FWECorrector
    from nimare.meta.cbma import ALE, MKDADensity
    from nimare.studyset import Studyset

    peaks, studies = _synthetic_literature()
    mask = _mask8()
    with caplog.at_level(logging.INFO):
        ours = lit.cbma_nimare(peaks, studies, "DMN", "MS>HC", mask, method, n_iters=20,
                               seed=5)
    # NiMARE's expected "running permutations from scratch" warning stays out of the logs
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    # the same coordinates and sample sizes, written out by hand for NiMARE
    source = {"id": "direct", "studies": [
        {"id": s, "analyses": [{"id": "a", "metadata": {"sample_sizes": [
            int(studies.loc[s, "n_ms"] + studies.loc[s, "n_hc"])]},
            "points": [{"space": "MNI", "coordinates": list(map(float, xyz))}
                       for xyz in g[["x_mni", "y_mni", "z_mni"]].to_numpy()]}]}
        for s, g in peaks.groupby("study_id")]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        est = (ALE if method == "ALE" else MKDADensity)(null_method="approximate",
                                                         random_state=5)
        res = est.fit(Studyset(source, target="mni152_2mm", mask=mask))
        res = FWECorrector(method="montecarlo", n_iters=20, vfwe_only=True).transform(res)
    for ours_key, name in (("z", "z"), ("stat", "stat"),
                           ("logp_fwe", "logp_level-voxel_corr-FWE_method-montecarlo")):
        direct = np.asarray(res.get_map(name, return_type="image").dataobj)
        np.testing.assert_allclose(ours[ours_key], direct, rtol=1e-6, atol=1e-6)
    assert ours["n_studies"] == 6 and ours["n_peaks"] == 18
    assert ours["z"].max() > 3  # the shared location stands out
    skipped = lit.cbma_nimare(peaks, studies, "DMN", "MS<HC", mask, method, n_iters=20)
    assert "0 studies reported DMN MS<HC peaks" in skipped["skipped"]
    assert not skipped["z"].any()


# ------------------------------------------------------------------ SDM-style estimator
def test_single_peak_map_is_the_analytic_gaussian():
    rng = np.random.default_rng(0)
    coords = rng.uniform(-60, 60, (500, 3))
    peak = np.array([10.0, -20.0, 30.0])
    lower, upper, est = lit.recreate_study_map(coords, peak, [0.8], 0.5, fwhm_mm=20.0)
    sigma = 20.0 / np.sqrt(8 * np.log(2))
    expected = 0.8 * np.exp(-np.sum((coords - peak) ** 2, axis=1) / (2 * sigma**2))
    np.testing.assert_allclose(est, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose((lower + upper) / 2, est, atol=1e-12)
    assert np.all(lower <= est) and np.all(est <= upper)
    at_peak = lit.recreate_study_map(peak[None], peak, [0.8], 0.5)
    assert [float(a[0]) for a in at_peak] == pytest.approx([0.8, 0.8, 0.8])
    # half maximum at FWHM/2; anisotropic kernel: per-axis FWHM
    half = lit.recreate_study_map(peak + [10.0, 0, 0], peak, [-1.0], 0.5)[2]
    assert half[0] == pytest.approx(-0.5)
    aniso = lit.recreate_study_map(peak + [[5.0, 0, 0], [0, 0, 15.0]], peak, [1.0], 0.5,
                                   fwhm_mm=(10.0, 20.0, 30.0))[2]
    assert aniso == pytest.approx([0.5, 0.5])


def test_study_without_peaks_contributes_zero_with_null_variance():
    from msnet.stats import hedges_g

    mask = _mask8()
    studies = pd.DataFrame({"study_id": ["P", "Q"], "n_ms": [30, 25], "n_hc": [20, 18],
                            "threshold_p": [0.001, 0.005],
                            "networks": [("DMN",), ("DMN", "SMN")]}).set_index(
        "study_id", drop=False)
    peaks = pd.DataFrame({"study_id": ["P"], "network": ["DMN"], "direction": ["MS>HC"],
                          "x_mni": [-4.0], "y_mni": [42.0], "z_mni": [12.0], "g": [0.9]})
    maps = lit.sdm_study_maps(peaks, studies, "DMN", mask)
    assert maps["studies"] == ["P", "Q"] and maps["n_peaks"] == [1, 0]
    assert not maps["Y"][1].any()
    g_thr = lit.threshold_g(0.005, 25, 18)
    # the sampling variance of a null effect plus the bounds' uniform variance (2 g_thr)²/12
    np.testing.assert_allclose(maps["V"][1], hedges_g(0.0, 25, 18)[1] + g_thr**2 / 3,
                               rtol=1e-12)
    plain = lit.sdm_study_maps(peaks, studies, "DMN", mask, bound_variance=False)
    np.testing.assert_allclose(plain["V"][1], hedges_g(0.0, 25, 18)[1], rtol=1e-12)
    np.testing.assert_allclose(maps["lower"][1], -g_thr)
    np.testing.assert_allclose(maps["upper"][1], g_thr)
    assert 0.6 < maps["Y"][0].max() <= 0.9  # the nearest 8 mm voxel is < 7 mm away
    smn = lit.sdm_study_maps(peaks, studies, "SMN", mask)
    assert smn["studies"] == ["Q"]  # P did not analyse the SMN


def _null_literature(rng, coords, k=10):
    """k studies, each reporting Poisson(1.5) peaks at random places with random signs and
    |t| above its p < 0.001 threshold: a literature with no true effect."""
    studies = pd.DataFrame({"study_id": [f"S{i}" for i in range(k)],
                            "n_ms": rng.integers(15, 60, k), "n_hc": rng.integers(12, 40, k),
                            "threshold_p": 0.001})
    studies["networks"] = [("SMN",)] * k
    studies = studies.set_index("study_id", drop=False)
    rows = []
    for s in studies.index:
        n1, n2 = studies.loc[s, "n_ms"], studies.loc[s, "n_hc"]
        for _ in range(rng.poisson(1.5)):
            xyz = coords[rng.integers(len(coords))] + rng.uniform(-4, 4, 3)
            t = (stats.t.isf(0.001, n1 + n2 - 2) + rng.exponential(1.0)) * rng.choice([-1, 1])
            rows.append({"study_id": s, "network": "SMN", "x_mni": xyz[0], "y_mni": xyz[1],
                         "z_mni": xyz[2], "g": float(lit.t_to_g(t, n1, n2)[0])})
    return pd.DataFrame(rows, columns=["study_id", "network", "x_mni", "y_mni", "z_mni", "g"]
                        ), studies


def test_sdm_fwe_is_calibrated_over_null_literatures():
    """Sign-flip FWE of the SDM-style meta: family-wise false-positive rate at alpha 0.05
    over 100 simulated null literatures (8 mm SMN mask, 449 voxels, 99 sign flips each)."""
    from msnet.atlas import mask_coordinates

    mask = lit.template_mask("SMN", _mask8())
    coords = mask_coordinates(mask)
    rng = np.random.default_rng(1)
    hits = 0
    for r in range(100):
        peaks, studies = _null_literature(rng, coords)
        res = lit.sdm_meta(lit.sdm_study_maps(peaks, studies, "SMN", mask), mask,
                           {"n_permutations": 99, "seed": r}, "SMN")
        hits += bool(np.nanmin(res["p_fwe"]) <= 0.05)
    assert 0.01 <= hits / 100 <= 0.10, hits


# ------------------------------------------------------------------ meta-regression
def _edss_literature(tmp_path, slope):
    """The reduced simulation's literature (6 mm, published sample sizes) with a planted
    study-level EDSS slope, read back through the table readers; the DMN's analysis mask."""
    from msnet.simulate import load_grid

    peaks, studies = lit.simulate_literature({"resolution_mm": 6}, 20261121, edss_slope=slope)
    peaks.to_csv(tmp_path / "peaks.tsv", sep="\t", index=False)
    studies.to_csv(tmp_path / "studies.tsv", sep="\t", index=False)
    table = lit.read_literature_studies(tmp_path / "studies.tsv")
    read = lit.read_peaks(tmp_path / "peaks.tsv", table)
    return read, table, lit.template_mask("DMN", load_grid(6).mask_img)


@pytest.mark.parametrize("slope", [0.3, 0.0])
def test_metaregression_finds_a_planted_edss_slope_and_not_the_null(tmp_path, slope):
    """SDM-style maps of 25 published studies, voxelwise meta-regression on mean EDSS (the
    meta stage's engine, 200 moderator permutations): a slope of 0.3 d per EDSS point at the
    planted locations is found (positive, FWE p < 0.05, at a planted DMN location); under the
    published null (slope 0) nothing is significant."""
    from msnet.atlas import published_findings
    from msnet.meta import MODERATORS, resolve_options

    peaks, studies, mask = _edss_literature(tmp_path, slope)
    maps = lit.sdm_study_maps(peaks, studies, "DMN", mask)
    opts = resolve_options({"n_permutations": 200, "seed": 3, "moderators": ["edss"]})
    row = lit.sdm_metaregression(maps, mask, studies[list(MODERATORS)], opts, "DMN",
                                 "sdm").iloc[0]
    print(f"slope {slope}: beta {row['beta']:.3f}, z {row['z']:.2f}, p_FWE {row['p_fwe']:.3f}")
    assert row["k"] == 25 and not row["warning"]
    if slope:
        assert row["beta"] > 0 and row["significant"]
        # significant positive slopes at the planted locations themselves
        from msnet.atlas import mask_coordinates
        from msnet.meta import voxelwise_metaregression

        reg = voxelwise_metaregression(maps["Y"], maps["V"], studies["edss"].to_numpy(float),
                                       opts, "DMN-sdm", "edss")
        coords = mask_coordinates(mask)
        planted = published_findings().query("network == 'DMN'")[["x", "y", "z"]].to_numpy()
        near = np.linalg.norm(coords[:, None] - planted[None], axis=2).min(axis=1) <= 12
        hits = near & (reg["z"] > 0) & (reg["p_fwe"] < 0.05)
        print(f"{hits.sum()} significant voxels within 12 mm of a planted location")
        assert hits.sum() >= 1
        assert reg["p_fwe"].min() == pytest.approx(row["p_fwe"])  # the table's peak
    else:
        assert not row["significant"] and row["p_fwe"] > 0.05


# ------------------------------------------------------------------ workflow configuration
def test_literature_mode_needs_both_tables():
    from msnet.config import config_problems

    _, problems = config_problems({"data": {"mode": "literature"}})
    assert any("literature.peaks_tsv is not set" in p for p in problems), problems
    _, problems = config_problems({"literature": {"peaks_tsv": "peaks.tsv"}})
    assert any("literature.studies_tsv is not" in p for p in problems), problems
    _, problems = config_problems({"data": {"mode": "literature", "studies_tsv": "s.tsv"},
                                   "literature": {"peaks_tsv": "p", "studies_tsv": "s"}})
    assert any("data.studies_tsv is set" in p for p in problems), problems


def test_the_plan_checks_the_literature_tables_before_any_job(tmp_path):
    """Literature mode has no image studies; a bad peak stops the plan naming file and row."""
    from msnet.config import validate_config
    from msnet.io.plan import build_plan

    _write(tmp_path, GOOD)
    config = validate_config({"data": {"mode": "literature"}, "literature": {
        "peaks_tsv": str(tmp_path / "peaks.tsv"), "studies_tsv": str(tmp_path / "studies.tsv")}})
    plan = build_plan(config)
    assert plan.studies.empty and plan.subjects.empty
    _write(tmp_path, [*GOOD, "C\tDMN\t-4\t42\t12\tMNI\t4\tt\tMS>HC"])
    with pytest.raises(MsnetInputError) as err:
        build_plan(config)
    assert "peaks.tsv, row 4" in str(err.value) and "study C has no row" in str(err.value)
