"""Preflight (msnet.io.preflight): every subject's file headers checked up front, in parallel,
every problem reported together; the checks equal the subject job's own."""

import gzip
import json
import shutil
import threading

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from msnet import denoise
from msnet.cli import main
from msnet.config import validate_config
from msnet.errors import MsnetInputError, MsnetInputErrors
from msnet.io import fmriprep, preflight
from msnet.io.plan import build_plan

SPACE = "MNI152NLin2009cAsym"
PARTICIPANTS = "participant_id\tgroup\tage\tsex\n"


def compcor_meta(n=5, mask="combined"):
    return {f"a_comp_cor_{i:02d}": {"Method": "aCompCor", "Mask": mask, "Retained": True}
            for i in range(n)}


def full_table(n):
    """A current fMRIPrep confounds table: motion, WM/CSF, global, FD/DVARS, CompCor, cosines."""
    from test_denoise import confounds_table

    table = confounds_table(np.random.default_rng(0), n)
    for i in range(5):
        table[f"a_comp_cor_{i:02d}"] = np.random.default_rng(i).normal(size=n)
        table[f"t_comp_cor_{i:02d}"] = np.random.default_rng(10 + i).normal(size=n)
    return table


def write_run(func, pid, shape=(6, 7, 6), n=20, tr=2.0, affine=None, run=None):
    """Write one small but complete fMRIPrep run (images, sidecar, confounds TSV + JSON)."""
    func.mkdir(parents=True, exist_ok=True)
    ents = f"{pid}_task-rest" + (f"_run-{run}" if run else "")
    stem = f"{ents}_space-{SPACE}_desc-"
    affine = np.diag([4.0, 4.0, 4.0, 1.0]) if affine is None else affine
    data = np.random.default_rng(1).normal(500, 5, shape + (n,)).astype(np.int16)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = tr
    nib.save(img, func / f"{stem}preproc_bold.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), affine), func / f"{stem}brain_mask.nii.gz")
    (func / f"{stem}preproc_bold.json").write_text(json.dumps({"RepetitionTime": tr}))
    full_table(n).to_csv(func / f"{ents}_desc-confounds_timeseries.tsv", sep="\t", index=False,
                         na_rep="n/a")
    meta = {**compcor_meta(), **{f"t_comp_cor_{i:02d}": {"Method": "tCompCor"} for i in range(5)}}
    (func / f"{ents}_desc-confounds_timeseries.json").write_text(json.dumps(meta))
    return func / f"{stem}preproc_bold.nii.gz"


def write_study(root, n_subjects=6, studies=1, **run):
    """``studies`` studies of ``n_subjects`` (half MS) with a studies.tsv; returns its path."""
    lines = ["study_id\tfmriprep_dir\tparticipants_tsv"]
    for s in range(studies):
        study = root / f"study{s}"
        rows = [PARTICIPANTS.strip()]
        for i in range(n_subjects):
            pid = f"sub-{s}x{i:03d}"
            write_run(study / pid / "func", pid, **run)
            rows.append(f"{pid}\t{'MS' if i % 2 else 'HC'}\t40\tF")
        (study / "participants.tsv").write_text("\n".join(rows) + "\n")
        lines.append(f"S{s}\tstudy{s}\tstudy{s}/participants.tsv")
    (root / "studies.tsv").write_text("\n".join(lines) + "\n")
    return root / "studies.tsv"


def config_for(studies_tsv, **sections):
    return validate_config({"data": {"mode": "fmriprep", "studies_tsv": str(studies_tsv)},
                            **sections})


def func_of(root, i, s=0):
    pid = f"sub-{s}x{i:03d}"
    return root / f"study{s}" / pid / "func", pid


# --------------------------------------------------------------------- the whole preflight


def test_problems_in_many_files_are_reported_together_one_line_each(tmp_path, capsys):
    studies = write_study(tmp_path, n_subjects=8)
    assert len(build_plan(config_for(studies)).subjects) == 8
    broken = {}
    func, pid = func_of(tmp_path, 0)  # truncated BOLD
    bold = next(func.glob("*_bold.nii.gz"))
    bold.write_bytes(bold.read_bytes()[: bold.stat().st_size // 2])
    broken[bold] = "truncated"
    func, pid = func_of(tmp_path, 1)  # sidecar TR contradicts the header
    side = next(func.glob("*_bold.json"))
    side.write_text('{"RepetitionTime": 2.5}')
    broken[side] = "Contradictory repetition time"
    func, pid = func_of(tmp_path, 2)  # mask on another grid
    mask = next(func.glob("*_mask.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.diag([4.0, 4, 4, 1])), mask)
    broken[mask] = "different grids"
    func, pid = func_of(tmp_path, 3)  # confounds table of another run
    conf = next(func.glob("*_timeseries.tsv"))
    full_table(25).to_csv(conf, sep="\t", index=False, na_rep="n/a")
    broken[conf] = "has 25 rows but the BOLD run has 20 volumes"
    func, pid = func_of(tmp_path, 4)  # confounds JSON does not parse
    meta = next(func.glob("*_timeseries.json"))
    meta.write_text("{not json")
    broken[meta] = "Cannot read the confounds JSON sidecar"
    func, pid = func_of(tmp_path, 5)  # BOLD is 3-D
    bold = next(func.glob("*_bold.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((6, 7, 6), np.int16), np.diag([4.0, 4, 4, 1])), bold)
    broken[bold] = "4-D time series"

    with pytest.raises(MsnetInputErrors) as info:
        build_plan(config_for(studies))
    problems = info.value.problems
    assert len(problems) == len(broken), problems
    for path, needle in broken.items():
        line = next((p for p in problems if str(path) in p), None)
        assert line is not None and needle in line, (path, problems)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"mode": "fmriprep", "studies_tsv": str(studies)},
                                      "results_dir": str(tmp_path / "results")}))
    assert main(["validate", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{len(broken)} input problems" in err and "Traceback" not in err
    listed = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(listed) == len(broken)
    assert not (tmp_path / "results").exists()


def test_table_and_file_problems_of_several_studies_come_in_one_list(tmp_path):
    studies = write_study(tmp_path, n_subjects=4, studies=3)
    (tmp_path / "study0" / "participants.tsv").write_text(
        PARTICIPANTS + "sub-0x000\tHC\t40\tF\nsub-0x001\tMS\t40\tX\n")
    func, _ = func_of(tmp_path, 2, s=1)
    next(func.glob("*_mask.nii.gz")).unlink()
    func, _ = func_of(tmp_path, 3, s=2)
    next(func.glob("*_bold.json")).write_text('{"RepetitionTime": "2"}')
    with pytest.raises(MsnetInputErrors) as info:
        build_plan(config_for(studies))
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert "study0/participants.tsv, row 2" in problems[0] and "'sex'" in problems[0]
    assert "No brain mask" in problems[1] and "sub-1x002" in problems[1]
    assert "positive number" in problems[2] and "sub-2x003" in problems[2]


def test_preflight_reads_headers_not_voxel_data(tmp_path, monkeypatch):
    """Any voxel read (dataobj, get_fdata) fails here; the preflight still passes."""
    from nibabel import arrayproxy

    studies = write_study(tmp_path, n_subjects=2)

    def no_data(*args, **kwargs):
        raise AssertionError("the preflight read voxel data")

    monkeypatch.setattr(arrayproxy.ArrayProxy, "__array__", no_data)
    monkeypatch.setattr(arrayproxy.ArrayProxy, "_get_scaled", no_data)
    monkeypatch.setattr(arrayproxy.ArrayProxy, "get_unscaled", no_data)
    build_plan(config_for(studies))
    with pytest.raises(AssertionError, match="voxel data"):  # the patch bites on a real read
        nib.load(next(tmp_path.rglob("*_bold.nii.gz"))).get_fdata()


def test_subjects_are_checked_in_parallel(tmp_path, monkeypatch):
    studies = write_study(tmp_path, n_subjects=2)
    files = build_plan(config_for(studies), preflight=False)
    subject = fmriprep.find_subject_files(tmp_path / "study0", "sub-0x000", read_headers=False)
    lock, active, most = threading.Lock(), [0], [0]
    both_running = threading.Barrier(2, timeout=30)

    def slow(files, lesion, options):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        both_running.wait()  # returns only once two checks run at the same time
        with lock:
            active[0] -= 1
        return []

    monkeypatch.setattr(preflight, "check_subject", slow)
    assert preflight.check_subjects([(subject, None)] * 16, {}, workers=8) == []
    assert most[0] > 1
    assert len(files.subjects) == 2


def test_demo_sized_dataset_is_planned(tmp_path):
    """189 subjects in 25 studies with the demo's image size (50x59x48, 140 volumes) and
    confounds tables: the whole plan (tables, file discovery and header preflight) goes
    through. The files are copies of one subject's (what is read is the same: headers, one
    table each). Its time is measured by benchmarks/bench_preflight.py, not here."""
    shape, n = (50, 59, 48), 140
    template = tmp_path / "template"
    func = template / "func"
    func.mkdir(parents=True)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    img = nib.Nifti1Image(np.zeros(shape + (n,), np.int16), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    nib.save(img, func / "bold.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), affine), func / "mask.nii.gz")
    full_table(n).to_csv(func / "conf.tsv", sep="\t", index=False, na_rep="n/a")
    (func / "conf.json").write_text(json.dumps(compcor_meta()))
    sizes = [8] * 14 + [7] * 11  # 189 subjects
    lines = ["study_id\tfmriprep_dir\tparticipants_tsv"]
    for s, size in enumerate(sizes):
        study = tmp_path / f"S{s:02d}"
        rows = [PARTICIPANTS.strip()]
        for i in range(size):
            pid = f"sub-S{s:02d}n{i:02d}"
            out = study / pid / "func"
            out.mkdir(parents=True)
            stem = f"{pid}_task-rest_space-{SPACE}_res-4_desc-"
            shutil.copy(func / "bold.nii.gz", out / f"{stem}preproc_bold.nii.gz")
            shutil.copy(func / "mask.nii.gz", out / f"{stem}brain_mask.nii.gz")
            (out / f"{stem}preproc_bold.json").write_text('{"RepetitionTime": 2.0}')
            shutil.copy(func / "conf.tsv", out / f"{pid}_task-rest_desc-confounds_timeseries.tsv")
            shutil.copy(func / "conf.json", out / f"{pid}_task-rest_desc-confounds_timeseries.json")
            rows.append(f"{pid}\t{'MS' if i % 2 else 'HC'}\t40\tF")
        (study / "participants.tsv").write_text("\n".join(rows) + "\n")
        lines.append(f"S{s:02d}\tS{s:02d}\tS{s:02d}/participants.tsv")
    (tmp_path / "studies.tsv").write_text("\n".join(lines) + "\n")
    config = config_for(tmp_path / "studies.tsv")
    plan = build_plan(config)
    assert len(plan.subjects) == 189 and plan.subjects["study_id"].nunique() == 25


# ------------------------------------------------------------------------------ cache


def test_cache_skips_unchanged_subjects_and_rechecks_changed_ones(tmp_path, monkeypatch):
    studies = write_study(tmp_path, n_subjects=4)
    cache = tmp_path / "cache" / "passed.json"
    calls = []
    real = preflight.check_subject

    def counting(files, lesion, options):
        calls.append(files.participant_id)
        return real(files, lesion, options)

    monkeypatch.setattr(preflight, "check_subject", counting)
    build_plan(config_for(studies), cache=cache)
    assert len(calls) == 4 and cache.is_file()
    calls.clear()
    build_plan(config_for(studies), cache=cache)
    assert calls == []  # nothing re-read
    func, pid = func_of(tmp_path, 1)
    side = next(func.glob("*_bold.json"))
    side.write_text('{"RepetitionTime": 3.0}')  # same size, new content: mtime decides
    with pytest.raises(MsnetInputError, match="Contradictory"):
        build_plan(config_for(studies), cache=cache)
    assert calls == [pid]
    calls.clear()
    with pytest.raises(MsnetInputError, match="Contradictory"):  # failures are never cached
        build_plan(config_for(studies), cache=cache)
    assert calls == [pid]
    side.write_text('{"RepetitionTime": 2.0}')
    calls.clear()
    build_plan(config_for(studies, denoise={"strategy": "compcor"}), cache=cache)
    assert len(calls) == 4  # other options: everything checked again
    cache.write_text("{broken")  # an unreadable cache is ignored
    build_plan(config_for(studies), cache=cache)


def test_unwritable_cache_is_ignored(tmp_path):
    studies = write_study(tmp_path, n_subjects=2)
    (tmp_path / "file").write_text("")
    build_plan(config_for(studies), cache=tmp_path / "file" / "cache.json")


# ------------------------------------------------------------------ single-file checks


def _gzip_members(raw: bytes, parts: int) -> bytes:
    step = len(raw) // parts + 1
    return b"".join(gzip.compress(raw[i:i + step]) for i in range(0, len(raw), step))


def test_check_complete_finds_truncation_and_accepts_multi_member_gzip(tmp_path):
    img = nib.Nifti1Image(np.random.default_rng(0).normal(size=(8, 8, 8, 30)).astype(np.float32),
                          np.eye(4))
    whole = tmp_path / "whole.nii.gz"
    nib.save(img, whole)
    fmriprep.check_complete(whole, nib.load(whole))
    raw = gzip.decompress(whole.read_bytes())
    bgzip = tmp_path / "multi.nii.gz"  # several gzip members, as bgzip writes
    bgzip.write_bytes(_gzip_members(raw, 4))
    fmriprep.check_complete(bgzip, nib.load(bgzip))
    for cut in (0.9, 0.5, 0.1):
        bad = tmp_path / f"cut{cut}.nii.gz"
        bad.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * cut)])
        with pytest.raises(MsnetInputError, match="truncated") as info:
            fmriprep.check_complete(bad, nib.load(bad))
        assert str(bad) in str(info.value)
    short = tmp_path / "short.nii.gz"  # a complete gzip stream that holds too little data
    short.write_bytes(gzip.compress(raw[:-1000]))
    with pytest.raises(MsnetInputError, match="truncated"):
        fmriprep.check_complete(short, nib.load(short))
    plain = tmp_path / "plain.nii"
    nib.save(img, plain)
    fmriprep.check_complete(plain, nib.load(plain))
    plain.write_bytes(plain.read_bytes()[:-1])
    with pytest.raises(MsnetInputError, match="truncated"):
        fmriprep.check_complete(plain, nib.load(plain))


MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
HEAD, ROW, NA_ROW = "\t".join(MOTION), "\t".join(["0.1"] * 6), "\t".join(["n/a"] + ["0.1"] * 5)


@pytest.mark.parametrize("text", [
    f"{HEAD}\n{ROW}\n{ROW}\n",
    f"{HEAD}\n{ROW}\n{ROW}",  # no final newline
    f"{HEAD}\r\n{ROW}\r\n{ROW}\r\n",  # Windows line ends
    f"{HEAD}\n{ROW}\n\n{ROW}\n\n\n",  # blank lines
    f"\n{HEAD}\r\n{ROW}\r\n\r\n{ROW}\r\n{ROW}",  # blank lines, Windows line ends
    f"{HEAD}\n{NA_ROW}\n{ROW}\n{NA_ROW}\n",
])
def test_header_row_count_equals_the_table_reader(tmp_path, text):
    path = tmp_path / "t.tsv"
    path.write_text(text, newline="")
    rows = len(fmriprep.read_confounds(path)[0])
    assert fmriprep.read_confounds_header(path, n_volumes=rows)[0] == MOTION
    with pytest.raises(MsnetInputError, match=f"has {rows} rows"):
        fmriprep.read_confounds_header(path, n_volumes=rows + 1)
    with pytest.raises(MsnetInputError, match=f"has {rows} rows"):
        fmriprep.read_confounds(path, n_volumes=rows + 1)


def test_header_reader_harmonises_legacy_names_like_the_table_reader(tmp_path):
    from test_denoise import LEGACY

    table = full_table(10)
    keep = [c for c in table.columns if c in LEGACY or c.startswith("a_comp_cor")]
    old = table[keep].rename(columns=LEGACY).rename(
        columns={c: f"aCompCor{c[-2:]}" for c in keep if c.startswith("a_comp_cor")})
    old["SomethingElse"] = 1.0
    path = tmp_path / "sub-01_task-rest_desc-confounds_regressors.tsv"
    old.to_csv(path, sep="\t", index=False, na_rep="n/a")
    full, meta = fmriprep.read_confounds(path)
    columns, header_meta = fmriprep.read_confounds_header(path, 10)
    assert set(columns) <= set(full.columns) and "SomethingElse" not in columns
    assert header_meta == meta and "a_comp_cor_00" in meta


# ------------------------------------ strategy columns: msnet's check equals nilearn's


def test_presets_are_nilearns():
    from nilearn.interfaces.fmriprep.load_confounds_strategy import preset_strategies

    for name, ours in denoise.NILEARN_PRESETS.items():
        theirs = preset_strategies[name]
        assert set(ours["strategy"]) == set(theirs["strategy"]), name
        for key, value in ours.items():
            if key != "strategy":
                assert theirs[key] == value, (name, key)
        for key in ("motion", "wm_csf", "compcor", "n_compcor", "ica_aroma", "scrub"):
            assert (key in ours) == (key in theirs), (name, key)


STRATEGIES = {
    "default": {},
    "global_full": {"global_signal": "full", "wm_csf": "power2", "motion": "derivatives"},
    "no_scrub": {"scrub": None, "wm_csf": None},
    "acompcor": {"compcor": "anat_combined"},
    "acompcor_3": {"compcor": "anat_combined", "n_compcor": 3},
    "acompcor_separated": {"compcor": "anat_separated"},
    "tcompcor": {"compcor": "temporal", "n_compcor": 2},
    "t_a_compcor": {"compcor": "temporal_anat_combined"},
    "simple": {"strategy": "simple"},
    "scrubbing": {"strategy": "scrubbing"},
    "compcor": {"strategy": "compcor"},
    "ica_aroma": {"strategy": "ica_aroma"},
}

ALL_ACOMPCOR = [f"a_comp_cor_{i:02d}" for i in range(5)]
TABLE_EDITS = {
    "complete": ([], None),
    "no_csf": (["csf", "csf_derivative1", "csf_power2", "csf_derivative1_power2"], None),
    "no_wm_csf": ([c for c in full_table(3).columns if c.startswith(("csf", "white"))], None),
    "no_global": ([c for c in full_table(3).columns if c.startswith("global")], None),
    "no_global_power": (["global_signal_power2", "global_signal_derivative1_power2"], None),
    "no_fd_dvars": (["framewise_displacement", "dvars", "std_dvars"], None),
    "no_acompcor": (ALL_ACOMPCOR, None),
    "one_acompcor_gone": (["a_comp_cor_02"], None),
    "no_tcompcor": ([f"t_comp_cor_{i:02d}" for i in range(5)], None),
    "no_json": ([], "none"),
    "json_wm_csf_masks": ([], "separated"),
    "no_cosines": ([c for c in full_table(3).columns if c.startswith("cosine")], None),
}


def _edited(edit):
    drop, json_kind = TABLE_EDITS[edit]
    table = full_table(40).drop(columns=drop)
    meta = {**compcor_meta(), **{f"t_comp_cor_{i:02d}": {"Method": "tCompCor"} for i in range(5)}}
    if json_kind == "none":
        meta = None
    elif json_kind == "separated":
        meta = {**{f"a_comp_cor_{i:02d}": {"Method": "aCompCor", "Mask": "WM" if i < 3 else "CSF"}
                   for i in range(5)},
                **{f"t_comp_cor_{i:02d}": {"Method": "tCompCor"} for i in range(5)}}
    return table, meta


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("edit", TABLE_EDITS)
def test_strategy_column_check_agrees_with_nilearn(strategy, edit, tmp_path):
    """msnet's name-only check refuses a table exactly when nilearn's load_confounds does
    (ValueError, or KeyError for a partial set), on the table the job hands it: FD/DVARS and
    the expansions completed by msnet."""
    opts = denoise.resolve_options(STRATEGIES[strategy])
    table, meta = _edited(edit)
    table = pd.concat([table, fmriprep._expansions(table)], axis=1)
    src = tmp_path / "x_desc-confounds_timeseries.tsv"
    try:
        denoise.check_confounds_columns(list(table.columns), meta, opts, src)
        ours = None
    except MsnetInputError as exc:
        ours = str(exc)
    for col in ("framewise_displacement", "dvars", "std_dvars"):  # what the job fills in
        if col not in table:
            table[col] = np.r_[np.nan, np.full(len(table) - 1, 0.1)]
    try:
        denoise.select_confounds(table, meta, opts, src)
        theirs = None
    except (MsnetInputError, KeyError) as exc:
        theirs = repr(exc)
    assert (ours is None) == (theirs is None), (ours, theirs)
    if ours is not None:  # names the table (or its missing JSON sidecar)
        assert str(src) in ours or str(src.with_suffix(".json")) in ours


def test_job_refuses_missing_strategy_columns_before_reading_the_bold(tmp_path, monkeypatch):
    from test_denoise import write_subject

    files = write_subject(tmp_path)
    conf = files.runs[0].confounds
    table = pd.read_csv(conf, sep="\t")
    table.drop(columns=[c for c in table if c.startswith("white_matter")]).to_csv(
        conf, sep="\t", index=False, na_rep="n/a")

    def no_read(*args, **kwargs):
        raise AssertionError("the BOLD was read before the confounds were checked")

    monkeypatch.setattr(denoise, "_read_bold", no_read)
    with pytest.raises(MsnetInputError, match="white_matter") as info:
        denoise.clean_subject(files, {}, {})
    assert str(conf) in str(info.value)
    assert preflight.check_subject(files, None, {}) == [" ".join(str(info.value).split())]


def test_aroma_strategy_needs_the_aroma_bold(tmp_path):
    studies = write_study(tmp_path, n_subjects=2)
    with pytest.raises(MsnetInputErrors) as info:
        build_plan(config_for(studies, denoise={"strategy": "ica_aroma"}))
    assert len(info.value.problems) == 2
    assert all("smoothAROMAnonaggr" in p for p in info.value.problems)


def test_concatenated_runs_need_one_grid_and_one_tr(tmp_path):
    studies = write_study(tmp_path, n_subjects=2)
    func, pid = func_of(tmp_path, 0)
    write_run(func, pid, run="2", tr=2.5)
    func, pid = func_of(tmp_path, 1)
    write_run(func, pid, run="2", shape=(6, 7, 7))
    build_plan(config_for(studies))  # multi_run first: the second runs are not used
    with pytest.raises(MsnetInputErrors) as info:
        build_plan(config_for(studies, data={"mode": "fmriprep", "studies_tsv": str(studies),
                                             "multi_run": "concatenate"}))
    text = str(info.value)
    assert "different repetition times" in text and "sub-0x000" in text
    assert "is not on the grid of" in text and "sub-0x001" in text


def test_lesion_mask_header_is_checked(tmp_path):
    studies = write_study(tmp_path, n_subjects=2)
    part = tmp_path / "study0" / "participants.tsv"
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 5), np.uint8), np.diag([4.0, 4, 4, 1])),
             tmp_path / "lesion.nii.gz")
    part.write_text(part.read_text().replace("\tF\n", "\tF\t../lesion.nii.gz\n", 1)
                    .replace("sex\n", "sex\tlesion_mask\n").replace("\tF\n", "\tF\tn/a\n"))
    with pytest.raises(MsnetInputError, match="Lesion mask .*lesion.nii.gz .*not on the BOLD grid"):
        build_plan(config_for(studies))


def test_an_unforeseen_failure_names_the_subject_and_the_others_are_still_checked(tmp_path,
                                                                                  monkeypatch):
    studies = write_study(tmp_path, n_subjects=3)
    func, pid = func_of(tmp_path, 2)
    next(func.glob("*_bold.json")).write_text('{"RepetitionTime": 9}')
    real = fmriprep.check_complete

    def flaky(path, img):
        if "sub-0x000" in str(path):
            raise RuntimeError("something nobody foresaw")
        return real(path, img)

    monkeypatch.setattr(fmriprep, "check_complete", flaky)
    with pytest.raises(MsnetInputErrors) as info:
        build_plan(config_for(studies))
    problems = info.value.problems
    assert len(problems) == 2
    assert "sub-0x000" in problems[0] and "something nobody foresaw" in problems[0]
    assert "Contradictory" in problems[1] and pid in problems[1]
