"""msnet.denoise: equivalence with nilearn, fMRIPrep versions, bad inputs, multi-run."""

import json
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.interpolate import CubicSpline

from msnet.denoise import clean_subject, cleaning_operator, resolve_options
from msnet.errors import MsnetInputError
from msnet.io.fmriprep import find_subject_files

TR = 2.0
SHAPE = (16, 18, 16)
AFFINE = np.array([[4.0, 0, 0, -30], [0, 4.0, 0, -36], [0, 0, 4.0, -30], [0, 0, 0, 1]])
SPACE = "MNI152NLin2009cAsym"
NO_QC = {"min_minutes_kept": None, "max_pct_censored": None, "max_mean_fd": None}
LEGACY = {"trans_x": "X", "trans_y": "Y", "trans_z": "Z", "rot_x": "RotX", "rot_y": "RotY", "rot_z": "RotZ",
          "framewise_displacement": "FramewiseDisplacement", "std_dvars": "stdDVARS", "dvars": "non-stdDVARS",
          "csf": "CSF", "white_matter": "WhiteMatter", "global_signal": "GlobalSignal",
          "non_steady_state_outlier_00": "NonSteadyStateOutlier00"}


def brain_mask():
    i, j, k = np.indices(SHAPE)
    return ((i - 7.5) / 3.6) ** 2 + ((j - 8.5) / 4.6) ** 2 + ((k - 7.5) / 3.6) ** 2 <= 1


def confounds_table(rng, n, fd_spikes=(), dvars_spikes=(), n_dummy=1):
    """fMRIPrep >= 20.2 style confounds with derivative/power columns as fMRIPrep writes them."""
    motion = np.cumsum(rng.normal(0, 0.03, (n, 6)), axis=0)
    motion[:, 3:] *= 0.01
    base = pd.DataFrame(motion, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"])
    base["csf"] = np.cumsum(rng.normal(size=n))
    base["white_matter"] = np.cumsum(rng.normal(size=n))
    base["global_signal"] = rng.normal(size=n)
    table = base.copy()
    for col in base.columns:
        d = base[col].diff()
        table[f"{col}_derivative1"] = d
        table[f"{col}_power2"] = base[col] ** 2
        table[f"{col}_derivative1_power2"] = d**2
    fd = np.r_[np.nan, np.minimum(0.3, np.abs(np.diff(motion, axis=0)) @ [1, 1, 1, 50, 50, 50])]
    fd[list(fd_spikes)] = 0.9
    std_dvars = np.r_[np.nan, rng.uniform(0.8, 1.3, n - 1)]
    std_dvars[list(dvars_spikes)] = 2.0
    table["framewise_displacement"] = fd
    table["std_dvars"] = std_dvars
    table["dvars"] = std_dvars * 10
    for c in range(3):
        table[f"cosine_{c:02d}"] = np.cos(np.pi * (np.arange(n) + 0.5) * (c + 1) / n)
    if n_dummy:
        table["non_steady_state_outlier_00"] = (np.arange(n) < n_dummy).astype(int)
    return table


def write_subject(root, sub="01", run=None, n=80, seed=0, legacy=False, dtype=np.int16,
                  bold_data=None, mask_data=None, **table_kwargs):
    """Write one fMRIPrep-like run; return its SubjectFiles."""
    rng = np.random.default_rng(seed)
    func = root / f"sub-{sub}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    ents = f"sub-{sub}_task-rest" + (f"_run-{run}" if run else "")
    stem = f"{ents}_space-{SPACE}_res-2_desc-"
    mask = brain_mask() if mask_data is None else mask_data
    table = confounds_table(rng, n, **table_kwargs)
    if bold_data is None:
        latent = np.cumsum(rng.normal(size=(n, 4)), axis=0)
        maps = rng.normal(size=SHAPE + (4,))
        nuisance = table[["csf", "white_matter", "trans_x"]].to_numpy() @ rng.normal(size=3)
        bold_data = (np.where(mask, 600.0, 60.0)[..., None] + 4 * maps @ latent.T
                     + 3 * nuisance + rng.normal(0, 6, SHAPE + (n,)))
    img = nib.Nifti1Image(np.asarray(bold_data).astype(dtype), AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    if img.ndim == 4:
        img.header["pixdim"][4] = TR
    nib.save(img, func / f"{stem}preproc_bold.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), func / f"{stem}brain_mask.nii.gz")
    (func / f"{stem}preproc_bold.json").write_text(json.dumps({"RepetitionTime": TR}))
    if legacy:
        keep = [c for c in table.columns if c in LEGACY or c.startswith("cosine")]
        old = table[keep].rename(columns=LEGACY)
        old = old.rename(columns={c: f"Cosine{c[-2:]}" for c in old.columns if c.startswith("cosine")})
        old.to_csv(func / f"{ents}_desc-confounds_regressors.tsv", sep="\t", index=False, na_rep="n/a")
    else:
        table.to_csv(func / f"{ents}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
    return find_subject_files(root, sub, space=SPACE, multi_run="concatenate")


def fixed_interpolation(volumes, sample_mask, t_r, extrapolate):
    """nilearn's _interpolate_volumes with the boolean complement it intends (see msnet.denoise)."""
    times = np.arange(volumes.shape[0]) * t_r
    kept = np.zeros(volumes.shape[0], dtype=bool)
    kept[sample_mask] = True
    volumes[~kept] = CubicSpline(times[kept], volumes[kept], extrapolate=extrapolate)(times[~kept])
    return volumes


def nilearn_route(files, mask_img, strategy=("motion", "wm_csf", "scrub"), preset=None, smoothing_fwhm=6.0,
                  high_pass=0.01, low_pass=0.08, **kwargs):
    from nilearn.interfaces.fmriprep import load_confounds, load_confounds_strategy
    from nilearn.maskers import NiftiMasker

    bold = str(files.runs[0].bold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if preset:
            confounds, sample_mask = load_confounds_strategy(bold, denoise_strategy=preset)
        else:
            kwargs = {"motion": "full", "wm_csf": "basic", "scrub": 5, "fd_threshold": 0.5,
                      "std_dvars_threshold": 1.5, **kwargs}
            confounds, sample_mask = load_confounds(bold, strategy=strategy, **kwargs)
        masker = NiftiMasker(mask_img=mask_img, smoothing_fwhm=smoothing_fwhm, detrend=True,
                             high_pass=high_pass, low_pass=low_pass, t_r=TR, standardize="zscore_sample")
        return masker.fit_transform(bold, confounds=confounds, sample_mask=sample_mask), sample_mask


def assert_equivalent(ours, ref):
    z = (ours - ours.mean(0)) / ours.std(0, ddof=1)
    assert z.shape == ref.shape
    r = (z * ref).sum(0) / np.sqrt((z * z).sum(0) * (ref * ref).sum(0))
    assert r.min() >= 0.9999
    assert np.abs(z - ref).max() <= 1e-4


def test_equivalence_bandpass_scrubbing_24motion_wmcsf(tmp_path, monkeypatch):
    # spikes at i and n-1-i: nilearn 0.13.1 leaves such volumes un-interpolated (msnet.denoise)
    files = write_subject(tmp_path, fd_spikes=(20, 59), dvars_spikes=(40,))
    monkeypatch.setattr("nilearn.signal._interpolate_volumes", fixed_interpolation)
    result = clean_subject(files, {}, NO_QC)
    ref, sample_mask = nilearn_route(files, result.mask_img)
    np.testing.assert_array_equal(result.sample_mask, sample_mask)
    assert result.data.dtype == np.float32 and result.qc["confounds"][0] == "csf"
    assert len(result.qc["confounds"]) == 26
    assert_equivalent(result.data, ref)


def test_equivalence_with_unpatched_nilearn(tmp_path):
    # censored volumes whose mirror n-1-i is kept: nilearn's interpolation is then complete
    files = write_subject(tmp_path, fd_spikes=(20, 45, 46), dvars_spikes=(60,), n_dummy=2)
    result = clean_subject(files, {}, NO_QC)
    ref, _ = nilearn_route(files, result.mask_img)
    assert_equivalent(result.data, ref)


def test_equivalence_without_censoring(tmp_path):
    files = write_subject(tmp_path, n_dummy=0)
    result = clean_subject(files, {"scrub": None}, NO_QC)
    ref, sample_mask = nilearn_route(files, result.mask_img, strategy=("motion", "wm_csf"))
    assert sample_mask is None and result.data.shape[0] == 80
    assert_equivalent(result.data, ref)


def test_equivalence_without_filter_or_smoothing(tmp_path, monkeypatch):
    files = write_subject(tmp_path, fd_spikes=(20, 59))
    monkeypatch.setattr("nilearn.signal._interpolate_volumes", fixed_interpolation)
    options = {"high_pass": None, "low_pass": None, "smoothing_fwhm": None, "global_signal": "basic"}
    result = clean_subject(files, options, NO_QC)
    ref, _ = nilearn_route(files, result.mask_img, strategy=("motion", "wm_csf", "global_signal", "scrub"),
                           smoothing_fwhm=None, high_pass=None, low_pass=None, global_signal="basic")
    assert_equivalent(result.data, ref)


def test_preset_strategy_matches_nilearn_preset(tmp_path):
    """The 'scrubbing' preset adds fMRIPrep's cosines, which the band-pass nearly removes:
    the confounds are then ill-conditioned and NiftiMasker's float32 route itself drifts by
    ~2e-4 from nilearn's float64 result, so the reference is nilearn's functions in float64."""
    import nilearn.signal
    from nilearn.image import smooth_img
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.masking import apply_mask

    files = write_subject(tmp_path, fd_spikes=(20, 45), n_dummy=2)
    result = clean_subject(files, {"strategy": "scrubbing"}, NO_QC)
    bold = str(files.runs[0].bold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        confounds, sample_mask = load_confounds_strategy(bold, denoise_strategy="scrubbing")
        signals = apply_mask(smooth_img(bold, 6.0), result.mask_img).astype(np.float64)
        ref = nilearn.signal.clean(signals, detrend=True, standardize="zscore_sample", confounds=confounds,
                                   sample_mask=sample_mask, t_r=TR, high_pass=0.01, low_pass=0.08)
    assert sum(c.startswith("cosine") for c in result.qc["confounds"]) == 3
    assert len(result.qc["confounds"]) == 35  # 24 motion + 8 wm/csf + 3 cosines
    assert_equivalent(result.data, ref)


def test_fmriprep_1x_and_20x_tables_give_the_same_result(tmp_path):
    new = write_subject(tmp_path / "new", fd_spikes=(30,), seed=3)
    old = write_subject(tmp_path / "old", fd_spikes=(30,), seed=3, legacy=True)
    assert old.runs[0].confounds.name.endswith("desc-confounds_regressors.tsv")
    a, b = clean_subject(new, {}, NO_QC), clean_subject(old, {}, NO_QC)
    np.testing.assert_allclose(a.data, b.data, rtol=0, atol=1e-4 * a.data.std())
    assert a.qc["confounds"] == b.qc["confounds"]
    for key in ("mean_fd", "n_kept", "n_dummy", "pct_censored", "mean_std_dvars", "tsnr_median"):
        assert a.qc[key] == pytest.approx(b.qc[key]), key


def test_operator_matches_nilearn_signal_clean(monkeypatch):
    import nilearn.signal

    monkeypatch.setattr("nilearn.signal._interpolate_volumes", fixed_interpolation)
    rng = np.random.default_rng(5)
    signals = rng.normal(size=(60, 30)).cumsum(axis=0)
    confounds = rng.normal(size=(60, 4))
    sample_mask = np.setdiff1d(np.arange(60), [0, 1, 17, 30, 31, 59])
    for std_conf in (True, False):
        ref = nilearn.signal.clean(signals, detrend=True, standardize=None, confounds=confounds,
                                   sample_mask=sample_mask, t_r=TR, high_pass=0.01, low_pass=0.1,
                                   standardize_confounds=std_conf)
        op = cleaning_operator(60, sample_mask, confounds, TR, True, 0.01, 0.1, std_conf)
        np.testing.assert_allclose(op @ signals, ref, atol=1e-8 * np.abs(ref).max())


def test_multi_run_first_vs_concatenate(tmp_path):
    write_subject(tmp_path, run="1", seed=1, fd_spikes=(30,))
    files = write_subject(tmp_path, run="2", seed=2, n=70)
    first = clean_subject(files, {"multi_run": "first"}, NO_QC)
    both = clean_subject(files, {"multi_run": "concatenate"}, NO_QC)
    run2 = write_subject(tmp_path / "alone", run="2", seed=2, n=70)
    second = clean_subject(run2, {}, NO_QC)
    assert first.qc["n_runs"] == 1 and both.qc["n_runs"] == 2
    np.testing.assert_array_equal(both.data, np.concatenate([first.data, second.data]))
    np.testing.assert_array_equal(both.sample_mask, np.r_[first.sample_mask, second.sample_mask + 80])
    assert both.qc["n_volumes"] == 150 and both.qc["n_kept"] == first.qc["n_kept"] + second.qc["n_kept"]


def test_lesion_voxels_leave_the_analysis_mask(tmp_path):
    files = write_subject(tmp_path)
    brain = brain_mask()
    lesion = np.zeros(SHAPE, bool)
    lesion[6:9, 7:10, 6:9] = True
    lesion[0, 0, 0] = True  # outside the brain: not counted
    result = clean_subject(files, {}, NO_QC, lesion_mask=nib.Nifti1Image(lesion.astype(np.uint8), AFFINE))
    analysis = np.asarray(result.mask_img.dataobj) > 0
    np.testing.assert_array_equal(analysis, brain & ~lesion)
    assert result.data.shape[1] == analysis.sum()
    assert result.lesion_mask.shape == (brain.sum(),) and result.lesion_mask.sum() == (lesion & brain).sum()
    assert result.qc["lesion_voxels"] == 27 and set(result.qc["lesion_overlap"]) == {"DMN", "SMN", "VN", "SN"}
    full = clean_subject(files, {}, NO_QC)  # removing voxels does not change the others
    np.testing.assert_allclose(result.data, full.data[:, ~lesion[brain]], atol=1e-4 * full.data.std())


def test_missing_fd_and_dvars_are_computed(tmp_path):
    files = write_subject(tmp_path)
    table = pd.read_csv(files.runs[0].confounds, sep="\t")
    table = table.drop(columns=["framewise_displacement", "std_dvars", "dvars"])
    table.to_csv(files.runs[0].confounds, sep="\t", index=False, na_rep="n/a")
    result = clean_subject(files, {}, NO_QC)
    assert result.qc["fd_source"] == "nipype" and "ComputeDVARS" in result.qc["dvars_source"]
    assert result.qc["mean_fd"] > 0 and result.qc["mean_std_dvars"] > 0


def test_qc_exclusion_keeps_the_data(tmp_path):
    files = write_subject(tmp_path, fd_spikes=tuple(range(10, 40)))
    result = clean_subject(files, {"scrub": 0}, {"min_minutes_kept": 1})
    assert result.data is not None
    assert result.qc["include"] is False and "max_pct_censored" in result.qc["exclusion_reason"]


@pytest.mark.parametrize(
    "spikes, words",
    [
        (tuple(range(1, 80)), ["all 80 volumes censored"]),
        (tuple(range(1, 30)) + tuple(range(55, 80)), ["Butterworth filter needs more than 33"]),
    ],
)
def test_unprocessable_subject_is_an_exclusion_record(tmp_path, spikes, words):
    files = write_subject(tmp_path, fd_spikes=spikes)
    result = clean_subject(files, {"scrub": 0}, {})
    assert result.data is None and result.sample_mask.size == 0
    assert result.qc["include"] is False
    for word in ["cannot be processed", *words]:
        assert word in result.qc["exclusion_reason"]
    json.dumps(result.qc)  # JSON-serialisable


def _three_d(tmp_path):
    return write_subject(tmp_path, bold_data=np.ones(SHAPE))


def _nan_in_mask(tmp_path):
    data = np.full(SHAPE + (80,), 100.0)
    data[8, 8, 8, 5] = np.nan
    return write_subject(tmp_path, bold_data=data, dtype=np.float32)


def _other_grid_mask(tmp_path):
    files = write_subject(tmp_path)
    nib.save(nib.Nifti1Image(np.ones((8, 9, 8), np.uint8), AFFINE), files.runs[0].mask)
    return files


def _rows_differ(tmp_path):
    files = write_subject(tmp_path)
    table = pd.read_csv(files.runs[0].confounds, sep="\t")
    table.iloc[:-3].to_csv(files.runs[0].confounds, sep="\t", index=False, na_rep="n/a")
    return files


def _confounds_removed(tmp_path):
    files = write_subject(tmp_path)
    files.runs[0].confounds.unlink()
    return files


def _no_wm_csf(tmp_path):
    files = write_subject(tmp_path)
    table = pd.read_csv(files.runs[0].confounds, sep="\t")
    table.drop(columns=["csf", "white_matter"]).to_csv(files.runs[0].confounds, sep="\t", index=False, na_rep="n/a")
    return files


@pytest.mark.parametrize(
    "make, words",
    [
        (_three_d, ["4-D", "shape (16, 18, 16)"]),
        (_nan_in_mask, ["NaN", "volume 5", "preproc_bold.nii.gz"]),
        (_other_grid_mask, ["different grids", "brain_mask.nii.gz"]),
        (_rows_differ, ["77 rows", "80", "confounds_timeseries.tsv"]),
        (_confounds_removed, ["does not exist", "confounds_timeseries.tsv"]),
        (_no_wm_csf, ["wm_csf", "strategy 'custom'"]),
    ],
)
def test_invalid_inputs_raise(tmp_path, make, words):
    files = make(tmp_path)
    with pytest.raises(MsnetInputError) as err:
        clean_subject(files, {}, {})
    for word in words:
        assert word in str(err.value)


def test_lesion_mask_on_another_grid(tmp_path):
    files = write_subject(tmp_path)
    lesion = nib.Nifti1Image(np.ones((8, 9, 8), np.uint8), AFFINE)
    with pytest.raises(MsnetInputError, match="not on the BOLD grid"):
        clean_subject(files, {}, {}, lesion_mask=lesion)


def test_ica_aroma_requires_aroma_output(tmp_path):
    files = write_subject(tmp_path)
    with pytest.raises(MsnetInputError, match="desc-smoothAROMAnonaggr_bold"):
        clean_subject(files, {"strategy": "ica_aroma"}, {})


@pytest.mark.parametrize(
    "options, word",
    [
        ({"stratgy": "custom"}, "Unknown denoise option"),
        ({"motion": "all"}, "denoise.motion"),
        ({"scrub": True}, "denoise.scrub"),
        ({"high_pass": 0.1, "low_pass": 0.08}, "must be below"),
        ({"fd_threshold": -1}, "denoise.fd_threshold"),
        ({"n_compcor": 0}, "denoise.n_compcor"),
    ],
)
def test_bad_options(options, word):
    with pytest.raises(MsnetInputError, match=word):
        resolve_options(options)


@pytest.mark.parametrize("missing", [float("nan"), "n/a", ""])
def test_missing_lesion_mask_value_means_no_mask(tmp_path, missing):
    """A lesion_mask cell read as NaN (pandas >= 3) or n/a is no mask, not a crash."""
    files = write_subject(tmp_path)
    result = clean_subject(files, {}, NO_QC, lesion_mask=missing)
    assert result.lesion_mask is None and result.qc["lesion_voxels"] is None


def test_non_fmriprep_confounds_refused_whatever_the_strategy(tmp_path):
    """Without trans_*/rot_* the table is refused even when no motion regressor is asked for."""
    files = write_subject(tmp_path)
    table = pd.read_csv(files.runs[0].confounds, sep="\t")
    table[["csf", "white_matter", "framewise_displacement", "std_dvars", "dvars"]].to_csv(
        files.runs[0].confounds, sep="\t", index=False, na_rep="n/a")
    for options in ({"motion": None}, {"strategy": "simple"}):
        with pytest.raises(MsnetInputError, match="not an fMRIPrep confounds table"):
            clean_subject(files, options, NO_QC)


@pytest.mark.parametrize("damage", ["truncate_late", "truncate_early", "corrupt"])
def test_truncated_or_corrupt_gzip_is_an_input_error(tmp_path, damage):
    """isal's read-ahead thread raises EOFError/IsalError: reported naming the file."""
    files = write_subject(tmp_path, n=120, dtype=np.float32)
    path = files.runs[0].bold
    raw = bytearray(path.read_bytes())
    if damage == "truncate_late":
        raw = raw[: int(len(raw) * 0.8)]
    elif damage == "truncate_early":
        raw = raw[:2000]
    else:
        raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    try:
        clean_subject(files, {}, NO_QC)
    except MsnetInputError as err:
        assert str(path) in str(err) and ("truncated" in str(err) or "Cannot read" in str(err))
    else:
        pytest.fail("a damaged BOLD was read without error")


def test_all_na_confound_column_is_named(tmp_path):
    """A regressor the strategy uses that is all n/a: named, not a CubicSpline ValueError."""
    files = write_subject(tmp_path, fd_spikes=(30,))
    table = pd.read_csv(files.runs[0].confounds, sep="\t")
    table["csf"] = np.nan
    table.drop(columns=[c for c in table if c.startswith("csf_")]).to_csv(
        files.runs[0].confounds, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(MsnetInputError, match=r"'csf' is n/a in all 80 rows") as err:
        clean_subject(files, {}, NO_QC)
    assert "confounds_timeseries.tsv" in str(err.value)
    assert clean_subject(files, {"wm_csf": None}, NO_QC).data is not None  # not used: fine


def test_compcor_without_json_sidecar_names_the_sidecar(tmp_path):
    files = write_subject(tmp_path)
    table = pd.read_csv(files.runs[0].confounds, sep="\t")
    for k in range(3):
        table[f"a_comp_cor_{k:02d}"] = np.random.default_rng(k).normal(size=len(table))
    table.to_csv(files.runs[0].confounds, sep="\t", index=False, na_rep="n/a")
    sidecar = files.runs[0].confounds.with_suffix(".json")
    assert not sidecar.exists()
    for options in ({"compcor": "anat_combined"}, {"strategy": "compcor"}):
        with pytest.raises(MsnetInputError, match="JSON sidecar .* is missing") as err:
            clean_subject(files, options, NO_QC)
        assert str(sidecar) in str(err.value) and "fMRIPrep >=" not in str(err.value)


def test_fd_na_mid_run_is_recomputed_from_motion(tmp_path):
    """FD n/a after the first row (a damaged table) is recomputed from trans/rot, recorded."""
    from msnet.qc import framewise_displacement

    files = write_subject(tmp_path)
    table = pd.read_csv(files.runs[0].confounds, sep="\t")
    table.loc[[20, 21, 50], "framewise_displacement"] = np.nan
    table.to_csv(files.runs[0].confounds, sep="\t", index=False, na_rep="n/a")
    result = clean_subject(files, {}, NO_QC)
    run = result.qc["runs"][0]
    assert run["fd_na_volumes"] == [20, 21, 50] and result.qc["fd_source"] == "nipype"
    fd = framewise_displacement(table[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]]
                                .to_numpy())
    assert result.qc["mean_fd"] == pytest.approx(np.nanmean(fd[1:]))
    table.loc[[20], "trans_x"] = np.nan  # and the motion parameters too: a clear error
    table.to_csv(files.runs[0].confounds, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(MsnetInputError, match="motion parameters are n/a at volume"):
        clean_subject(files, {}, NO_QC)


def test_too_short_run_reports_what_was_censored(tmp_path):
    """30 volumes: unprocessable because of the filter, not 100 % censored."""
    files = write_subject(tmp_path, n=30)
    result = clean_subject(files, {}, {})
    qc = result.qc
    assert result.data is None and qc["include"] is False
    assert qc["n_kept"] == 29 and qc["pct_censored"] == 0.0  # 1 dummy volume, nothing censored
    assert qc["minutes_usable"] == 0.0 and qc["runs"][0]["usable"] is False
    assert "Butterworth filter needs more than" in qc["exclusion_reason"]


def _bold_with_flat_region(rng, n, flat):
    """Varying BOLD with a constant time series in the voxels of ``flat`` (3-D bool)."""
    data = 600.0 + rng.normal(0, 6, SHAPE + (n,))
    data[flat] = 600.0
    return data


@pytest.mark.parametrize("fraction, included", [(0.02, True), (0.45, False)])
def test_flat_voxels_are_counted_located_and_judged(tmp_path, fraction, included):
    """Voxels whose BOLD is constant: located exactly, counted in QC, judged by
    qc.max_pct_flat_voxels (default 5 %)."""
    brain = brain_mask()
    idx = np.argwhere(brain)
    flat = np.zeros(SHAPE, bool)
    chosen = idx[: int(round(fraction * len(idx)))]  # a slab of the mask (lowest x first)
    flat[tuple(chosen.T)] = True
    data = _bold_with_flat_region(np.random.default_rng(3), 80, flat)
    files = write_subject(tmp_path, bold_data=data, dtype=np.float32)
    result = clean_subject(files, {}, {"min_minutes_kept": None})
    analysis = np.asarray(result.mask_img.dataobj) > 0
    np.testing.assert_array_equal(result.flat_voxels, flat[analysis])
    assert result.qc["n_flat_voxels"] == flat.sum()
    assert result.qc["pct_flat_voxels"] == pytest.approx(100 * flat.sum() / brain.sum())
    assert result.qc["include"] is included
    if not included:
        assert "max_pct_flat_voxels 5.0 %" in result.qc["exclusion_reason"]
    assert clean_subject(files, {}, {"min_minutes_kept": None, "max_pct_flat_voxels": None}
                         ).qc["include"] is True


@pytest.mark.parametrize("value", [0.0, 250.0])
def test_constant_bold_is_excluded_as_no_signal(tmp_path, value):
    files = write_subject(tmp_path, bold_data=np.full(SHAPE + (80,), value), dtype=np.float32)
    result = clean_subject(files, {}, {})
    assert result.data is None and result.qc["include"] is False
    assert result.qc["exclusion_reason"].startswith("no signal")
    assert result.qc["pct_flat_voxels"] == 100.0


# ------------------------- ports: confound selection (nilearn), Butterworth filter (scipy)


def _rich_confounds(tmp_path, n=90, seed=5):
    """A table with everything nilearn's strategies select, written as fMRIPrep names it."""
    rng = np.random.default_rng(seed)
    table = confounds_table(rng, n, fd_spikes=(2, 40, 44, 86), dvars_spikes=(60,), n_dummy=2)
    table["non_steady_state_outlier_01"] = (np.arange(n) == 1).astype(int)
    meta = {}
    for k, mask in enumerate(["combined", "combined", "WM", "WM", "CSF", "combined", "CSF"]):
        table[f"a_comp_cor_{k:02d}"] = rng.normal(size=n)
        meta[f"a_comp_cor_{k:02d}"] = {"Method": "aCompCor", "Mask": mask}
    for k in range(3):
        table[f"t_comp_cor_{k:02d}"] = rng.normal(size=n)
        meta[f"t_comp_cor_{k:02d}"] = {"Method": "tCompCor"}
        table[f"aroma_motion_{k:02d}"] = rng.normal(size=n)
    func = tmp_path / "sub-01" / "func"
    func.mkdir(parents=True)
    tsv = func / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    table.to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    tsv.with_suffix(".json").write_text(json.dumps(meta))
    return tsv, func / f"sub-01_task-rest_space-{SPACE}_desc-"


CUSTOM_SELECTIONS = {
    "default": {},
    "full_expansions": {"global_signal": "full", "wm_csf": "full"},
    "derivatives_power2": {"motion": "derivatives", "wm_csf": "power2", "global_signal": "derivatives"},
    "basic_no_wm": {"motion": "basic", "wm_csf": None, "global_signal": "power2"},
    "no_scrub": {"scrub": None},
    "scrub_0": {"scrub": 0},
    "scrub_8_strict": {"scrub": 8, "fd_threshold": 0.2, "std_dvars_threshold": 1.2},
    "acompcor": {"compcor": "anat_combined"},
    "acompcor_2": {"compcor": "anat_combined", "n_compcor": 2},
    "acompcor_separated_1": {"compcor": "anat_separated", "n_compcor": 1},
    "tcompcor": {"compcor": "temporal"},
    "temporal_anat_separated": {"compcor": "temporal_anat_separated", "n_compcor": 2},
    "nothing": {"motion": None, "wm_csf": None, "scrub": None},
}


@pytest.mark.parametrize("name", list(CUSTOM_SELECTIONS) + ["preset-" + p for p in
                                                            ("simple", "scrubbing", "compcor", "ica_aroma")])
def test_confound_selection_equals_nilearns_load_confounds(tmp_path, name):
    from nilearn.interfaces.fmriprep import load_confounds, load_confounds_strategy

    from msnet.denoise import load_confounds_kwargs, nilearn_load_confounds
    from msnet.io.fmriprep import read_confounds

    tsv, stem = _rich_confounds(tmp_path)
    preset = name.removeprefix("preset-") if name.startswith("preset-") else None
    opts = resolve_options({"strategy": preset} if preset else CUSTOM_SELECTIONS[name])
    kwargs = load_confounds_kwargs(opts)
    img = f"{stem}{'smoothAROMAnonaggr' if preset == 'ica_aroma' else 'preproc'}_bold.nii.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if preset:
            ref, ref_mask = load_confounds_strategy(img, denoise_strategy=preset)
        else:
            ref, ref_mask = load_confounds(img, **kwargs)
    table, meta = read_confounds(tsv)
    ours, mask = nilearn_load_confounds(table, meta, kwargs)
    assert (mask is None) == (ref_mask is None)
    if mask is not None:
        np.testing.assert_array_equal(mask, ref_mask)
    assert (ours is None) == (ref is None)
    if ref is not None:
        assert list(ours.columns) == list(ref.columns)
        np.testing.assert_allclose(ours.to_numpy(), ref.to_numpy(), rtol=1e-13, atol=1e-13)


def test_butterworth_sections_and_filtering_equal_scipys():
    from scipy import signal

    from msnet.denoise import _butter_sos, _filter_edge, _filtfilt_matrix, _sosfiltfilt

    rng = np.random.default_rng(0)
    x = rng.normal(size=(140, 5)).cumsum(axis=0)
    for fs in (1 / 0.72, 0.5, 1 / 3.0):
        for wn, btype in (([0.01, 0.08], "band"), (0.01, "high"), (0.08, "low"), ([0.001, 0.95 * fs / 2], "band")):
            ref = signal.butter(N=5, Wn=wn, btype=btype, output="sos", fs=fs)
            ours = _butter_sos(5, wn, btype, fs)
            np.testing.assert_array_equal(ours, ref)
            assert x.shape[0] > _filter_edge(ref)
            expected = signal.sosfiltfilt(ref, x, axis=0)
            np.testing.assert_array_equal(_sosfiltfilt(ours, x), expected)
            np.testing.assert_allclose(_filtfilt_matrix(ours, len(x)) @ x, expected, rtol=0,
                                       atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("n_knots", [2, 3, 4, 7, 120])
def test_cubic_spline_equals_scipys(n_knots):
    from msnet.denoise import _cubic_spline

    rng = np.random.default_rng(n_knots)
    for _ in range(5):
        knots = np.sort(rng.choice(np.arange(0, 2.0 * (n_knots + 30), 2.0), n_knots, replace=False))
        values = rng.normal(size=(n_knots, 6)).cumsum(axis=0)
        at = rng.uniform(knots[0], knots[-1], 9)
        np.testing.assert_allclose(_cubic_spline(knots, values, at), CubicSpline(knots, values)(at),
                                   rtol=1e-13, atol=1e-13)


def test_subject_stage_does_not_import_sklearn_nilearn_interfaces_or_scipy_signal(tmp_path):
    """Each of these costs a subject job a second of start-up (see msnet.denoise)."""
    import subprocess
    import sys

    write_subject(tmp_path, fd_spikes=(20, 59), dvars_spikes=(40,))
    code = (
        "import sys; from msnet.connectivity import compute_subject_connectivity; "
        f"from msnet.io.plan import subject_outputs; root = {str(tmp_path)!r}; "
        "compute_subject_connectivity(root, 'sub-01', subject_outputs(root + '/out', 'S', '01'), "
        f"space={SPACE!r}, qc_options={NO_QC!r}); "
        "print(sorted(m for m in ('sklearn', 'nilearn.interfaces', 'scipy.signal', 'scipy.stats', "
        "'scipy.interpolate', 'scipy.optimize') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("drop", [["rot_z"], ["csf", "csf_derivative1", "csf_power2", "csf_derivative1_power2"],
                                  ["global_signal_power2"], [f"a_comp_cor_{k:02d}" for k in range(7)],
                                  ["aroma_motion_00", "aroma_motion_01", "aroma_motion_02"], "no-mask"],
                         ids=["motion-partial", "no-csf", "global-partial", "no-acompcor", "no-aroma", "no-mask"])
@pytest.mark.parametrize("selection", [{}, {"global_signal": "full"}, {"compcor": "anat_separated"},
                                       {"compcor": "temporal_anat_combined", "n_compcor": 2}],
                         ids=["default", "global", "acompcor", "t-a-compcor"])
def test_confound_selection_refuses_what_nilearn_refuses(tmp_path, drop, selection):
    from nilearn.interfaces.fmriprep import load_confounds

    from msnet.denoise import load_confounds_kwargs, nilearn_load_confounds
    from msnet.io.fmriprep import read_confounds

    tsv, stem = _rich_confounds(tmp_path)
    table, meta = read_confounds(tsv)
    if drop == "no-mask":
        del meta["a_comp_cor_03"]["Mask"]
    else:
        table = table.drop(columns=drop)
    table.to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    tsv.with_suffix(".json").write_text(json.dumps(meta))
    kwargs = load_confounds_kwargs(resolve_options(selection))
    outcomes = []
    for run in (lambda: load_confounds(f"{stem}preproc_bold.nii.gz", **kwargs),
                lambda: nilearn_load_confounds(table, meta, kwargs)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run()
            outcomes.append(None)
        except (KeyError, ValueError) as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]


def test_smoothing_threads_give_the_same_values(tmp_path):
    files = write_subject(tmp_path, fd_spikes=(20, 39), n=60)
    one = clean_subject(files, {"scrub": None}, NO_QC)
    three = clean_subject(files, {"scrub": None}, NO_QC, threads=3)
    np.testing.assert_array_equal(one.data, three.data)
    assert one.qc["tsnr_median"] == three.qc["tsnr_median"]


@pytest.mark.parametrize("case", ["ellipsoid-at-edges", "sparse", "one-voxel", "anisotropic"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_smoothing_is_nilearns_smooth_array_at_every_mask_voxel(case, dtype):
    """Bit for bit: the smoother computes only the lines the mask needs (msnet.denoise._Smoother)."""
    from nilearn.image.image import smooth_array

    from msnet.denoise import _Smoother

    rng = np.random.default_rng(7)
    affine = np.diag([3.0, 3.0, 4.0, 1.0]) if case == "anisotropic" else np.diag([2.0, 2.0, 2.0, 1.0])
    if case == "sparse":
        mask = rng.random((15, 17, 13)) < 0.05
    elif case == "one-voxel":
        mask = np.zeros((12, 10, 11), bool)
        mask[2, 7, 5] = True
    else:
        i, j, k = np.indices((20, 24, 18))
        mask = ((i - 9) / 9.5) ** 2 + ((j - 12) / 12.5) ** 2 + ((k - 4) / 8) ** 2 <= 1
    data = (1000 + rng.normal(0, 15, mask.shape + (4,))).astype(dtype)  # (x, y, z, t)
    if dtype == np.float32:
        data[0, 0, 0, 1] = np.nan  # nilearn sets non-finite values to 0 before smoothing
    ref = smooth_array(data.copy(), affine, fwhm=6.0)[mask].T
    volumes = np.ascontiguousarray(data.transpose(3, 2, 1, 0))  # (t, z, y, x), as read from disk
    ours = _Smoother(mask, affine, 6.0)(volumes, (1.0, 0.0))
    np.testing.assert_array_equal(ours, ref)
