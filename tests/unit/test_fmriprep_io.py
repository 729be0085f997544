"""fMRIPrep file discovery, TR checks and confounds harmonisation (msnet.io.fmriprep)."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msnet.errors import MsnetInputError
from msnet.io.fmriprep import (
    MOTION_COLUMNS,
    find_study_files,
    find_subject_files,
    parse_bids_name,
    read_confounds,
    read_tr,
)

SPACE = "MNI152NLin2009cAsym"


def write_run(root, sub="01", ses=None, run=None, res="2", tr=2.0, header_tr=None, sidecar=True,
              confounds="timeseries", mask=True, n_volumes=4):
    """Write a tiny fMRIPrep run (2x2x2 images) and return the BOLD path."""
    func = root / f"sub-{sub}" / (f"ses-{ses}/func" if ses else "func")
    func.mkdir(parents=True, exist_ok=True)
    ents = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + "_task-rest" + (f"_run-{run}" if run else "")
    space = f"_space-{SPACE}" + (f"_res-{res}" if res else "")
    img = nib.Nifti1Image(np.ones((2, 2, 2, n_volumes), np.int16), np.eye(4))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = tr if header_tr is None else header_tr
    bold = func / f"{ents}{space}_desc-preproc_bold.nii.gz"
    nib.save(img, bold)
    if mask:
        mask_img = nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4))
        nib.save(mask_img, func / f"{ents}{space}_desc-brain_mask.nii.gz")
    if sidecar:
        bold.with_name(bold.name.replace(".nii.gz", ".json")).write_text(json.dumps({"RepetitionTime": tr}))
    if confounds:
        pd.DataFrame({"trans_x": np.zeros(n_volumes)}).to_csv(
            func / f"{ents}_desc-confounds_{confounds}.tsv", sep="\t", index=False
        )
    return bold


def test_parse_bids_name():
    ent, suffix, ext = parse_bids_name("sub-01_ses-a_task-rest_run-2_space-X_res-2_desc-preproc_bold.nii.gz")
    assert ent == {"sub": "01", "ses": "a", "task": "rest", "run": "2", "space": "X", "res": "2", "desc": "preproc"}
    assert (suffix, ext) == ("bold", ".nii.gz")


@pytest.mark.parametrize("suffix", ["timeseries", "regressors"])
def test_find_subject_files_both_confounds_namings_and_res(tmp_path, suffix):
    bold = write_run(tmp_path, confounds=suffix)
    files = find_subject_files(tmp_path, "01", space=SPACE)
    (run,) = files.runs
    assert files.participant_id == "sub-01" and files.tr == 2.0
    assert run.bold == bold
    assert run.mask.name == f"sub-01_task-rest_space-{SPACE}_res-2_desc-brain_mask.nii.gz"
    assert run.confounds.name == f"sub-01_task-rest_desc-confounds_{suffix}.tsv"
    assert run.sidecar.name.endswith("_desc-preproc_bold.json")


def test_confounds_resolution_agrees_with_nilearn(tmp_path):
    from nilearn.interfaces.fmriprep.load_confounds_utils import get_confounds_file

    write_run(tmp_path, ses="1", run="1", confounds="regressors")
    (run,) = find_subject_files(tmp_path, "sub-01", space=SPACE).runs
    assert get_confounds_file(str(run.bold), flag_full_aroma=False, flag_tedana=False) == str(run.confounds)


def test_runs_sessions_order_and_multi_run(tmp_path):
    for ses, run in [("2", "1"), ("1", "10"), ("1", "2")]:
        write_run(tmp_path, ses=ses, run=run)
    first = find_subject_files(tmp_path, "sub-01", space=SPACE, multi_run="first")
    every = find_subject_files(tmp_path, "sub-01", space=SPACE, multi_run="concatenate")
    order = [(parse_bids_name(r.bold)[0]["ses"], parse_bids_name(r.bold)[0]["run"]) for r in every.runs]
    assert order == [("1", "2"), ("1", "10"), ("2", "1")]
    assert first.runs == every.runs[:1]
    for r in every.runs:  # each run gets its own confounds table
        assert parse_bids_name(r.confounds)[0]["run"] == parse_bids_name(r.bold)[0]["run"]


def test_several_resolutions_need_an_explicit_one(tmp_path):
    write_run(tmp_path, res="1")
    write_run(tmp_path, res="2")
    with pytest.raises(MsnetInputError, match="res-2"):
        find_subject_files(tmp_path, "01", space=SPACE)
    files = find_subject_files(tmp_path, "01", space=f"{SPACE}:res-2")
    assert "_res-2_" in files.runs[0].bold.name


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"confounds": None}, ["No confounds table", "desc-confounds_timeseries.tsv"]),
        ({"mask": False}, ["No brain mask", "desc-brain_mask"]),
        ({"header_tr": 2.5}, ["Contradictory repetition time", "2.0", "2.5", ".json", ".nii.gz"]),
        ({"sidecar": False, "header_tr": 0.0}, ["No repetition time", "RepetitionTime"]),
    ],
)
def test_bad_runs_raise_clear_errors(tmp_path, kwargs, words):
    write_run(tmp_path, **kwargs)
    with pytest.raises(MsnetInputError) as err:
        find_subject_files(tmp_path, "01", space=SPACE)
    for word in words:
        assert word in str(err.value)


def test_read_tr_header_only_and_millisecond_units(tmp_path):
    bold = write_run(tmp_path, sidecar=False, header_tr=1500.0)
    img = nib.load(bold)
    img.header.set_xyzt_units("mm", "msec")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), bold)
    (run,) = find_subject_files(tmp_path, "01", space=SPACE).runs
    assert run.sidecar is None
    assert read_tr(run) == pytest.approx(1.5)


def test_bad_sidecar_value(tmp_path):
    bold = write_run(tmp_path)
    bold.with_name(bold.name.replace(".nii.gz", ".json")).write_text(json.dumps({"RepetitionTime": "2"}))
    with pytest.raises(MsnetInputError, match="positive number"):
        find_subject_files(tmp_path, "01", space=SPACE)


def test_no_data_for_participant(tmp_path):
    write_run(tmp_path, sub="01")
    with pytest.raises(MsnetInputError, match="sub-02: no"):
        find_subject_files(tmp_path, "sub-02", space=SPACE)
    with pytest.raises(MsnetInputError, match="does not exist"):
        find_subject_files(tmp_path / "nowhere", "sub-01", space=SPACE)


def test_study_missing_participants_error_vs_exclude(tmp_path):
    write_run(tmp_path, sub="01")
    write_run(tmp_path, sub="03")  # data, but no participants.tsv row
    (tmp_path / "sub-04" / "anat").mkdir(parents=True)  # no BOLD: not "data"
    with pytest.raises(MsnetInputError) as err:
        find_study_files(tmp_path, ["sub-01", "sub-02"], space=SPACE, on_missing="error")
    assert "sub-02" in str(err.value) and "sub-03" in str(err.value) and "on_missing" in str(err.value)
    found, missing = find_study_files(tmp_path, ["sub-01", "sub-02"], space=SPACE, on_missing="exclude")
    assert list(found) == ["sub-01"]
    assert [(m["participant_id"], m["kind"]) for m in missing] == [
        ("sub-02", "no_data"),
        ("sub-03", "no_participant_row"),
    ]


def test_study_broken_run_is_an_error_even_when_excluding(tmp_path):
    write_run(tmp_path, sub="01", confounds=None)
    with pytest.raises(MsnetInputError, match="No confounds table"):
        find_study_files(tmp_path, ["sub-01"], space=SPACE, on_missing="exclude")


def test_read_confounds_maps_fmriprep_1x_names(tmp_path):
    legacy = pd.DataFrame(
        {
            "X": [0.0, 0.1, 0.3], "Y": 0.0, "Z": 0.0, "RotX": [0.0, 0.01, 0.0], "RotY": 0.0, "RotZ": 0.0,
            "FramewiseDisplacement": [np.nan, 0.6, 0.7], "stdDVARS": [np.nan, 1.0, 1.1],
            "non-stdDVARS": [np.nan, 10, 11], "vx-wisestdDVARS": [np.nan, 1, 1],
            "GlobalSignal": 1.0, "CSF": 2.0, "WhiteMatter": 3.0, "aCompCor00": 0.5, "aCompCor01": 0.2,
            "tCompCor00": 0.1, "Cosine00": 0.3, "NonSteadyStateOutlier00": [1, 0, 0],
            "AROMAAggrComp01": 0.0, "SomeOtherThing": 0.0,
        }
    )
    path = tmp_path / "sub-01_task-rest_desc-confounds_regressors.tsv"
    legacy.to_csv(path, sep="\t", index=False, na_rep="n/a")
    table, meta = read_confounds(path, n_volumes=3)
    for col in ["trans_x", "rot_x", "framewise_displacement", "std_dvars", "dvars", "global_signal", "csf",
                "white_matter", "a_comp_cor_00", "a_comp_cor_01", "t_comp_cor_00", "cosine_00",
                "non_steady_state_outlier_00", "aroma_motion_01"]:
        assert col in table, col
    assert "SomeOtherThing" not in table and "X" not in table
    np.testing.assert_allclose(table["trans_x_derivative1"], [np.nan, 0.1, 0.2])
    np.testing.assert_allclose(table["trans_x_derivative1_power2"], [np.nan, 0.01, 0.04])
    np.testing.assert_allclose(table["rot_x_power2"], [0.0, 1e-4, 0.0])
    assert meta["a_comp_cor_00"] == {"Method": "aCompCor", "Mask": "combined"}
    assert meta["t_comp_cor_00"]["Method"] == "tCompCor"


def test_read_confounds_keeps_current_tables_and_json(tmp_path):
    path = tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    table = pd.DataFrame({c: [0.0, 0.0] for c in MOTION_COLUMNS})
    table["trans_x"], table["trans_x_derivative1"] = [0.0, 1.0], [np.nan, 5.0]
    table.to_csv(path, sep="\t", index=False)
    path.with_suffix(".json").write_text(json.dumps({"a_comp_cor_00": {"Mask": "CSF"}}))
    table, meta = read_confounds(path)
    assert table["trans_x_derivative1"].iloc[1] == 5.0  # fMRIPrep's own value is not replaced
    assert meta == {"a_comp_cor_00": {"Mask": "CSF"}}


@pytest.mark.parametrize(
    "content, words",
    [
        ("trans_x\n0\n1\n", ["2 rows", "3 volumes"]),
        ("trans_x\tcsf\n0\t1\n1\tabc\n0\t1\n", ["csf", "non-numeric", "row 3"]),
    ],
)
def test_read_confounds_bad_tables(tmp_path, content, words):
    path = tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    path.write_text(content)
    with pytest.raises(MsnetInputError) as err:
        read_confounds(path, n_volumes=3)
    for word in words:
        assert word in str(err.value)


def test_read_confounds_missing_file(tmp_path):
    with pytest.raises(MsnetInputError, match="does not exist"):
        read_confounds(tmp_path / "nope_desc-confounds_timeseries.tsv")


@pytest.mark.parametrize("header", ["csf\twhite_matter\tglobal_signal", "trans_x\ttrans_y\tcsf",
                                    "Time\tResp\tCardiac"])
def test_non_fmriprep_confounds_table_is_refused(tmp_path, header):
    """A table without fMRIPrep's six motion parameters is not an fMRIPrep table."""
    path = tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    n_cols = header.count("\t") + 1
    path.write_text(header + "\n" + ("\t".join(["1"] * n_cols) + "\n") * 3)
    with pytest.raises(MsnetInputError, match="is not an fMRIPrep confounds table") as err:
        read_confounds(path, n_volumes=3)
    assert str(path) in str(err.value) and "rot_z" in str(err.value)
