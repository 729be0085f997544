"""msnet.qc: QC numbers against independent computations, FD/DVARS against nipype, decisions."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msnet import ANALYSIS_NETWORKS
from msnet import qc
from msnet.denoise import clean_subject
from msnet.errors import MsnetInputError
from msnet.io.fmriprep import find_subject_files

TR = 2.5
N = 120


def write_run(root, rng):
    """A tiny fMRIPrep run with 2 dummy scans and known FD / std DVARS spikes."""
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    stem = "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-"
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    mask = np.zeros((9, 10, 9), bool)
    mask[2:7, 2:8, 2:7] = True
    data = 500 + 40 * rng.random((9, 10, 9, 1)) + rng.normal(0, 5, (9, 10, 9, N))
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.header["pixdim"][4] = TR
    nib.save(img, func / f"{stem}preproc_bold.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), func / f"{stem}brain_mask.nii.gz")
    (func / f"{stem}preproc_bold.json").write_text(json.dumps({"RepetitionTime": TR}))
    motion = np.cumsum(rng.normal(0, 0.02, (N, 6)), axis=0)
    table = pd.DataFrame(motion, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"])
    table["csf"] = rng.normal(size=N)
    table["white_matter"] = rng.normal(size=N)
    table["framewise_displacement"] = np.r_[np.nan, rng.uniform(0.05, 0.45, N - 1)]
    table.loc[[10, 11, 50, 90], "framewise_displacement"] = [0.7, 0.8, 0.6, 1.2]
    table["std_dvars"] = np.r_[np.nan, rng.uniform(0.9, 1.4, N - 1)]
    table.loc[[1, 30, 70], "std_dvars"] = 1.9  # 1 is a dummy scan
    table["dvars"] = np.r_[np.nan, rng.uniform(10, 20, N - 1)]
    for k in range(2):
        table[f"non_steady_state_outlier_{k:02d}"] = (np.arange(N) == k).astype(int)
    table.to_csv(func / "sub-01_task-rest_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
    return find_subject_files(root, "sub-01")


def test_qc_numbers_equal_an_independent_computation(tmp_path):
    files = write_run(tmp_path, np.random.default_rng(0))
    result = clean_subject(files, {"scrub": 0, "motion": "basic"}, {"min_minutes_kept": 0})
    table = pd.read_csv(files.runs[0].confounds, sep="\t", na_values="n/a")
    post = table.iloc[2:]
    outliers = (post["framewise_displacement"] > 0.5) | (post["std_dvars"] > 1.5)
    expected = {
        "n_volumes": N,
        "n_dummy": 2,
        "n_kept": N - 2 - outliers.sum(),
        "mean_fd": post["framewise_displacement"].mean(),
        "max_fd": 1.2,
        "mean_dvars": post["dvars"].mean(),
        "mean_std_dvars": post["std_dvars"].mean(),
        "pct_censored": 100 * outliers.sum() / (N - 2),
        "minutes_kept": (N - 2 - outliers.sum()) * TR / 60,
    }
    assert outliers.sum() == 6
    for key, value in expected.items():
        assert result.qc[key] == pytest.approx(value), key
    bold = nib.load(files.runs[0].bold).get_fdata()[..., 2:]
    mask = nib.load(files.runs[0].mask).get_fdata() > 0
    tsnr = bold[mask].mean(axis=1) / bold[mask].std(axis=1)
    assert result.qc["tsnr_median"] == pytest.approx(np.median(tsnr), rel=1e-5)
    assert result.qc["fd_source"] == "confounds" and result.qc["tr"] == TR
    assert result.qc["include"] is True and result.qc["exclusion_reason"] is None
    json.dumps(result.qc)


@pytest.mark.parametrize(
    "metrics, options, include, words",
    [
        ({"mean_fd": 0.2, "pct_censored": 10.0, "minutes_kept": 8.0}, {}, True, []),
        ({"mean_fd": 0.62, "pct_censored": 10.0, "minutes_kept": 8.0}, {}, False, ["mean FD 0.620", "max_mean_fd"]),
        ({"mean_fd": 0.2, "pct_censored": 35.0, "minutes_kept": 8.0}, {}, False, ["35.0 %", "max_pct_censored"]),
        ({"mean_fd": 0.2, "pct_censored": 10.0, "minutes_kept": 3.5}, {}, False, ["3.50 min", "min_minutes_kept"]),
        ({"mean_fd": 0.9, "pct_censored": 50.0, "minutes_kept": 1.0}, {}, False, ["mean FD", "censored", "min"]),
        ({"mean_fd": 0.9, "pct_censored": 10.0, "minutes_kept": 8.0}, {"max_mean_fd": None}, True, []),
        ({"mean_fd": 0.3, "pct_censored": 10.0, "minutes_kept": 8.0}, {"max_mean_fd": 0.25}, False, ["0.25"]),
    ],
)
def test_decide_inclusion(metrics, options, include, words):
    ok, reason = qc.decide_inclusion(metrics, options)
    assert ok is include
    assert (reason is None) == include
    for word in words:
        assert word in reason


@pytest.mark.parametrize("options", [{"max_mean_fd": -1}, {"max_fd": 1}, {"min_minutes_kept": "4"}])
def test_bad_qc_options(options):
    with pytest.raises(MsnetInputError, match="qc"):
        qc.resolve_qc_options(options)


def test_framewise_displacement_is_power_2012():
    rng = np.random.default_rng(1)
    motion = np.cumsum(rng.normal(0, 0.05, (30, 6)), axis=0)
    fd = qc.framewise_displacement(motion)
    diff = np.abs(np.diff(motion, axis=0))
    assert np.isnan(fd[0])
    np.testing.assert_allclose(fd[1:], diff[:, :3].sum(1) + 50 * diff[:, 3:].sum(1), rtol=1e-6)


def test_dvars_matches_nipype_compute_dvars(tmp_path, monkeypatch):
    from nipype.algorithms import confounds

    try:
        import nitime  # noqa: F401
    except ImportError:  # nipype needs nitime's Yule-Walker AR(1): r(1)/r(0) of the demeaned series
        monkeypatch.setattr(confounds, "_AR_est_YW",
                            lambda x, order, rxx=None: np.array([np.dot(x[:-1], x[1:]) / np.dot(x, x)]))
    rng = np.random.default_rng(2)
    data = 800 + 50 * rng.random((6, 7, 5, 1)) + np.cumsum(rng.normal(0, 3, (6, 7, 5, 40)), axis=3)
    data[0, 0, 0] = 800.0  # a zero-variance voxel, removed as nipype does
    mask = np.ones((6, 7, 5), bool)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), tmp_path / "bold.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), tmp_path / "mask.nii.gz")
    ref_std, ref_nstd, _ = confounds.compute_dvars(str(tmp_path / "bold.nii.gz"), str(tmp_path / "mask.nii.gz"),
                                                   remove_zerovariance=True, variance_tol=1e-7)
    dvars, std_dvars = qc.dvars(data.astype(np.float32)[mask].T)
    assert np.isnan(dvars[0]) and np.isnan(std_dvars[0])
    np.testing.assert_allclose(dvars[1:], ref_nstd, rtol=1e-5)
    np.testing.assert_allclose(std_dvars[1:], ref_std, rtol=1e-5)


def test_temporal_snr_from_sums():
    x = np.random.default_rng(3).normal(100, 4, (50, 20))
    x[:, 0] = 7.0
    tsnr = qc.temporal_snr(x.sum(0), (x**2).sum(0), 50)
    assert tsnr[0] == 0.0
    np.testing.assert_allclose(tsnr[1:], x[:, 1:].mean(0) / x[:, 1:].std(0), rtol=1e-9)


def test_lesion_overlap_per_network():
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    from msnet.atlas import network_templates

    mask_img = resample_img(load_mni152_brain_mask(resolution=2), target_affine=np.diag([6.0, 6.0, 6.0]),
                            interpolation="nearest", force_resample=True, copy_header=True)
    names, maps = network_templates(mask_img)
    dmn = maps[names.index("DMN")]
    lesion = dmn > 0.6
    overlap = qc.lesion_overlap(lesion, mask_img, threshold=0.2)
    assert list(overlap) == list(ANALYSIS_NETWORKS)
    assert overlap["DMN"] == pytest.approx(lesion.sum() / (dmn > 0.2).sum())
    assert 0 < overlap["DMN"] < 1
    smn = maps[names.index("SMN")] > 0.2
    assert overlap["SMN"] == pytest.approx((smn & lesion).sum() / smn.sum())
    assert overlap["SMN"] < overlap["DMN"]
