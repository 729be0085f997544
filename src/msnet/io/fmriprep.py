"""Find and read fMRIPrep derivatives: BOLD runs, brain masks, confounds tables, TR.

File naming follows the BIDS-derivatives layout fMRIPrep writes (>= 1.2)::

    sub-<label>/[ses-<s>/]func/sub-<label>[_ses-<s>]_task-<t>[_acq-..][_run-<n>]
        _space-<space>[_res-<r>]_desc-preproc_bold.nii.gz   (+ .json sidecar)
        _space-<space>[_res-<r>]_desc-brain_mask.nii.gz
    sub-<label>[_ses-<s>]_task-<t>[_acq-..][_run-<n>]_desc-confounds_timeseries.tsv  (>= 20.2)
                                                  _desc-confounds_regressors.tsv  (1.2 - 20.1)

The confounds table of a run is the ``desc-confounds`` TSV in the BOLD's folder whose
entities are a subset of the BOLD's (space/res/cohort/den dropped), as
``nilearn.interfaces.fmriprep.load_confounds`` looks for it; where nilearn refuses several
matching tables, the most specific one (most entities) wins here and only a tie is an error.

Confounds column names of fMRIPrep 1.0-1.1 (camelCase) are renamed to the current names
(:data:`LEGACY_CONFOUND_COLUMNS`); nilearn's ``load_confounds`` refuses such tables, so msnet
harmonises every table itself (:func:`read_confounds`) before handing it to nilearn.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from msnet.errors import MsnetInputError, MsnetInputErrors

LEGACY_CONFOUND_COLUMNS = {
    "X": "trans_x",
    "Y": "trans_y",
    "Z": "trans_z",
    "RotX": "rot_x",
    "RotY": "rot_y",
    "RotZ": "rot_z",
    "FramewiseDisplacement": "framewise_displacement",
    "stdDVARS": "std_dvars",
    "non-stdDVARS": "dvars",
    "vx-wisestdDVARS": "vx_wise_std_dvars",
    "GlobalSignal": "global_signal",
    "CSF": "csf",
    "WhiteMatter": "white_matter",
}
"""fMRIPrep 1.0-1.1 confounds column -> current (>= 1.2) name. Numbered columns follow
:data:`LEGACY_NUMBERED_COLUMNS`. ``vx-wisestdDVARS`` has no current counterpart and is kept
under a snake-case name so nilearn accepts the table."""

LEGACY_NUMBERED_COLUMNS = {
    "aCompCor": "a_comp_cor_",
    "tCompCor": "t_comp_cor_",
    "Cosine": "cosine_",
    "NonSteadyStateOutlier": "non_steady_state_outlier_",
    "AROMAAggrComp": "aroma_motion_",
}
"""fMRIPrep 1.0-1.1 numbered column prefix -> current prefix (``aCompCor03`` ->
``a_comp_cor_03``)."""

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
"""The six rigid-body parameters in fMRIPrep's order: translations (mm), rotations (rad)."""

EXPANDABLE_COLUMNS = MOTION_COLUMNS + ("csf", "white_matter", "global_signal")
"""Columns for which fMRIPrep writes ``_derivative1``, ``_power2`` and
``_derivative1_power2`` expansions (filled in by :func:`read_confounds` when absent)."""

_CONFOUND_SUFFIXES = ("timeseries", "regressors")
_SPACE_ENTITIES = ("space", "res", "cohort", "den")
_EXTENSIONS = (".nii.gz", ".nii", ".tsv", ".json")


@dataclass(frozen=True)
class RunFiles:
    """The files of one fMRIPrep BOLD run."""

    bold: Path
    mask: Path
    confounds: Path
    sidecar: Path | None


@dataclass(frozen=True)
class SubjectFiles:
    """The runs used for one participant and their common repetition time (s)."""

    participant_id: str
    runs: tuple[RunFiles, ...]
    tr: float | None  # None when found without reading headers (the plan's fast path)


class _NoSubjectData(MsnetInputError):
    """A participant has no BOLD run for the requested task and space."""


def parse_bids_name(path) -> tuple[dict, str, str]:
    """Split a BIDS file name into entities, suffix and extension.

    Parameters
    ----------
    path : str or Path
        File path; only the name is parsed.

    Returns
    -------
    entities : dict
        ``{"sub": "01", "task": "rest", ...}`` in file order.
    suffix : str
        The last ``_``-separated token (``bold``, ``mask``, ``timeseries`` ...).
    extension : str
        ``.nii.gz``, ``.nii``, ``.tsv``, ``.json`` or ``""``.
    """
    name = Path(path).name
    ext = next((e for e in _EXTENSIONS if name.endswith(e)), "")
    tokens = name[: len(name) - len(ext)].split("_")
    entities = {}
    for tok in tokens[:-1]:
        key, sep, value = tok.partition("-")
        if sep:
            entities[key] = value
    return entities, tokens[-1], ext


def _normalise_participant(participant_id) -> str:
    pid = str(participant_id).strip()
    return pid if pid.startswith("sub-") else f"sub-{pid}"


def _parse_space(space: str) -> tuple[str, str | None]:
    """``"MNI152NLin2009cAsym:res-2"`` -> ``("MNI152NLin2009cAsym", "2")``."""
    name, _, res = str(space).partition(":")
    if res and not res.startswith("res-"):
        raise MsnetInputError(
            f"space {space!r}: the part after ':' must be a resolution such as 'res-2' "
            "(fMRIPrep's notation, e.g. 'MNI152NLin2009cAsym:res-2')."
        )
    return name, res[4:] or None


def _func_dirs(subject_dir: Path) -> list[Path]:
    return [d for d in [subject_dir / "func", *sorted(subject_dir.glob("ses-*/func"))] if d.is_dir()]


def _run_sort_key(entities: dict) -> tuple:
    run = entities.get("run", "")
    return (
        entities.get("ses", ""),
        int(run) if run.isdigit() else -1,
        run,
        tuple(sorted(entities.items())),
    )


def _find_bold_files(subject_dir: Path, label: str, task: str, space: str) -> list[Path]:
    """Return the preprocessed BOLD files of one subject for ``task``/``space``, run order."""
    space_name, res = _parse_space(space)
    found = []
    for func in _func_dirs(subject_dir):
        for path in func.glob(f"{label}_*_desc-preproc_bold.nii*"):
            ent, suffix, ext = parse_bids_name(path)
            if (
                suffix == "bold"
                and ext in (".nii.gz", ".nii")
                and ent.get("task") == task
                and ent.get("space") == space_name
                and ent.get("desc") == "preproc"
                and (res is None or ent.get("res") == res)
            ):
                found.append(path)
    by_run = {}
    for path in found:
        ent, _, _ = parse_bids_name(path)
        key = tuple(sorted((k, v) for k, v in ent.items() if k not in ("res", "cohort")))
        by_run.setdefault(key, []).append(path)
    for paths in by_run.values():
        if len(paths) > 1:
            names = ", ".join(p.name for p in sorted(paths))
            raise MsnetInputError(
                f"{subject_dir}: several resolutions of the same run ({names}). "
                f"Choose one with the study's space, e.g. '{space_name}:res-2'."
            )
    return sorted(found, key=lambda p: _run_sort_key(parse_bids_name(p)[0]))


def _find_confounds(bold: Path) -> Path:
    """Return the confounds TSV of a BOLD run (see the module docstring for the rule)."""
    bold_ent, _, _ = parse_bids_name(bold)
    wanted = {k: v for k, v in bold_ent.items() if k not in _SPACE_ENTITIES and k != "desc"}
    candidates = []
    for path in bold.parent.glob(f"sub-{bold_ent['sub']}_*desc-confounds_*.tsv"):
        ent, suffix, _ = parse_bids_name(path)
        other = {k: v for k, v in ent.items() if k != "desc"}
        if (
            ent.get("desc") == "confounds"
            and suffix in _CONFOUND_SUFFIXES
            and all(wanted.get(k) == v for k, v in other.items())
        ):
            candidates.append((len(other), path))
    if not candidates:
        stem = "_".join(f"{k}-{v}" for k, v in wanted.items())
        raise MsnetInputError(
            f"No confounds table for {bold}: expected {bold.parent / stem}"
            "_desc-confounds_timeseries.tsv (fMRIPrep >= 20.2) or ..._desc-confounds_regressors.tsv "
            "(fMRIPrep 1.2-20.1) beside it. Copy the complete fMRIPrep func/ folder."
        )
    candidates.sort(key=lambda c: -c[0])
    best = [p for n, p in candidates if n == candidates[0][0]]
    if len(best) > 1:
        names = ", ".join(p.name for p in sorted(best))
        raise MsnetInputError(
            f"Several confounds tables match {bold.name} in {bold.parent}: {names}. "
            "Keep the one fMRIPrep wrote for this run."
        )
    return best[0]


def _run_files(bold: Path) -> RunFiles:
    name = bold.name
    ext = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
    stem = name[: -len(ext)]
    mask_stem = stem.replace("_desc-preproc_bold", "_desc-brain_mask")
    masks = [bold.with_name(mask_stem + e) for e in (".nii.gz", ".nii")]
    mask = next((m for m in masks if m.is_file()), None)
    if mask is None:
        raise MsnetInputError(
            f"No brain mask for {bold}: expected {masks[0]}. fMRIPrep writes it beside the BOLD; "
            "copy it (or rerun fMRIPrep for this subject)."
        )
    sidecar = bold.with_name(stem + ".json")
    return RunFiles(
        bold=bold,
        mask=mask,
        confounds=_find_confounds(bold),
        sidecar=sidecar if sidecar.is_file() else None,
    )


def read_tr(run: RunFiles, header=None) -> float:
    """Return the repetition time (s) of a run, cross-checked between sidecar and header.

    Parameters
    ----------
    run : RunFiles
        The run; ``run.sidecar`` may be None.
    header : nibabel header, optional
        The BOLD's header when the caller has already read it (the preflight does).

    Returns
    -------
    float
        ``RepetitionTime`` from the JSON sidecar, or the NIfTI header's ``pixdim[4]``
        (converted from ms/us when ``xyzt_units`` says so) when there is no sidecar value.

    Raises
    ------
    MsnetInputError
        If the two disagree (relative difference > 0.1 %), if the sidecar value is not a
        positive number, or if neither gives a TR.
    """
    import nibabel as nib

    header_tr = None
    try:
        hdr = nib.load(run.bold).header if header is None else header
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise MsnetInputError(f"Cannot read the NIfTI header of {run.bold}: {exc}") from exc
    zooms = hdr.get_zooms()
    if len(zooms) > 3 and float(zooms[3]) > 0:
        unit = hdr.get_xyzt_units()[1]
        header_tr = float(zooms[3]) * {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
    sidecar_tr = None
    if run.sidecar is not None:
        try:
            meta = json.loads(Path(run.sidecar).read_text())
        except (OSError, ValueError) as exc:
            raise MsnetInputError(f"Cannot read the JSON sidecar {run.sidecar}: {exc}") from exc
        value = meta.get("RepetitionTime") if isinstance(meta, dict) else None
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise MsnetInputError(
                    f"{run.sidecar}: RepetitionTime must be a positive number of seconds, got {value!r}."
                )
            sidecar_tr = float(value)
    if sidecar_tr is None and header_tr is None:
        raise MsnetInputError(
            f"No repetition time for {run.bold}: the JSON sidecar "
            f"({run.sidecar or 'missing'}) has no RepetitionTime and the NIfTI header's pixdim[4] is 0. "
            "Add RepetitionTime (seconds) to the sidecar."
        )
    if sidecar_tr is not None and header_tr is not None:
        if not np.isclose(sidecar_tr, header_tr, rtol=1e-3, atol=1e-4):
            raise MsnetInputError(
                f"Contradictory repetition time: RepetitionTime={sidecar_tr} s in {run.sidecar} "
                f"but pixdim[4]={header_tr} s in the header of {run.bold}. "
                "Fix whichever is wrong (the scanner's value is in the raw BIDS sidecar)."
            )
    return sidecar_tr if sidecar_tr is not None else header_tr

# ------------------------------------------------------------------ image headers
# Header-level checks of the images of a run, shared by the subject job
# (:func:`msnet.denoise.clean_subject`) and the preflight (:mod:`msnet.io.preflight`): the
# image is opened lazily by nibabel, no voxel data is read.


def _load_image(path, what: str):
    import nibabel as nib

    try:
        return nib.load(path)
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise MsnetInputError(
            f"Cannot read {what} {path} as NIfTI: {exc}. Re-copy it from the fMRIPrep output."
        ) from None


def _check_affine(path, img, what: str) -> None:
    affine = np.asarray(img.affine, dtype=float)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise MsnetInputError(
            f"{what} {path} has an unusable affine (voxel-to-world matrix not finite or "
            "singular): its header is damaged. Re-copy it from the fMRIPrep output."
        )


def open_bold(path):
    """Open a BOLD run lazily (header only) and check it is a 4-D NIfTI time series.

    Returns
    -------
    nibabel.Nifti1Image
        The image; its data is not read.

    Raises
    ------
    MsnetInputError
        Unreadable, not NIfTI, not 4-D with at least two volumes, or a damaged affine.
    """
    import nibabel as nib

    img = _load_image(path, "BOLD run")
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise MsnetInputError(f"{path}: expected a NIfTI image, got {type(img).__name__}.")
    shape = img.shape
    if len(shape) != 4 or shape[3] < 2 or min(shape) < 1:
        raise MsnetInputError(
            f"{path} has shape {shape}: a BOLD run must be a 4-D time series with at least two "
            "volumes. Use fMRIPrep's desc-preproc_bold output."
        )
    _check_affine(path, img, "BOLD run")
    return img


def open_mask(path, shape, affine, bold):
    """Open a brain mask lazily and check it is on its BOLD's grid (shape and affine).

    Parameters
    ----------
    path : str or Path
        The ``desc-brain_mask`` image.
    shape, affine
        The BOLD's spatial shape (3 values) and affine.
    bold : str or Path
        The BOLD, for messages.

    Returns
    -------
    nibabel image
        The mask; its data is not read.
    """
    img = _load_image(path, "brain mask")
    if img.shape[:3] != tuple(shape) or len(img.shape) > 3 and np.prod(img.shape[3:]) != 1:
        raise MsnetInputError(
            f"Brain mask {path} (shape {img.shape}) and BOLD {bold} (shape {tuple(shape)}) are on "
            "different grids; use the mask fMRIPrep wrote for this BOLD and space."
        )
    if not np.allclose(img.affine, affine, atol=1e-3):
        raise MsnetInputError(
            f"Brain mask {path} and BOLD {bold} have different affines (different grids); "
            "use the mask fMRIPrep wrote for this BOLD and space."
        )
    return img


def open_lesion_mask(lesion_mask, shape, affine):
    """Open a lesion mask (path or image) lazily and check it is on the BOLD grid.

    Returns
    -------
    nibabel image
        The lesion mask; its data is not read.
    """
    name = lesion_mask if isinstance(lesion_mask, (str, Path)) else "the lesion mask image"
    img = _load_image(lesion_mask, "lesion mask") if isinstance(lesion_mask, (str, Path)) else lesion_mask
    if (img.shape[:3] != tuple(shape) or np.prod(img.shape[3:], dtype=int) != 1
            or not np.allclose(img.affine, affine, atol=1e-3)):
        raise MsnetInputError(
            f"Lesion mask {name} (shape {img.shape}) is not on the BOLD grid "
            f"(shape {tuple(shape)}); resample it to the fMRIPrep output space with nearest-neighbour "
            "interpolation (e.g. antsApplyTransforms -n NearestNeighbor)."
        )
    return img


def read_mask_data(img, path, what: str) -> np.ndarray:
    """The voxel data of a mask image; a file that ends early is an input error naming it."""
    try:
        return np.asarray(img.dataobj)
    except Exception as exc:  # EOFError, zlib.error, ... from a truncated or corrupt file
        raise MsnetInputError(
            f"{what} {path} is truncated or corrupt ({type(exc).__name__}: {exc}). Re-copy it "
            "from the fMRIPrep output."
        ) from None


def check_complete(path, img) -> None:
    """Check that a NIfTI file holds all the voxel data its header announces, cheaply.

    A ``.nii`` must be at least header + data bytes long. A ``.nii.gz`` ends with the gzip
    trailer's ISIZE (uncompressed length mod 2**32), 4 bytes read from the end of the file:
    it must match the header's data offset + data bytes. A truncated copy ends in compressed
    data, so the match fails (odds of a false match 2**-32); so does a valid file written as
    several gzip members (``bgzip``) or with trailing bytes, which is why a mismatch is then
    confirmed by decompressing the stream (seconds, only for such files).

    Raises
    ------
    MsnetInputError
        The file is shorter than its header says (truncated copy) or its gzip stream is corrupt.
    """
    path = Path(path)
    hdr = img.header
    try:
        offset = getattr(img.dataobj, "offset", None)  # where nibabel reads the data from
        offset = int(hdr.get_data_offset() if offset is None else offset)
        expected = offset + int(np.prod(img.shape, dtype=np.int64)) * hdr.get_data_dtype().itemsize
    except Exception:  # a header nibabel cannot size: left to the job's own read
        return
    fix = "Re-copy it from the fMRIPrep output (or rerun fMRIPrep for this subject)."
    size = path.stat().st_size
    if not path.name.endswith(".gz"):
        if size < expected:
            raise MsnetInputError(f"{path} is truncated: {size} bytes, its header announces "
                                  f"{expected}. {fix}")
        return
    with open(path, "rb") as handle:
        if size >= 18:
            handle.seek(size - 4)
            if int.from_bytes(handle.read(4), "little") == expected % 2**32:
                return
    total = _gunzip_length(path, expected)
    if total < 0:
        raise MsnetInputError(f"{path} is truncated or corrupt: its gzip stream cannot be read to "
                              f"its end. {fix}")
    if total < expected:
        raise MsnetInputError(f"{path} is truncated: it decompresses to {total} bytes, its header "
                              f"announces {expected}. {fix}")


def _gunzip_length(path: Path, expected: int) -> int:
    """Decompressed length of a gzip file (stops counting at ``expected``); -1 when corrupt."""
    import zlib

    from isal import igzip

    errors = (EOFError, OSError, zlib.error)
    try:
        from isal.igzip_lib import IsalError

        errors += (IsalError,)
    except ImportError:  # pragma: no cover - isal is a dependency
        pass
    total = 0
    try:
        with igzip.open(path, "rb") as stream:
            while total < expected:
                chunk = stream.read(16 * 2**20)
                if not chunk:
                    break
                total += len(chunk)
    except errors:
        return -1
    return total


def find_subject_files(
    fmriprep_dir,
    participant_id,
    task: str = "rest",
    space: str = "MNI152NLin2009cAsym",
    multi_run: str = "first",
    read_headers: bool = True,
) -> SubjectFiles:
    """Find the BOLD runs, masks, confounds and TR of one participant.

    Parameters
    ----------
    fmriprep_dir : str or Path
        fMRIPrep derivatives folder (holding ``sub-*/``).
    participant_id : str
        ``sub-<label>`` (a bare label is accepted).
    task : str
        BIDS task label.
    space : str
        Output space, optionally with a resolution: ``"MNI152NLin2009cAsym:res-2"``.
        Without one, a run present at several resolutions is an error.
    multi_run : {"first", "concatenate"}
        Keep only the first run (session, then run number order) or all runs.
    read_headers : bool
        Read the TR (:func:`read_tr`). The plan passes False: it only finds the files, and
        :mod:`msnet.io.preflight` then reads every header in parallel (``tr`` is None).

    Returns
    -------
    SubjectFiles

    Raises
    ------
    MsnetInputError
        Missing folder, no BOLD for task/space, a BOLD without mask or confounds,
        ambiguous files, or a TR problem (see :func:`read_tr`); runs with different TRs.
    """
    if multi_run not in ("first", "concatenate"):
        raise MsnetInputError(f"multi_run must be 'first' or 'concatenate', got {multi_run!r}.")
    root = Path(fmriprep_dir)
    if not root.is_dir():
        raise MsnetInputError(f"fMRIPrep folder {root} does not exist (check fmriprep_dir in studies.tsv).")
    pid = _normalise_participant(participant_id)
    bolds = _find_bold_files(root / pid, pid, task, space)
    if not bolds:
        raise _NoSubjectData(
            f"{pid}: no *_task-{task}_*space-{_parse_space(space)[0]}*_desc-preproc_bold.nii.gz "
            f"under {root / pid} (func/ or ses-*/func/)."
        )
    if multi_run == "first":
        bolds = bolds[:1]
    runs = tuple(_run_files(b) for b in bolds)
    if not read_headers:
        return SubjectFiles(participant_id=pid, runs=runs, tr=None)
    return SubjectFiles(participant_id=pid, runs=runs, tr=common_tr(pid, runs, [read_tr(r) for r in runs]))


def common_tr(participant_id: str, runs, trs) -> float:
    """The one repetition time of a subject's runs; different TRs cannot be concatenated."""
    if not np.allclose(trs, trs[0], rtol=1e-3):
        listing = ", ".join(f"{r.bold.name}: {t} s" for r, t in zip(runs, trs))
        raise MsnetInputError(
            f"{participant_id}: runs have different repetition times ({listing}); they cannot "
            "be concatenated. Set data.multi_run: first, or drop the odd run."
        )
    return float(trs[0])


def find_study_files(
    fmriprep_dir,
    participant_ids,
    task: str = "rest",
    space: str = "MNI152NLin2009cAsym",
    on_missing: str = "error",
    multi_run: str = "first",
    read_headers: bool = True,
):
    """Find the files of every participant of a study and report mismatches.

    Parameters
    ----------
    fmriprep_dir : str or Path
        fMRIPrep derivatives folder.
    participant_ids : iterable of str
        The ``participant_id`` column of participants.tsv.
    task, space, multi_run, read_headers
        See :func:`find_subject_files`.
    on_missing : {"error", "exclude"}
        What to do with a participant without BOLD data, or with BOLD data of a subject that
        has no participants.tsv row: raise one error listing them all, or return them.

    Returns
    -------
    found : dict
        ``participant_id -> SubjectFiles`` for the participants with data.
    missing : list of dict
        One ``{"participant_id", "kind", "reason"}`` per problem; ``kind`` is ``"no_data"``
        (row without data) or ``"no_participant_row"`` (data without row).

    Raises
    ------
    MsnetInputErrors
        With ``on_missing="error"`` when anything is missing, and always for broken runs
        (BOLD without mask/confounds, TR problems), which need fixing rather than excluding:
        every problem of the study, one line each.
    """
    found, missing, problems = scan_study_files(fmriprep_dir, participant_ids, task, space,
                                                on_missing, multi_run, read_headers)
    if problems:
        raise MsnetInputErrors(problems, f"the fMRIPrep folder {fmriprep_dir}")
    return found, missing


def scan_study_files(fmriprep_dir, participant_ids, task: str = "rest",
                     space: str = "MNI152NLin2009cAsym", on_missing: str = "error",
                     multi_run: str = "first", read_headers: bool = True):
    """:func:`find_study_files` returning its problems instead of raising them.

    Returns
    -------
    found, missing
        As :func:`find_study_files` (``found`` holds the participants without problems).
    problems : list of MsnetInputError
        One per broken participant, and per missing one with ``on_missing="error"``.
    """
    if on_missing not in ("error", "exclude"):
        raise MsnetInputError(f"on_missing must be 'error' or 'exclude', got {on_missing!r}.")
    root = Path(fmriprep_dir)
    ids = [_normalise_participant(p) for p in participant_ids]
    if not root.is_dir():
        raise MsnetInputError(f"fMRIPrep folder {root} does not exist (check fmriprep_dir in studies.tsv).")
    found, missing, problems = {}, [], []
    for pid in ids:
        try:
            found[pid] = find_subject_files(root, pid, task, space, multi_run, read_headers)
        except _NoSubjectData as exc:
            missing.append({"participant_id": pid, "kind": "no_data", "reason": str(exc)})
        except MsnetInputError as exc:
            problems.append(exc)
    known = set(ids)
    for subject_dir in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        pid = subject_dir.name
        if pid in known:
            continue
        try:
            has_data = bool(_find_bold_files(subject_dir, pid, task, space))
        except MsnetInputError:  # ambiguous files of a subject not in the table: it has data
            has_data = True
        if has_data:
            missing.append(
                {
                    "participant_id": pid,
                    "kind": "no_participant_row",
                    "reason": f"{pid} has task-{task} BOLD data in {root} but no row in participants.tsv.",
                }
            )
    if missing and on_missing == "error":
        problems += [MsnetInputError(f"{m['reason']} Fix participants.tsv or the data, or set "
                                     "data.on_missing: exclude to skip it.") for m in missing]
    return found, missing, problems


def read_confounds(path, n_volumes: int | None = None) -> tuple[pd.DataFrame, dict | None]:
    """Read a confounds TSV and harmonise it to current fMRIPrep names.

    Legacy camelCase columns are renamed (:data:`LEGACY_CONFOUND_COLUMNS`), other camelCase
    columns are dropped (nilearn refuses tables holding them and no strategy uses them),
    and missing ``_derivative1`` / ``_power2`` / ``_derivative1_power2`` expansions of
    :data:`EXPANDABLE_COLUMNS` are computed as fMRIPrep does (backward difference with
    ``n/a`` first; squares).

    Parameters
    ----------
    path : str or Path
        ``*_desc-confounds_{timeseries,regressors}.tsv``.
    n_volumes : int, optional
        Number of BOLD volumes; the table must have exactly that many rows.

    Returns
    -------
    table : pandas.DataFrame
        Harmonised confounds, float columns, ``n/a`` as NaN.
    meta : dict or None
        The companion JSON (CompCor metadata); for legacy tables without one, CompCor
        metadata is synthesised (fMRIPrep 1.0-1.1 aCompCor used the combined WM+CSF mask).

    Raises
    ------
    MsnetInputError
        Missing/unreadable file or wrong number of rows.
    """
    path = Path(path)
    if not path.is_file():
        raise MsnetInputError(f"Confounds table {path} does not exist.")
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a", "N/A"])
    except (OSError, ValueError) as exc:
        raise MsnetInputError(f"Cannot read confounds table {path}: {exc}") from exc
    _check_row_count(path, len(table), n_volumes)
    table, legacy = _harmonise_columns(table, path)
    _check_fmriprep_table(table, path)
    table = pd.concat([table, _expansions(table)], axis=1)
    return table, _confounds_meta(path, table.columns, legacy)


def read_confounds_header(path, n_volumes: int | None = None) -> tuple[list, dict | None]:
    """Check a confounds table from its header line and row count, without parsing values.

    The cheap half of :func:`read_confounds` (same checks, same messages), for the preflight:
    the file exists and is not empty, it has ``n_volumes`` data rows, its columns are an
    fMRIPrep table's (legacy names harmonised) and its JSON sidecar parses. Values (n/a,
    non-numeric cells) are checked when the subject's job reads the table.

    Parameters
    ----------
    path : str or Path
        The confounds TSV.
    n_volumes : int, optional
        Number of BOLD volumes.

    Returns
    -------
    columns : list of str
        Harmonised column names (before :func:`read_confounds` adds the expansions).
    meta : dict or None
        The JSON sidecar, as :func:`read_confounds` returns it.
    """
    path = Path(path)
    if not path.is_file():
        raise MsnetInputError(f"Confounds table {path} does not exist.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MsnetInputError(f"Cannot read confounds table {path}: {exc}") from None
    n_lines, first = _count_lines(raw)  # pandas skips blank lines
    if not n_lines:
        raise MsnetInputError(f"Cannot read confounds table {path}: the file is empty. Copy the "
                              "desc-confounds_timeseries.tsv fMRIPrep wrote for this run.")
    try:
        columns = _dedupe(first.decode("utf-8").rstrip("\r").split("\t"))
    except UnicodeDecodeError as exc:
        raise MsnetInputError(f"Cannot read confounds table {path}: its header is not text "
                              f"({exc}). Copy the table fMRIPrep wrote for this run.") from None
    _check_row_count(path, n_lines - 1, n_volumes)
    rename, camel = _harmonise_names(columns)
    columns = [c for c in (rename.get(c, c) for c in columns) if c not in camel]
    _check_fmriprep_columns(columns, path)
    return columns, _confounds_meta(path, columns, bool(rename))


def _count_lines(raw: bytes) -> tuple[int, bytes]:
    """Number of non-blank lines of a text file's bytes (as pandas counts rows: a line that is
    empty or only ``\\r`` is skipped), and the first of them. Vectorised: fMRIPrep tables are
    up to a few MB and the preflight counts thousands."""
    data = np.frombuffer(raw, np.uint8)
    ends = np.flatnonzero(data == 10)
    starts = np.r_[0, ends + 1]
    stops = np.r_[ends, data.size]
    length = stops - starts
    carriage = np.zeros(length.size, bool)
    single = np.flatnonzero(length == 1)
    carriage[single] = data[starts[single]] == 13
    kept = np.flatnonzero((length > 0) & ~carriage)
    if not kept.size:
        return 0, b""
    return int(kept.size), raw[starts[kept[0]]:stops[kept[0]]]


def _dedupe(columns: list) -> list:
    """Repeated column names as pandas' ``read_csv`` renames them (``x``, ``x.1``, ...)."""
    if len(set(columns)) == len(columns):
        return columns
    seen, out = {}, []
    for col in columns:
        out.append(f"{col}.{seen[col]}" if col in seen else col)
        seen[col] = seen.get(col, 0) + 1
    return out


def _check_row_count(path: Path, n_rows: int, n_volumes: int | None) -> None:
    if n_volumes is not None and n_rows != n_volumes:
        raise MsnetInputError(
            f"Confounds table {path} has {n_rows} rows but the BOLD run has {n_volumes} "
            "volumes: the table belongs to another run or was truncated. Copy the table "
            "fMRIPrep wrote for this run."
        )


def _confounds_meta(path: Path, columns, legacy: bool) -> dict | None:
    """The confounds table's JSON sidecar (CompCor metadata); synthesised for legacy tables."""
    json_path = path.with_suffix(".json")
    try:
        meta = json.loads(json_path.read_text()) if json_path.is_file() else None
    except (OSError, ValueError) as exc:
        raise MsnetInputError(f"Cannot read the confounds JSON sidecar {json_path}: {exc}") from None
    if meta is not None and not isinstance(meta, dict):
        raise MsnetInputError(f"Confounds JSON sidecar {json_path} must hold a JSON object "
                              "(column name -> metadata), as fMRIPrep writes it.")
    if meta is None and legacy:
        meta = {c: {"Method": "aCompCor", "Mask": "combined"} for c in columns if c.startswith("a_comp_cor_")}
        meta.update({c: {"Method": "tCompCor"} for c in columns if c.startswith("t_comp_cor_")})
    return meta


def _check_fmriprep_table(table: pd.DataFrame, path: Path) -> None:
    """Refuse a confounds table that fMRIPrep did not write.

    Every fMRIPrep version writes the six rigid-body motion parameters (``trans_*``/``rot_*``;
    ``X``..``RotZ`` in 1.0-1.1, renamed by :func:`_harmonise_columns`), whatever else it was
    asked for; a table without them comes from another tool, and its columns cannot be trusted
    to mean what the denoising strategy expects (whatever the strategy: FD, scrubbing and the
    QC all rest on them).
    """
    _check_fmriprep_columns(list(table.columns), path)


def _check_fmriprep_columns(columns: list, path: Path) -> None:
    """:func:`_check_fmriprep_table` on the (harmonised) column names alone."""
    missing = [c for c in MOTION_COLUMNS if c not in columns]
    if not missing:
        return
    found = ", ".join(map(str, columns[:12])) + (", ..." if len(columns) > 12 else "")
    raise MsnetInputError(
        f"Confounds table {path} is not an fMRIPrep confounds table: fMRIPrep (every version) "
        f"writes the six motion parameters {', '.join(MOTION_COLUMNS)} and this table lacks "
        f"{', '.join(missing)} (its columns: {found or 'none'}). msnet analyses fMRIPrep "
        "derivatives: use the desc-confounds_timeseries.tsv fMRIPrep wrote for this run, "
        "unmodified (its JSON sidecar beside it)."
    )


def _expansions(table: pd.DataFrame) -> pd.DataFrame:
    """fMRIPrep's derivative/power expansions of :data:`EXPANDABLE_COLUMNS` that are absent."""
    extra = {}
    for base in (c for c in EXPANDABLE_COLUMNS if c in table):
        deriv = table[base].diff()
        candidates = {
            f"{base}_derivative1": deriv,
            f"{base}_power2": table[base] ** 2,
            f"{base}_derivative1_power2": deriv**2,
        }
        extra.update({k: v for k, v in candidates.items() if k not in table})
    return pd.DataFrame(extra, index=table.index)


def _harmonise_names(columns) -> tuple[dict, list]:
    """fMRIPrep 1.0-1.1 column renames and the other camelCase columns to drop (by name)."""
    rename = {}
    for col in columns:
        if col in LEGACY_CONFOUND_COLUMNS:
            rename[col] = LEGACY_CONFOUND_COLUMNS[col]
            continue
        if col.islower():  # every legacy name has a capital letter; skip the regex (speed)
            continue
        match = re.fullmatch(r"([A-Za-z]+?)(\d+)", col)
        if match and match.group(1) in LEGACY_NUMBERED_COLUMNS:
            rename[col] = f"{LEGACY_NUMBERED_COLUMNS[match.group(1)]}{int(match.group(2)):02d}"
    renamed = [rename.get(c, c) for c in columns]
    camel = [c for c in renamed if c != c.lower() and c != c.upper() and "_" not in c]
    return rename, camel


def _harmonise_columns(table: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, bool]:
    """Rename fMRIPrep 1.0-1.1 columns; drop other camelCase ones. Returns (table, legacy)."""
    rename, camel = _harmonise_names(table.columns)
    table = table.rename(columns=rename).drop(columns=camel)
    for col in table.columns:
        if not pd.api.types.is_numeric_dtype(table[col]):
            bad = table[col][pd.to_numeric(table[col], errors="coerce").isna() & table[col].notna()]
            raise MsnetInputError(
                f"Confounds table {path}: column {col!r} holds non-numeric values "
                f"(row {bad.index[0] + 2}: {bad.iloc[0]!r}); only numbers and n/a are allowed."
            )
    return table.astype(float), bool(rename)
