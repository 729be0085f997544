"""Config and input-table validation: every bad input fails with one message naming it."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from msnet.cli import main
from msnet.config import load_config, load_schema, validate_config
from msnet.errors import MsnetInputError
from msnet.io.plan import build_plan, map_name, space_of
from msnet.io.tables import read_participants, read_studies

REPO = Path(__file__).resolve().parents[2]

PARTICIPANTS = """participant_id\tgroup\tage\tsex\tdisease_duration\tedss
sub-01\tMS\t35\tF\t5\t2.5
sub-02\tMS\t41\tM\t10\t4.0
sub-03\tHC\t37\tF\tn/a\tn/a
sub-04\tHC\t33\tM\tn/a\tn/a
"""


def _touch_subject(root: Path, pid: str):
    """Tiny but valid fMRIPrep files (headers are read to cross-check the TR)."""
    func = root / pid / "func"
    func.mkdir(parents=True)
    stem = f"{pid}_task-rest_space-MNI152NLin2009cAsym"
    bold = nib.Nifti1Image(np.zeros((2, 2, 2, 4), np.int16), np.eye(4))
    bold.header.set_zooms((1.0, 1.0, 1.0, 2.0))
    bold.to_filename(func / f"{stem}_desc-preproc_bold.nii.gz")
    nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4)).to_filename(
        func / f"{stem}_desc-brain_mask.nii.gz")
    columns = "trans_x\ttrans_y\ttrans_z\trot_x\trot_y\trot_z\tcsf\twhite_matter"
    (func / f"{pid}_task-rest_desc-confounds_timeseries.tsv").write_text(
        columns + "\n" + "0\t0\t0\t0\t0\t0\t0\t0\n" * 4)
    (func / f"{stem}_desc-preproc_bold.json").write_text('{"RepetitionTime": 2.0}')


def _real_data_config(tmp_path, participants=PARTICIPANTS, subjects=None, **data):
    """A one-study fMRIPrep-mode config with empty placeholder files."""
    study = tmp_path / "study1"
    subjects = subjects if subjects is not None else ["sub-01", "sub-02", "sub-03", "sub-04"]
    for pid in subjects:
        _touch_subject(study, pid)
    (tmp_path / "participants.tsv").write_text(participants)
    (tmp_path / "studies.tsv").write_text(
        "study_id\tfmriprep_dir\tparticipants_tsv\nA\tstudy1\tparticipants.tsv\n"
    )
    return validate_config({"data": {"mode": "fmriprep",
                                     "studies_tsv": str(tmp_path / "studies.tsv"), **data}})


def test_demo_config_is_valid_and_defaults_are_filled():
    config = load_config(REPO / "config.yaml")
    assert config["data"]["mode"] == "simulate"
    assert config["simulate"]["n_dummy"] == 2  # filled from the schema default


def test_every_schema_key_is_documented():
    """Each leaf key of the config schema has a description, a type and a default."""

    def leaves(node, path=""):
        node = {**load_schema("config")["definitions"].get(
            node.get("$ref", "#/definitions/").rsplit("/", 1)[-1], {}), **node}
        if node.get("type") == "object" and "properties" in node:
            for key, sub in node["properties"].items():
                yield from leaves(sub, f"{path}.{key}")
        else:
            yield path, node

    for path, node in leaves(load_schema("config")):
        assert node.get("description"), path
        assert "type" in node, path
        if not path.startswith(".resources"):
            assert "default" in node, path


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"simulat": {}}, "'simulat' was unexpected"),
        ({"simulate": {"tr": -2}}, "simulate.tr' = -2"),
        ({"simulate": {"scale": 5}}, "simulate.scale"),
        ({"data": {"mode": "bids"}}, "one of simulate, fmriprep"),
        ({"data": {"mode": "fmriprep"}}, "studies_tsv is not set"),
        ({"seed": "abc"}, "key 'seed'"),
    ],
)
def test_bad_config_values(config, expected):
    with pytest.raises(MsnetInputError, match=expected):
        validate_config(config, "config.yaml")


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: [unclosed")
    with pytest.raises(MsnetInputError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (("sub-02\tMS\t41\tM\t10\t4.0", "sub-02\tMS\t41\tM\t10\t12"), r"row 2 \(participant_id sub-02\): column 'edss' = 12"),
        (("sub-02\tMS\t41\tM\t10\t4.0", "sub-02\tMS\t41\tM\t10\t4.3"), "'edss' = 4.3"),
        (("sub-01\tMS", "sub-01\tpatient"), "column 'group' = 'patient'"),
        (("sub-04\tHC\t33\tM", "sub-04\tHC\t33\tmale"), "column 'sex' = 'male'"),
        (("sub-03\tHC\t37", "sub-03\tHC\tthirty"), "column 'age' = 'thirty' is not a number"),
        (("sub-02\t", "sub-01\t"), "duplicate participant_id sub-01"),
        (("sub-03\tHC", "sub-03\tMS"), None),  # still has one HC: valid
        (("sub-03\tHC\t37\tF\tn/a", "sub-03\tHC\t37\tF\t3"), "given for a healthy control"),
        (("sub-01\t", "01\t"), "column 'participant_id' = '01'"),
    ],
)
def test_bad_participants_rows(tmp_path, edit, expected):
    path = tmp_path / "participants.tsv"
    path.write_text(PARTICIPANTS.replace(*edit))
    if expected is None:
        assert len(read_participants(path)) == 4
        return
    with pytest.raises(MsnetInputError, match=expected) as info:
        read_participants(path)
    assert str(path) in str(info.value)


def test_study_without_controls(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text(PARTICIPANTS.replace("\tHC\t", "\tMS\t").replace("n/a\tn/a", "1\t1.0"))
    with pytest.raises(MsnetInputError, match="no healthy control participants"):
        read_participants(path, "A")


def test_missing_required_column(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text(PARTICIPANTS.replace("\tsex", "\tgender"))
    with pytest.raises(MsnetInputError, match="required column"):
        read_participants(path)


def test_studies_table_errors(tmp_path):
    (tmp_path / "study1").mkdir()
    path = tmp_path / "studies.tsv"
    path.write_text("study_id\tfmriprep_dir\tparticipants_tsv\nA\tnowhere\tp.tsv\n")
    with pytest.raises(MsnetInputError, match="fmriprep_dir .* is not a folder"):
        read_studies(path)
    path.write_text("study_id\tfmriprep_dir\tparticipants_tsv\nA-1\tstudy1\tp.tsv\n")
    with pytest.raises(MsnetInputError, match="study_id"):
        read_studies(path)
    path.write_text("study_id\tfmriprep_dir\tparticipants_tsv\nA\tstudy1\tp.tsv\n")
    table = read_studies(path)
    assert table.loc[0, "task"] == "rest" and Path(table.loc[0, "fmriprep_dir"]).is_absolute()


def test_real_data_plan_finds_every_subject(tmp_path):
    plan = build_plan(_real_data_config(tmp_path))
    assert sorted(plan.subjects["participant_id"]) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert all(Path(b[0]).name.endswith("desc-preproc_bold.nii.gz") for b in plan.subjects["bold"])


def test_participant_without_bold_is_an_error_naming_it(tmp_path):
    config = _real_data_config(tmp_path, subjects=["sub-01", "sub-02", "sub-03"])
    with pytest.raises(MsnetInputError, match="sub-04"):
        build_plan(config)


def test_participant_without_bold_can_be_excluded(tmp_path):
    config = _real_data_config(tmp_path, subjects=["sub-01", "sub-02", "sub-03"],
                               on_missing="exclude")
    plan = build_plan(config)
    assert "sub-04" not in set(plan.subjects["participant_id"])
    assert list(plan.excluded["participant_id"]) == ["sub-04"]


def test_cli_validate_reports_one_clear_error(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"simulate": {"tr": -1}}))
    assert main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "simulate.tr" in err and "Traceback" not in err


def test_cli_validate_accepts_the_demo(capsys):
    assert main(["validate", "--config", str(REPO / "config.yaml")]) == 0
    assert "valid. 25 studies" in capsys.readouterr().out


def test_cli_validate_and_plan_count_the_published_studies(capsys, monkeypatch):
    """Literature mode: `msnet validate` and `msnet plan` count the example's published
    studies, their people and peaks (not "0 studies"), as the tables have them."""
    import pandas as pd

    monkeypatch.chdir(REPO)  # the example config names its tables from the repository root
    example = REPO / "examples" / "literature"
    studies = pd.read_csv(example / "studies.tsv", sep="\t")
    peaks = pd.read_csv(example / "peaks.tsv", sep="\t")
    config = str(example / "config.yaml")
    assert main(["validate", "--config", config]) == 0
    out = capsys.readouterr().out
    assert (f"valid. Literature: {len(studies)} published studies ({studies['n_ms'].sum()} MS, "
            f"{studies['n_hc'].sum()} HC) with {len(peaks)} peaks") in out
    assert "0 studies" not in out
    assert main(["plan", "--config", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "published studies (literature mode)"
    first = studies.iloc[0]
    assert lines[3].split() == [first["study_id"], str(first["n_ms"]), str(first["n_hc"]),
                                str(int((peaks["study_id"] == first["study_id"]).sum()))]
    assert lines[-1].split() == ["total", str(studies["n_ms"].sum()),
                                 str(studies["n_hc"].sum()), str(len(peaks))]


def test_cli_subject_runs_one_simulated_subject(tmp_path, capsys):
    """`msnet simulate` then `msnet subject` write the subject outputs in the workflow's
    layout, in a folder of their own (never over the workflow's outputs)."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "results"),
                                      "simulate": {"n_studies": 1, "resolution_mm": 8}}))
    assert main(["subject", "--config", str(config), "--study", "S01",
                 "--participant", "S01HC001"]) == 2
    assert "msnet simulate" in capsys.readouterr().err
    assert main(["simulate", "--config", str(config)]) == 0
    assert main(["subject", "--config", str(config), "--study", "S01",
                 "--participant", "S01HC001"]) == 0
    out = tmp_path / "results" / "msnet_subject" / "subjects" / "study-S01" / "sub-S01HC001"
    assert (out / "sub-S01HC001_qc.json").is_file()
    assert (out / map_name("sub-S01HC001_network-DMN", "amplitude")).is_file()
    assert map_name("sub-S01HC001_network-DMN", "amplitude") == (
        "sub-S01HC001_network-DMN_space-MNI152NLin2009cAsym_stat-amplitude_map.nii.gz")
    assert not (tmp_path / "results" / "subjects").exists()  # the workflow's folder
    assert str(out) in capsys.readouterr().out
    assert main(["subject", "--config", str(config), "--study", "S01",
                 "--participant", "S01HC001", "--out", str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "subjects" / "study-S01" / "sub-S01HC001"
            / "sub-S01HC001_qc.json").is_file()
    assert main(["subject", "--config", str(config), "--study", "S01",
                 "--participant", "nobody"]) == 2


# --------------------------------------------------------------- issue 10: defects 6, 7, 10, 11


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"results_dir": ""}, "results_dir is empty"),
        ({"results_dir": "  "}, "results_dir is empty"),
        ({"data": {"studies_tsv": "studies.tsv"}}, "data.mode is 'simulate'"),
        ({"clinical": {"variables": ["edss"], "voxelwise_variables": ["edss", "t2lv"]}},
         r"voxelwise_variables \['t2lv'\] are not in clinical.variables"),
    ],
)
def test_silent_config_combinations_are_refused(config, expected):
    with pytest.raises(MsnetInputError, match=expected):
        validate_config(config, "config.yaml")


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\ngroup:\n  n_permutations: 10\n  alpha: 0.05\n"
                    "  n_permutations: 20\n")
    with pytest.raises(MsnetInputError, match=r"'n_permutations' is given twice .*lines 3 and 5"):
        load_config(path)
    path.write_text("seed: 1\nseed: 2\n")
    assert main(["validate", "--config", str(path)]) == 2


def test_empty_config_file_is_refused_like_snakemake(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("# only a comment\n")
    assert main(["validate", "--config", str(path)]) == 2
    assert "config file is empty" in capsys.readouterr().err
    path.write_text("{}\n")  # Snakemake accepts an empty mapping: every default
    assert load_config(path)["data"]["mode"] == "simulate"


@pytest.mark.parametrize("reader", [read_studies, read_participants])
def test_empty_and_header_only_tables(tmp_path, reader):
    path = tmp_path / "table.tsv"
    path.write_bytes(b"")
    with pytest.raises(MsnetInputError, match=r"is empty \(0 bytes, no header row\)") as info:
        reader(path)
    assert str(path) in str(info.value)
    path.write_text("study_id\tfmriprep_dir\tparticipants_tsv\n")
    with pytest.raises(MsnetInputError, match="has a header .* but no rows"):
        reader(path)


def test_comma_separated_table_is_named_as_such(tmp_path):
    path = tmp_path / "studies.tsv"
    path.write_text("study_id,fmriprep_dir,participants_tsv\nA,study1,p.tsv\n")
    with pytest.raises(MsnetInputError, match="this file is comma-separated") as info:
        read_studies(path)
    assert "missing" not in str(info.value)
    path = tmp_path / "participants.tsv"
    path.write_text(PARTICIPANTS.replace("\t", ";"))
    with pytest.raises(MsnetInputError, match="semicolon-separated"):
        read_participants(path)


def test_lesion_mask_column_with_na_rows(tmp_path):
    """Controls have no lesion mask (n/a): their plan entry is None, not a truthy NaN."""
    nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)).to_filename(tmp_path / "les.nii.gz")
    rows = PARTICIPANTS.strip().split("\n")
    rows = [rows[0] + "\tlesion_mask", rows[1] + "\tles.nii.gz"] + [r + "\tn/a" for r in rows[2:]]
    plan = build_plan(_real_data_config(tmp_path, participants="\n".join(rows) + "\n"))
    subjects = plan.subjects
    for label, expected in (("01", str(tmp_path / "les.nii.gz")), ("02", None), ("03", None)):
        row = subjects[(subjects["study_id"] == "A") & (subjects["label"] == label)].iloc[0]
        assert row["lesion_mask"] == expected and bool(row["lesion_mask"]) == bool(expected)
    assert [r.lesion_mask for r in subjects.itertuples()][1:] == [None, None, None]


def test_cli_validate_reports_an_unwritable_results_dir(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "taken" / "results")}))
    assert main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Cannot write into the results folder" in err and "Traceback" not in err
    assert not (tmp_path / "taken").is_dir()


@pytest.mark.parametrize("section", ["group", "clinical"])
def test_unknown_covariates_are_refused_at_validation(tmp_path, section):
    config = _real_data_config(tmp_path)
    config[section]["covariates"] = ["age", "mean_fd", "educaton"]
    with pytest.raises(MsnetInputError, match=rf"{section}.covariates: 'educaton' is neither"):
        build_plan(config)
    config[section]["covariates"] = ["age", "sex", "edss", "mean_fd", "tsnr_median"]  # known
    build_plan(config)
    demo = validate_config({section: {"covariates": ["age", "handedness"]}})
    with pytest.raises(MsnetInputError, match="'handedness' is neither"):
        build_plan(demo)


def test_subject_chunks_stay_within_studies_and_cover_everyone():
    import pandas as pd

    from msnet.io.plan import subject_chunks

    subjects = pd.DataFrame({"study_id": ["A"] * 5 + ["B"] * 2,
                             "label": [f"s{i}" for i in range(7)]})
    chunks = subject_chunks(subjects, 2)
    assert [c for c, _ in chunks] == ["A_1", "A_2", "A_3", "B_1"]
    assert [[r["label"] for r in rows] for _, rows in chunks] == [
        ["s0", "s1"], ["s2", "s3"], ["s4"], ["s5", "s6"]]
    assert [c for c, _ in subject_chunks(subjects, 1)] == [
        "A_1", "A_2", "A_3", "A_4", "A_5", "B_1", "B_2"]


def test_cli_version(capsys):
    from msnet import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"msnet {__version__}"


def test_cli_plan_prints_a_table(capsys):
    assert main(["plan", "--config", str(REPO / "config.yaml")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["study", "MS", "HC", "subjects"]
    assert lines[2].split()[0] == "S01" and lines[-1].split()[0] == "total"
    total = [int(x) for x in lines[-1].split()[1:]]
    assert total[0] + total[1] == total[2] and "{" not in "".join(lines)


def test_cli_validate_reports_every_problem_at_once(tmp_path, capsys):
    """Config keys, table cells and the other tables' problems: all in one message."""
    bad = PARTICIPANTS.replace("sub-01\tMS\t35", "sub-01\tpatient\t35").replace(
        "sub-02\tMS\t41\tM\t10\t4.0", "sub-02\tMS\told\tM\t10\t12").replace(
        "sub-03\tHC\t37\tF\tn/a", "sub-03\tHC\t37\tF\t3")
    _real_data_config(tmp_path, participants=bad)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "results_dir": str(tmp_path / "results"),
        "data": {"mode": "fmriprep", "studies_tsv": str(tmp_path / "studies.tsv")},
        "simulate": {"tr": -1}, "meta": {"alpha": 2, "method": "XX"},
        "denoise": {"low_pass": 0.01, "high_pass": 0.05}}))
    assert main(["validate", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    for needle in ("simulate.tr", "meta.alpha", "meta.method", "low_pass",  # config, all keys
                   "row 1 (participant_id sub-01): column 'group' = 'patient'",
                   "row 2 (participant_id sub-02): column 'age' = 'old' is not a number",
                   "row 2 (participant_id sub-02): column 'edss' = 12.0",
                   "row 3 (participant_id sub-03): 'disease_duration' is given for a healthy"):
        assert needle in err, (needle, err)
    assert "8 input problems" in err and "Traceback" not in err
    with pytest.raises(MsnetInputError) as info:  # the workflow's check lists them all too
        load_config(config)
    assert all(k in str(info.value) for k in ("simulate.tr", "meta.alpha", "low_pass"))


def test_yaml_merge_keys_may_override(tmp_path):
    """`<<: *anchor` then an explicit key is an override, not a duplicate."""
    path = tmp_path / "c.yaml"
    path.write_text("x: &perm\n  n_permutations: 10\n  alpha: 0.05\n"
                    "group:\n  <<: *perm\n  n_permutations: 20\n")
    from msnet.config import read_config_file

    assert read_config_file(path)["group"] == {"n_permutations": 20, "alpha": 0.05}


def test_studies_in_different_template_spaces_are_refused_naming_them(tmp_path):
    """Voxelwise statistics compare one voxel across studies: one space for all, said early."""
    config = _real_data_config(tmp_path)
    (tmp_path / "studies.tsv").write_text(
        "study_id\tfmriprep_dir\tparticipants_tsv\tspace\n"
        "A\tstudy1\tparticipants.tsv\tMNI152NLin2009cAsym\n"
        "B\tstudy1\tparticipants.tsv\tMNI152NLin6Asym:res-2\n")
    with pytest.raises(MsnetInputError) as err:
        build_plan(config)
    message = str(err.value)
    assert "different template spaces" in message and "--output-spaces" in message
    assert "MNI152NLin2009cAsym: A" in message and "MNI152NLin6Asym: B" in message


def test_outputs_take_the_space_of_their_input_maps():
    assert space_of({"DMN": ["a/sub-1_network-DMN_space-MNI152NLin6Asym_stat-z_map.nii.gz"]}) \
        == "MNI152NLin6Asym"
    assert space_of(["maps/own_name.nii.gz"]) == "MNI152NLin2009cAsym"  # the default
    with pytest.raises(MsnetInputError, match="different template spaces"):
        space_of(["x_space-MNI152NLin6Asym_stat-z_map.nii.gz",
                  "y_space-MNI152NLin2009cAsym_stat-z_map.nii.gz"])
