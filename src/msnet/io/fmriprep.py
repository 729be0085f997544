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

from msnet.errors import MsnetInputError

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
    tr: float


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


def read_tr(run: RunFiles) -> float:
    """Return the repetition time (s) of a run, cross-checked between sidecar and header.

    Parameters
    ----------
    run : RunFiles
        The run; ``run.sidecar`` may be None.

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
        hdr = nib.load(run.bold).header
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


def find_subject_files(
    fmriprep_dir,
    participant_id,
    task: str = "rest",
    space: str = "MNI152NLin2009cAsym",
    multi_run: str = "first",
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
    trs = [read_tr(r) for r in runs]
    if not np.allclose(trs, trs[0], rtol=1e-3):
        listing = ", ".join(f"{r.bold.name}: {t} s" for r, t in zip(runs, trs))
        raise MsnetInputError(
            f"{pid}: runs have different repetition times ({listing}); they cannot be "
            "concatenated. Use multi_run: first."
        )
    return SubjectFiles(participant_id=pid, runs=runs, tr=float(trs[0]))


def find_study_files(
    fmriprep_dir,
    participant_ids,
    task: str = "rest",
    space: str = "MNI152NLin2009cAsym",
    on_missing: str = "error",
    multi_run: str = "first",
):
    """Find the files of every participant of a study and report mismatches.

    Parameters
    ----------
    fmriprep_dir : str or Path
        fMRIPrep derivatives folder.
    participant_ids : iterable of str
        The ``participant_id`` column of participants.tsv.
    task, space, multi_run
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
    MsnetInputError
        With ``on_missing="error"`` when anything is missing, and always for broken runs
        (BOLD without mask/confounds, TR problems), which need fixing rather than excluding.
    """
    if on_missing not in ("error", "exclude"):
        raise MsnetInputError(f"on_missing must be 'error' or 'exclude', got {on_missing!r}.")
    root = Path(fmriprep_dir)
    ids = [_normalise_participant(p) for p in participant_ids]
    found, missing = {}, []
    for pid in ids:
        try:
            found[pid] = find_subject_files(root, pid, task, space, multi_run)
        except _NoSubjectData as exc:
            missing.append({"participant_id": pid, "kind": "no_data", "reason": str(exc)})
    known = set(ids)
    for subject_dir in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        pid = subject_dir.name
        if pid not in known and _find_bold_files(subject_dir, pid, task, space):
            missing.append(
                {
                    "participant_id": pid,
                    "kind": "no_participant_row",
                    "reason": f"{pid} has task-{task} BOLD data in {root} but no row in participants.tsv.",
                }
            )
    if missing and on_missing == "error":
        lines = "\n  ".join(m["reason"] for m in missing[:20])
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise MsnetInputError(
            f"{len(missing)} participant(s) of {root} lack data or a participants.tsv row:\n  "
            f"{lines}{more}\nFix the table or set on_missing: exclude to skip them."
        )
    return found, missing


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
    if n_volumes is not None and len(table) != n_volumes:
        raise MsnetInputError(
            f"Confounds table {path} has {len(table)} rows but the BOLD run has {n_volumes} "
            "volumes: the table belongs to another run or was truncated."
        )
    table, legacy = _harmonise_columns(table, path)
    _check_fmriprep_table(table, path)
    table = pd.concat([table, _expansions(table)], axis=1)
    json_path = path.with_suffix(".json")
    try:
        meta = json.loads(json_path.read_text()) if json_path.is_file() else None
    except (OSError, ValueError) as exc:
        raise MsnetInputError(f"Cannot read the confounds JSON sidecar {json_path}: {exc}") from None
    if meta is not None and not isinstance(meta, dict):
        raise MsnetInputError(f"Confounds JSON sidecar {json_path} must hold a JSON object "
                              "(column name -> metadata), as fMRIPrep writes it.")
    if meta is None and legacy:
        meta = {c: {"Method": "aCompCor", "Mask": "combined"} for c in table if c.startswith("a_comp_cor_")}
        meta.update({c: {"Method": "tCompCor"} for c in table if c.startswith("t_comp_cor_")})
    return table, meta


def _check_fmriprep_table(table: pd.DataFrame, path: Path) -> None:
    """Refuse a confounds table that fMRIPrep did not write.

    Every fMRIPrep version writes the six rigid-body motion parameters (``trans_*``/``rot_*``;
    ``X``..``RotZ`` in 1.0-1.1, renamed by :func:`_harmonise_columns`), whatever else it was
    asked for; a table without them comes from another tool, and its columns cannot be trusted
    to mean what the denoising strategy expects (whatever the strategy: FD, scrubbing and the
    QC all rest on them).
    """
    missing = [c for c in MOTION_COLUMNS if c not in table.columns]
    if not missing:
        return
    found = ", ".join(map(str, table.columns[:12])) + (", ..." if len(table.columns) > 12 else "")
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


def _harmonise_columns(table: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, bool]:
    """Rename fMRIPrep 1.0-1.1 columns; drop other camelCase ones. Returns (table, legacy)."""
    rename = {}
    for col in table.columns:
        if col in LEGACY_CONFOUND_COLUMNS:
            rename[col] = LEGACY_CONFOUND_COLUMNS[col]
            continue
        match = re.fullmatch(r"([A-Za-z]+?)(\d+)", col)
        if match and match.group(1) in LEGACY_NUMBERED_COLUMNS:
            rename[col] = f"{LEGACY_NUMBERED_COLUMNS[match.group(1)]}{int(match.group(2)):02d}"
    table = table.rename(columns=rename)
    camel = [c for c in table.columns if c != c.lower() and c != c.upper() and "_" not in c]
    table = table.drop(columns=camel)
    for col in table.columns:
        if not pd.api.types.is_numeric_dtype(table[col]):
            bad = table[col][pd.to_numeric(table[col], errors="coerce").isna() & table[col].notna()]
            raise MsnetInputError(
                f"Confounds table {path}: column {col!r} holds non-numeric values "
                f"(row {bad.index[0] + 2}: {bad.iloc[0]!r}); only numbers and n/a are allowed."
            )
    return table.astype(float), bool(rename)
