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
def test_ale_mkda_equal_nimare_called_directly(method):
    import warnings

    from nimare.correct import FWECorrector
    from nimare.meta.cbma import ALE, MKDADensity
    from nimare.studyset import Studyset

    peaks, studies = _synthetic_literature()
    mask = _mask8()
    ours = lit.cbma_nimare(peaks, studies, "DMN", "MS>HC", mask, method, n_iters=20, seed=5)
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
