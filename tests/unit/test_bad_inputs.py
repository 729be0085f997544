"""A battery of bad inputs (config, tables, fMRIPrep files), each run through the ``msnet``
command as a user would: ``msnet validate`` and/or ``msnet subject`` (the subject job).

Every case must end in one of two documented ways:

- an error (exit status 2) whose message names the file, row or key (``needles``), with no
  traceback and no output written (no partial outputs);
- or, for data the job can only judge from its values, a completed subject whose QC file
  records the exclusion or the repair (``needles`` in the QC record), every output present.

A file problem the preflight can see from headers is checked twice: ``msnet validate`` (the
preflight) and ``msnet subject`` (which skips the preflight, so the job's own checks answer).
"""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from msnet.cli import default_subject_out, main
from msnet.io.plan import subject_outputs

PARTICIPANTS = """participant_id\tgroup\tage\tsex\tdisease_duration\tedss
sub-01\tMS\t35\tF\t5\t2.5
sub-02\tMS\t41\tM\t10\t4.0
sub-03\tHC\t37\tF\tn/a\tn/a
sub-04\tHC\t33\tM\tn/a\tn/a
"""
N_VOLUMES = 130  # 4.3 min at TR 2 s: the base subject passes QC
BOLD = "sub-01_task-rest_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz"
MASK = "sub-01_task-rest_space-MNI152NLin2009cAsym_res-2_desc-brain_mask.nii.gz"
SIDECAR = "sub-01_task-rest_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.json"
CONF = "sub-01_task-rest_desc-confounds_timeseries.tsv"
CONF_JSON = "sub-01_task-rest_desc-confounds_timeseries.json"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One valid study (2 MS, 2 HC) of small fMRIPrep-like runs, copied by every case."""
    from test_denoise import write_subject

    root = tmp_path_factory.mktemp("bad_inputs_base")
    for i, sub in enumerate(["01", "02", "03", "04"]):
        write_subject(root / "fmriprep", sub, n=N_VOLUMES, seed=i)
    (root / "participants.tsv").write_text(PARTICIPANTS)
    (root / "studies.tsv").write_text("study_id\tfmriprep_dir\tparticipants_tsv\n"
                                      "A\tfmriprep\tparticipants.tsv\n")
    return root


class Dataset:
    """A case's copy of the base dataset, with helpers to break it."""

    def __init__(self, root: Path):
        self.root = root
        self.config_path = root / "config.yaml"
        self.config = {"results_dir": str(root / "results"),
                       "data": {"mode": "fmriprep", "studies_tsv": str(root / "studies.tsv")},
                       "connectivity": {"max_vif": None}}  # 4 latent signals: collinear maps
        self.func = root / "fmriprep" / "sub-01" / "func"

    def write_config(self):
        self.config_path.write_text(yaml.safe_dump(self.config))

    def path(self, name: str) -> Path:
        return self.func / name

    def table(self) -> pd.DataFrame:
        return pd.read_csv(self.path(CONF), sep="\t")

    def save_table(self, table: pd.DataFrame):
        table.to_csv(self.path(CONF), sep="\t", index=False, na_rep="n/a")

    def bold(self):
        return nib.load(self.path(BOLD))

    def save_bold(self, data, affine=None, tr=2.0, dtype=np.int16):
        img = nib.Nifti1Image(np.asarray(data).astype(dtype),
                              self.bold().affine if affine is None else affine)
        img.header.set_xyzt_units("mm", "sec")
        if img.ndim == 4:
            img.header["pixdim"][4] = tr
        nib.save(img, self.path(BOLD))

    def edit(self, name, old, new):
        path = self.root / name
        assert old in path.read_text(), (name, old)
        path.write_text(path.read_text().replace(old, new))

    def truncate(self, name, keep=0.6):
        path = self.path(name)
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


@dataclass
class Case:
    """``kind``: ``config``/``table`` (validate, then subject, must fail), ``file`` (the same:
    preflight, then the job's own checks), ``job`` (validate passes; the subject job fails),
    ``recorded`` (validate passes; the job completes and its QC records the needles)."""

    id: str
    kind: str
    mutate: object
    needles: list = field(default_factory=list)


def _config(**changes):
    def mutate(ds):
        for key, value in changes.items():
            section, _, sub = key.partition("__")
            if sub:
                ds.config.setdefault(section, {})[sub] = value
            else:
                ds.config[section] = value
    return mutate


def _raw_config(text):
    def mutate(ds):
        ds.write_config = lambda: ds.config_path.write_text(text)
    return mutate


def _remove(name):
    return lambda ds: ds.path(name).unlink()


def _replace_file(name, data: bytes):
    return lambda ds: ds.path(name).write_bytes(data)


def _mask_grid(shape=None, affine=None):
    def mutate(ds):
        img = nib.load(ds.path(MASK))
        data = np.ones(shape, np.uint8) if shape else np.asarray(img.dataobj)
        nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), ds.path(MASK))
    return mutate


def _affine_shifted(ds):
    affine = ds.bold().affine.copy()
    affine[0, 3] += 8
    return affine


def _lesion(data_fn=None, raw=None):
    def mutate(ds):
        lesion = ds.root / "lesion.nii.gz"
        if raw is not None:
            lesion.write_bytes(raw)
        else:
            mask = nib.load(ds.path(MASK))
            nib.save(nib.Nifti1Image(data_fn(np.asarray(mask.dataobj)), mask.affine), lesion)
        ds.edit("participants.tsv", "edss\n", "edss\tlesion_mask\n")
        ds.edit("participants.tsv", "2.5\n", "2.5\tlesion.nii.gz\n")
        for sub in ("02", "03", "04"):
            text = (ds.root / "participants.tsv").read_text().splitlines()
            text = [line + "\tn/a" if line.startswith(f"sub-{sub}") else line for line in text]
            (ds.root / "participants.tsv").write_text("\n".join(text) + "\n")
    return mutate


def _lesion_truncated(ds):
    _lesion(lambda m: (np.indices(m.shape)[0] == 8).astype(np.uint8))(ds)
    path = ds.root / "lesion.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).integers(0, 2, (16, 18, 16)).astype(np.float32),
                             ds.bold().affine), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _table(fn):
    def mutate(ds):
        ds.save_table(fn(ds.table()))
    return mutate


def _drop(*prefixes):
    return _table(lambda t: t.drop(columns=[c for c in t if c.startswith(prefixes)]))


def _second_run(tr=2.0, shape=None):
    def mutate(ds):
        from test_denoise import write_subject

        write_subject(ds.root / "fmriprep", "01", run="2", n=N_VOLUMES, seed=9)
        bold = ds.func / BOLD.replace("_task-rest_", "_task-rest_run-2_")
        img = nib.load(bold)
        data = np.asarray(img.dataobj)
        if shape:
            data = np.zeros(shape + (N_VOLUMES,), np.int16) + 500
            mask = ds.func / MASK.replace("_task-rest_", "_task-rest_run-2_")
            nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), img.affine), mask)
        new = nib.Nifti1Image(data, img.affine)
        new.header.set_xyzt_units("mm", "sec")
        new.header["pixdim"][4] = tr
        nib.save(new, bold)
        bold.with_name(bold.name.replace(".nii.gz", ".json")).write_text(
            json.dumps({"RepetitionTime": tr}))
        ds.config["data"]["multi_run"] = "concatenate"
    return mutate


def _bold_data(fn, dtype=np.int16):
    def mutate(ds):
        ds.save_bold(fn(np.asarray(ds.bold().dataobj).astype(np.float64), ds), dtype=dtype)
    return mutate


def _flat_part(data, ds):
    mask = np.asarray(nib.load(ds.path(MASK)).dataobj) > 0
    flat = mask & (np.indices(mask.shape)[0] < 8)  # half the brain constant over time
    data[flat] = 500
    return data


def _nan_inside(data, ds):
    data[8, 9, 8, 10:20] = np.nan
    return data


def _damaged_affine(ds):
    """A BOLD whose header's sform holds NaN (nibabel refuses to write one)."""
    import gzip
    import struct

    raw = bytearray(gzip.decompress(ds.path(BOLD).read_bytes()))
    struct.pack_into("<hh", raw, 252, 0, 1)  # qform_code unknown, sform_code scanner
    struct.pack_into("<4f", raw, 280, *[np.nan] * 4)  # srow_x
    ds.path(BOLD).write_bytes(gzip.compress(bytes(raw)))


def _patched_dims(dims):
    """A BOLD whose header's dim field is rewritten (as a damaged copy would have it)."""
    def mutate(ds):
        import gzip
        import struct

        raw = bytearray(gzip.decompress(ds.path(BOLD).read_bytes()))
        struct.pack_into("<8h", raw, 40, len(dims), *dims, *([1] * (7 - len(dims))))
        ds.path(BOLD).write_bytes(gzip.compress(bytes(raw)))
    return mutate


def _sidecar(text):
    return lambda ds: ds.path(SIDECAR).write_text(text)


def _no_tr(ds):
    ds.save_bold(np.asarray(ds.bold().dataobj), tr=0.0)
    ds.path(SIDECAR).write_text("{}")


def _second_resolution(ds):
    for name in (BOLD, MASK):
        shutil.copy(ds.path(name), ds.path(name.replace("res-2", "res-3")))


def _tied_confounds(ds):
    shutil.copy(ds.path(CONF), ds.path(CONF.replace("timeseries", "regressors")))


def _rows(n):
    def fn(t):
        return pd.concat([t] * 2).iloc[:n] if n > len(t) else t.iloc[:n]
    return _table(fn)


def _na_column(col, rows=None):
    def fn(t):
        t[col] = t[col].astype(float)
        t.loc[t.index if rows is None else rows, col] = np.nan
        return t
    return _table(fn)


def _text_cell(t):
    t["csf"] = t["csf"].astype(object)
    t.loc[7, "csf"] = "abc"
    return t


def _participant_row(old, new):
    return lambda ds: ds.edit("participants.tsv", old, new)


def _studies(text):
    return lambda ds: (ds.root / "studies.tsv").write_text(text)


def _short_run(ds):
    from test_denoise import write_subject

    shutil.rmtree(ds.func.parent)
    write_subject(ds.root / "fmriprep", "01", n=30)


def _tsv_bytes(name, data: bytes):
    return lambda ds: (ds.root / name).write_bytes(data)


STUDIES_HEAD = "study_id\tfmriprep_dir\tparticipants_tsv"
GOOD_STUDY = "A\tfmriprep\tparticipants.tsv"

CASES = [
    # ------------------------------------------------------------------------ config
    Case("config-unknown-key", "config", _config(simulat={}), ["simulat"]),
    Case("config-bad-mode", "config", _config(data__mode="bids"), ["data.mode", "bids"]),
    Case("config-fmriprep-without-studies", "config", _config(data__studies_tsv=None), ["studies_tsv"]),
    Case("config-negative-tr", "config", _config(simulate={"tr": -1}), ["simulate.tr", "-1"]),
    Case("config-seed-text", "config", _config(seed="abc"), ["seed", "abc"]),
    Case("config-lowpass-below-highpass", "config", _config(denoise={"low_pass": 0.005}), ["denoise.low_pass"]),
    Case("config-unknown-strategy", "config", _config(denoise={"strategy": "fancy"}), ["denoise.strategy", "fancy"]),
    Case("config-negative-smoothing", "config", _config(denoise={"smoothing_fwhm": -2}), ["denoise.smoothing_fwhm"]),
    Case("config-empty-file", "config", _raw_config(""), ["config.yaml"]),
    Case("config-invalid-yaml", "config", _raw_config("data: [unclosed\n"), ["config.yaml", "YAML"]),
    Case("config-duplicate-key", "config", _raw_config("seed: 1\nseed: 2\n"), ["seed", "twice"]),
    Case("config-top-level-list", "config", _raw_config("- a\n- b\n"), ["config.yaml", "top level"]),
    Case("config-empty-results-dir", "config", _config(results_dir=""), ["results_dir"]),
    Case("config-studies-with-simulate", "config", _config(data__mode="simulate"), ["studies_tsv", "simulate"]),
    Case("config-unknown-covariate", "config", _config(group={"covariates": ["age", "bmi"]}), ["bmi"]),
    Case("config-voxelwise-not-in-variables", "config",
         _config(clinical={"variables": ["edss"], "voxelwise_variables": ["disease_duration"]}),
         ["voxelwise_variables", "disease_duration"]),
    Case("config-unknown-clinical-variable", "config", _config(clinical={"variables": ["bmi"]}), ["clinical.variables", "bmi"]),
    Case("config-negative-fd", "config", _config(qc={"max_mean_fd": -1}), ["qc.max_mean_fd"]),
    Case("config-permutations-text", "config", _config(group={"n_permutations": "many"}), ["n_permutations", "many"]),
    Case("config-on-missing-unknown", "config", _config(data__on_missing="skip"), ["on_missing", "skip"]),
    Case("config-studies-tsv-missing", "config", _config(data__studies_tsv="/nonexistent/studies.tsv"),
         ["/nonexistent/studies.tsv"]),
    Case("config-results-dir-unwritable", "config",
         lambda ds: (ds.root / "afile").write_text("") or ds.config.update(results_dir=str(ds.root / "afile" / "results")),
         ["afile"]),
    # ----------------------------------------------------------------- studies.tsv
    Case("studies-missing-column", "table", _studies("study_id\tparticipants_tsv\nA\tparticipants.tsv\n"),
         ["studies.tsv", "fmriprep_dir"]),
    Case("studies-duplicate-id", "table", _studies(f"{STUDIES_HEAD}\n{GOOD_STUDY}\n{GOOD_STUDY}\n"),
         ["studies.tsv", "duplicate study_id"]),
    Case("studies-bad-id", "table", _studies(f"{STUDIES_HEAD}\nA-1\tfmriprep\tparticipants.tsv\n"),
         ["studies.tsv", "row 1", "A-1"]),
    Case("studies-folder-missing", "table", _studies(f"{STUDIES_HEAD}\nA\tnowhere\tparticipants.tsv\n"),
         ["studies.tsv", "row 1", "nowhere"]),
    Case("studies-participants-missing", "table", _studies(f"{STUDIES_HEAD}\nA\tfmriprep\tnone.tsv\n"),
         ["none.tsv"]),
    Case("studies-comma-separated", "table", _studies("study_id,fmriprep_dir,participants_tsv\nA,fmriprep,participants.tsv\n"),
         ["studies.tsv", "comma"]),
    Case("studies-zero-bytes", "table", _studies(""), ["studies.tsv", "empty"]),
    Case("studies-header-only", "table", _studies(STUDIES_HEAD + "\n"), ["studies.tsv", "no rows"]),
    Case("studies-bad-space-resolution", "table",
         _studies(f"{STUDIES_HEAD}\tspace\n{GOOD_STUDY}\tMNI152NLin2009cAsym:2\n"), ["res-2"]),
    Case("studies-task-without-runs", "table", _studies(f"{STUDIES_HEAD}\ttask\n{GOOD_STUDY}\tmotor\n"),
         ["sub-01", "task-motor"]),
    Case("studies-empty-required-cell", "table", _studies(f"{STUDIES_HEAD}\nA\t\tparticipants.tsv\n"),
         ["studies.tsv", "row 1", "fmriprep_dir"]),
    # ------------------------------------------------------------ participants.tsv
    Case("participants-edss-12", "table", _participant_row("10\t4.0", "10\t12"), ["participants.tsv", "row 2", "edss"]),
    Case("participants-edss-step", "table", _participant_row("10\t4.0", "10\t4.3"), ["participants.tsv", "row 2", "edss"]),
    Case("participants-group-patient", "table", _participant_row("sub-01\tMS", "sub-01\tpatient"), ["participants.tsv", "row 1", "group"]),
    Case("participants-sex-male", "table", _participant_row("sub-04\tHC\t33\tM", "sub-04\tHC\t33\tmale"), ["participants.tsv", "row 4", "sex"]),
    Case("participants-age-text", "table", _participant_row("sub-03\tHC\t37", "sub-03\tHC\tthirty"), ["participants.tsv", "row 3", "age"]),
    Case("participants-age-200", "table", _participant_row("sub-03\tHC\t37", "sub-03\tHC\t200"), ["participants.tsv", "row 3", "age"]),
    Case("participants-duration-negative", "table", _participant_row("sub-01\tMS\t35\tF\t5", "sub-01\tMS\t35\tF\t-5"),
         ["participants.tsv", "row 1", "disease_duration"]),
    Case("participants-duplicate-id", "table", _participant_row("sub-02\t", "sub-01\t"), ["participants.tsv", "duplicate participant_id sub-01"]),
    Case("participants-id-without-prefix", "table", _participant_row("sub-01\t", "01\t"), ["participants.tsv", "row 1", "participant_id"]),
    Case("participants-clinical-for-hc", "table", _participant_row("sub-03\tHC\t37\tF\tn/a", "sub-03\tHC\t37\tF\t3"),
         ["participants.tsv", "row 3", "healthy control"]),
    Case("participants-no-hc", "table", _participant_row("\tHC\t", "\tMS\t"), ["participants.tsv", "healthy control"]),
    Case("participants-no-ms", "table", lambda ds: ds.edit("participants.tsv", "sub-01\tMS", "sub-01\tHC")
         or ds.edit("participants.tsv", "sub-02\tMS", "sub-02\tHC")
         or ds.edit("participants.tsv", "5\t2.5", "n/a\tn/a") or ds.edit("participants.tsv", "10\t4.0", "n/a\tn/a"),
         ["participants.tsv", "MS"]),
    Case("participants-missing-group-column", "table",
         lambda ds: (ds.root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t30\tF\n"),
         ["participants.tsv", "group"]),
    Case("participants-empty-group-cell", "table", _participant_row("sub-02\tMS", "sub-02\t"), ["participants.tsv", "row 2", "group"]),
    Case("participants-zero-bytes", "table", _tsv_bytes("participants.tsv", b""), ["participants.tsv", "empty"]),
    Case("participants-comma-separated", "table",
         lambda ds: (ds.root / "participants.tsv").write_text(PARTICIPANTS.replace("\t", ",")),
         ["participants.tsv", "comma"]),
    Case("participants-phenotype-unknown", "table",
         lambda ds: (ds.root / "participants.tsv").write_text(
             PARTICIPANTS.replace("edss\n", "edss\tphenotype\n").replace("2.5\n", "2.5\tRR\n")
             .replace("4.0\n", "4.0\tRRMS\n").replace("n/a\tn/a\n", "n/a\tn/a\tn/a\n")),
         ["participants.tsv", "row 1", "phenotype", "RR"]),
    Case("participants-row-without-data", "table", _participant_row("sub-04\tHC\t33\tM\tn/a\tn/a\n",
                                                                   "sub-04\tHC\t33\tM\tn/a\tn/a\nsub-05\tHC\t30\tF\tn/a\tn/a\n"),
         ["sub-05", "on_missing"]),
    Case("participants-data-without-row", "table", _participant_row("sub-04\tHC\t33\tM\tn/a\tn/a\n", ""),
         ["sub-04", "no row in participants.tsv"]),
    Case("participants-lesion-path-missing", "table",
         lambda ds: (ds.root / "participants.tsv").write_text(
             PARTICIPANTS.replace("edss\n", "edss\tlesion_mask\n").replace("2.5\n", "2.5\tnone.nii.gz\n")
             .replace("4.0\n", "4.0\tn/a\n").replace("n/a\tn/a\n", "n/a\tn/a\tn/a\n")),
         ["participants.tsv", "lesion_mask", "none.nii.gz"]),
    Case("participants-not-text", "table", _tsv_bytes("participants.tsv", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"),
         ["participants.tsv"]),
    # ---------------------------------------------------------------- fMRIPrep files
    Case("file-no-brain-mask", "file", _remove(MASK), ["No brain mask", BOLD]),
    Case("file-no-confounds", "file", _remove(CONF), ["No confounds table", BOLD]),
    Case("file-two-confounds-tables", "file", _tied_confounds, ["Several confounds tables", "sub-01"]),
    Case("file-two-resolutions", "file", _second_resolution, ["several resolutions", "res-3"]),
    Case("file-bold-3d", "file", lambda ds: ds.save_bold(np.ones((16, 18, 16))), [BOLD, "4-D"]),
    Case("file-bold-one-volume", "file", lambda ds: ds.save_bold(np.ones((16, 18, 16, 1))), [BOLD, "at least two volumes"]),
    Case("file-bold-truncated", "file", lambda ds: ds.truncate(BOLD), [BOLD, "truncated"]),
    Case("file-bold-garbage", "file", _replace_file(BOLD, b"this is not a nifti file" * 20), [BOLD, "NIfTI"]),
    Case("file-bold-zero-bytes", "file", _replace_file(BOLD, b""), [BOLD]),
    Case("file-bold-affine-nan", "file", _damaged_affine, [BOLD, "affine"]),
    Case("file-bold-negative-dim", "file", _patched_dims((-16, 18, 16, N_VOLUMES)), [BOLD, "4-D"]),
    Case("file-bold-header-larger-than-data", "file",  # the confounds table has as many rows
         lambda ds: _patched_dims((16, 18, 16, 2 * N_VOLUMES))(ds) or _rows(2 * N_VOLUMES)(ds),
         [BOLD, "truncated"]),
    Case("file-sidecar-tr-contradicts", "file", _sidecar('{"RepetitionTime": 2.5}'), [SIDECAR, "Contradictory repetition time"]),
    Case("file-sidecar-invalid-json", "file", _sidecar("{RepetitionTime: 2"), [SIDECAR, "JSON"]),
    Case("file-sidecar-tr-text", "file", _sidecar('{"RepetitionTime": "2s"}'), [SIDECAR, "positive number"]),
    Case("file-sidecar-tr-negative", "file", _sidecar('{"RepetitionTime": -2}'), [SIDECAR, "positive number"]),
    Case("file-no-tr-anywhere", "file", _no_tr, [BOLD, "RepetitionTime"]),
    Case("file-mask-other-shape", "file", _mask_grid(shape=(16, 18, 15)), [MASK, "different grids"]),
    Case("file-mask-other-affine", "file", lambda ds: _mask_grid(affine=_affine_shifted(ds))(ds), [MASK, "different affines"]),
    Case("file-mask-truncated", "file", lambda ds: ds.truncate(MASK, 0.9), [MASK, "truncated"]),
    Case("file-mask-cut-in-header", "file", lambda ds: ds.truncate(MASK, 0.2), [MASK, "Re-copy"]),
    Case("file-mask-garbage", "file", _replace_file(MASK, b"garbage" * 50), [MASK]),
    Case("file-lesion-other-grid", "file", _lesion(raw=None, data_fn=lambda m: np.zeros((16, 18, 15), np.uint8)),
         ["lesion.nii.gz", "not on the BOLD grid"]),
    Case("file-lesion-garbage", "file", _lesion(raw=b"garbage" * 50), ["lesion.nii.gz"]),
    Case("file-lesion-truncated", "file", _lesion_truncated, ["lesion.nii.gz", "truncated"]),
    Case("file-confounds-fewer-rows", "file", _rows(N_VOLUMES - 10), [CONF, f"has {N_VOLUMES - 10} rows"]),
    Case("file-confounds-more-rows", "file", _rows(N_VOLUMES + 5), [CONF, f"has {N_VOLUMES + 5} rows"]),
    Case("file-confounds-zero-bytes", "file", _replace_file(CONF, b""), [CONF]),
    Case("file-confounds-not-text", "file", _replace_file(CONF, b"\xff\xfe\x00\x01" * 100), [CONF]),
    Case("file-confounds-not-fmriprep", "file",
         _table(lambda t: pd.DataFrame({"motion1": t["trans_x"], "motion2": t["trans_y"]})),
         [CONF, "not an fMRIPrep confounds table"]),
    Case("file-confounds-no-white-matter", "file", _drop("white_matter"), [CONF, "white_matter"]),
    Case("file-confounds-one-motion-column", "file", _drop("rot_z"), [CONF, "rot_z"]),
    Case("file-confounds-no-global-signal", "file",
         lambda ds: _drop("global_signal")(ds) or _config(denoise={"global_signal": "basic"})(ds),
         [CONF, "global_signal"]),
    Case("file-compcor-without-json", "file", _config(denoise={"compcor": "anat_combined"}), [CONF_JSON, "CompCor"]),
    Case("file-confounds-json-invalid", "file",
         lambda ds: ds.path(CONF_JSON).write_text("{not json"), [CONF_JSON]),
    Case("file-confounds-json-list", "file", lambda ds: ds.path(CONF_JSON).write_text("[1, 2]"), [CONF_JSON, "JSON object"]),
    Case("file-aroma-bold-missing", "file", _config(denoise={"strategy": "ica_aroma"}), ["smoothAROMAnonaggr"]),
    Case("file-runs-different-tr", "file", _second_run(tr=2.5), ["sub-01", "different repetition times"]),
    Case("file-runs-different-grid", "file", _second_run(shape=(16, 18, 15)), ["run-2", "not on the grid of"]),
    # ------------------------------------------ values: only the subject job can judge
    Case("job-confounds-text-cell", "job", _table(_text_cell), [CONF, "csf", "abc"]),
    Case("job-all-na-confound-column", "job", _na_column("white_matter"), [CONF, "white_matter", "n/a"]),
    Case("job-motion-na-mid-run", "job",
         lambda ds: _na_column("trans_x", rows=[40])(ds) or _na_column("framewise_displacement", rows=[40])(ds),
         [CONF, "n/a", "40"]),
    Case("job-empty-brain-mask", "job",
         lambda ds: nib.save(nib.Nifti1Image(np.zeros((16, 18, 16), np.uint8), ds.bold().affine), ds.path(MASK)),
         [MASK, "empty"]),
    Case("job-lesion-covers-brain", "job", _lesion(lambda m: np.ones(m.shape, np.uint8)), ["sub-01", "lesion"]),
    Case("recorded-fd-na-mid-run", "recorded", _na_column("framewise_displacement", rows=[50, 51]), ['"fd_na_volumes": [50, 51]', '"fd_source": "nipype"']),
    Case("recorded-all-zero-bold", "recorded", _bold_data(lambda d, ds: d * 0), ["no signal"]),
    Case("recorded-partly-flat-bold", "recorded", _bold_data(_flat_part), ["flat", "max_pct_flat_voxels"]),
    Case("job-nan-in-bold", "job", _bold_data(_nan_inside, dtype=np.float32), [BOLD, "NaN", "volume 10"]),
    Case("recorded-30-volume-run", "recorded", _short_run, [BOLD, "Butterworth filter needs"]),
]


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _files(folder: Path) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_battery_is_large_and_distinct():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    kinds = {c.id.split("-")[0] for c in CASES}
    assert {"config", "studies", "participants", "file"} <= kinds


def test_base_dataset_is_valid_and_its_subject_included(base, tmp_path, capsys):
    ds = Dataset(tmp_path / "d")
    shutil.copytree(base, ds.root)
    ds.write_config()
    code, out, err = _run(capsys, "validate", "--config", str(ds.config_path))
    assert code == 0, err
    code, out, err = _run(capsys, "subject", "--config", str(ds.config_path), "--study", "A",
                          "--participant", "sub-01")
    assert code == 0, err
    qc = json.loads(Path(subject_outputs(default_subject_out(ds.config["results_dir"]), "A",
                                         "01")["qc"]).read_text())
    assert qc["include"], qc["exclusion_reason"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, base, tmp_path, capsys):
    ds = Dataset(tmp_path / "d")
    shutil.copytree(base, ds.root)
    case.mutate(ds)
    ds.write_config()
    results = Path(ds.config["results_dir"] or ds.root / "results")
    code, out, err = _run(capsys, "validate", "--config", str(ds.config_path))
    if case.kind in ("config", "table", "file"):
        assert code == 2, f"msnet validate accepted it: {out}"
        for needle in case.needles:
            assert needle in err, (needle, err)
        assert "Traceback" not in err
        assert _files(results) == []
    else:
        assert code == 0, err
    if case.kind == "config":
        return
    code, out, err = _run(capsys, "subject", "--config", str(ds.config_path), "--study", "A",
                          "--participant", "sub-01")
    outputs = subject_outputs(default_subject_out(results), "A", "01")
    if case.kind in ("table", "file", "job"):
        assert code == 2, f"the subject job accepted it: {out}"
        for needle in case.needles:
            assert needle in err, (needle, err)
        assert "Traceback" not in err
        assert _files(results) == [], "partial outputs left behind"
    else:
        assert code == 0, err
        for path in [outputs["qc"], *outputs["maps"].values(), outputs["timeseries"],
                     outputs["relmat"], outputs["networks"]]:
            assert Path(path).is_file(), path
        qc = json.loads(Path(outputs["qc"]).read_text())
        text = json.dumps(qc)
        for needle in case.needles:
            assert needle in text, (needle, qc.get("exclusion_reason"))
        if case.id != "recorded-fd-na-mid-run":
            assert qc["include"] is False and qc["exclusion_reason"]
