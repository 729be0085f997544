"""The analysis plan: every study and subject the workflow will process, known at parse time.

The Snakefile needs the full list of jobs before anything runs (so ``snakemake -n`` shows
them all). For the synthetic demo the plan is derived from the config alone
(:func:`msnet.simulate.plan_dataset`, no simulation is run); for real data it comes from
``studies.tsv``, each study's ``participants.tsv`` and the fMRIPrep files found on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from msnet.errors import MsnetInputError, MsnetInputErrors

SPACE = "MNI152NLin2009cAsym"
"""The default template space (fMRIPrep's default output space; the demo's space)."""


def map_name(stem: str, stat: str, space: str = SPACE) -> str:
    """Return the file name of one statistical map: ``{stem}_space-{space}_stat-{stat}_map.nii.gz``.

    The one place where map names are spelled. ``space`` is the last entity before the
    statistic, as BIDS derivatives require on every image in a template space.

    Parameters
    ----------
    stem : str
        The leading entities, e.g. ``"pooled_network-DMN"``.
    stat : str
        Alphanumeric statistic label, e.g. ``"t"`` or ``"logpfwe"``.
    space : str
        Template space name (without fMRIPrep's ``:res-`` part).
    """
    return f"{stem}_space-{space}_stat-{stat}_map.nii.gz"


def mask_name(network: str, space: str = SPACE) -> str:
    """Return the file name of a network's analysis mask: ``network-{net}_space-{space}_mask.nii.gz``."""
    return f"network-{network}_space-{space}_mask.nii.gz"


def space_of(paths) -> str:
    """Return the template space named by the ``space-`` entity of image file names.

    Outputs inherit the space of the maps they are computed from: a writer passes its input
    maps here and names its own maps with the result (:func:`map_name`).

    Parameters
    ----------
    paths : iterable of str or Path
        Input image paths (nested dicts/lists of paths are flattened).

    Returns
    -------
    str
        The one space the names carry; :data:`SPACE` when none carries a ``space-`` entity
        (maps written outside msnet, e.g. through the Python API).

    Raises
    ------
    MsnetInputError
        When the inputs name different spaces.
    """
    found = {}
    for path in _flatten(paths):
        for entity in Path(str(path)).name.split("_"):
            if entity.startswith("space-"):
                found.setdefault(entity[len("space-"):], str(path))
    if len(found) > 1:
        examples = "; ".join(f"{sp}: {path}" for sp, path in found.items())
        raise MsnetInputError(
            f"the input maps are in different template spaces ({examples}). Voxelwise "
            "statistics need one space and grid: use maps from one space.")
    return next(iter(found), SPACE)


def _flatten(items):
    if isinstance(items, dict):
        items = items.values()
    if isinstance(items, (str, Path)):
        yield items
        return
    for item in items:
        yield from _flatten(item)


def analysis_space(studies: pd.DataFrame) -> str:
    """Return the one template space every study's BOLD runs are in.

    Group maps compare voxels across studies, so all studies must share one space and grid.

    Raises
    ------
    MsnetInputError
        When the studies name different spaces.
    """
    if studies.empty:  # literature mode: published peaks only, in MNI space
        return SPACE
    names = studies["space"].astype(str).str.partition(":")[0]
    spaces = sorted(set(names))
    if len(spaces) > 1:
        listing = "; ".join(f"{sp}: {', '.join(studies.loc[names == sp, 'study_id'])}"
                            for sp in spaces)
        raise MsnetInputError(
            f"studies.tsv, column space: the studies are in different template spaces "
            f"({listing}). Voxelwise group and meta-analysis compare the same voxel across "
            "studies, so every study needs the same space and grid. Fix: re-run fMRIPrep for "
            "the odd studies with the same --output-spaces, or analyse them separately.")
    return spaces[0] if spaces else SPACE


@dataclass
class Plan:
    """Studies and subjects to analyse.

    Attributes
    ----------
    studies : pandas.DataFrame
        One row per study: ``study_id``, ``fmriprep_dir``, ``participants_tsv``, ``task``,
        ``space``, ``site``.
    subjects : pandas.DataFrame
        One row per subject: ``study_id``, ``participant_id``, ``label`` (id without
        ``sub-``), ``group``, ``bold`` / ``mask`` / ``confounds`` (lists of run files, the
        Snakemake inputs of the subject job), ``lesion_mask`` (path or None).
    excluded : pandas.DataFrame
        Inputs dropped before analysis (``on_missing: exclude``): ``study_id``,
        ``participant_id``, ``reason``.
    """

    studies: pd.DataFrame
    subjects: pd.DataFrame
    excluded: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["study_id", "participant_id", "reason"])
    )

    def study_subjects(self, study_id: str) -> pd.DataFrame:
        """Return the subjects of one study."""
        return self.subjects[self.subjects["study_id"] == study_id]


def simulated_dataset_dir(results_dir) -> Path:
    """Return where the synthetic dataset is written (``{results_dir}/simulated``)."""
    return Path(results_dir) / "simulated"


def simulated_run_files(fmriprep_dir, participant_id: str, resolution_mm: int) -> dict:
    """Return the file names the simulator writes for one subject (single run)."""
    func = Path(fmriprep_dir) / participant_id / "func"
    stem = f"{participant_id}_task-rest"
    prefix = f"{stem}_space-{SPACE}_res-{resolution_mm}"
    return {
        "bold": [str(func / f"{prefix}_desc-preproc_bold.nii.gz")],
        "mask": [str(func / f"{prefix}_desc-brain_mask.nii.gz")],
        "confounds": [str(func / f"{stem}_desc-confounds_timeseries.tsv")],
    }


def _simulated_plan(config: dict) -> Plan:
    from msnet.simulate import PARTICIPANT_COLUMNS, plan_dataset

    problems = check_covariates(config, {"the simulated participants.tsv": PARTICIPANT_COLUMNS})
    if problems:
        raise MsnetInputErrors(problems, "the config")
    sim = config["simulate"]
    root = simulated_dataset_dir(config["results_dir"])
    people = plan_dataset(sim, config["seed"])
    studies = (
        people[["study_id", "site"]].drop_duplicates("study_id").reset_index(drop=True)
        if "site" in people
        else pd.DataFrame({"study_id": people["study_id"].unique()})
    )
    studies["fmriprep_dir"] = [str(root / f"study-{s}") for s in studies["study_id"]]
    studies["participants_tsv"] = [str(Path(d) / "participants.tsv")
                                   for d in studies["fmriprep_dir"]]
    studies["task"], studies["space"] = "rest", SPACE
    rows = []
    fdirs = dict(zip(studies["study_id"], studies["fmriprep_dir"]))
    for rec in people[["study_id", "participant_id", "group"]].to_dict("records"):
        files = simulated_run_files(fdirs[rec["study_id"]], rec["participant_id"],
                                    sim["resolution_mm"])
        rows.append({**rec, **files, "lesion_mask": None})
    return Plan(studies=studies, subjects=_with_labels(pd.DataFrame(rows)))


def _with_labels(subjects: pd.DataFrame) -> pd.DataFrame:
    subjects["label"] = subjects["participant_id"].str.removeprefix("sub-")
    # pandas >= 3 stores a column of strings and None as a string column with NaN, and NaN
    # is truthy: keep "no lesion mask" as None (object column) so `if row["lesion_mask"]`
    # and `lesion_mask is None` mean what they say.
    subjects["lesion_mask"] = pd.Series(
        [optional_path(v) for v in subjects["lesion_mask"]], index=subjects.index, dtype=object
    )
    return subjects.reset_index(drop=True)


def optional_path(value) -> str | None:
    """A path from a table cell, or None for a missing one (None, NaN, ``n/a``, empty)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    value = str(value).strip()
    return None if value in ("", "n/a", "nan", "None") else value


QC_COVARIATES = (
    "mean_fd", "max_fd", "mean_dvars", "mean_std_dvars", "pct_censored", "n_kept",
    "minutes_kept", "tsnr_median", "lesion_voxels",
)  # fmt: skip
"""Numeric subject-QC measures usable as covariates (``msnet.group.load_subjects`` adds the
subject's QC numbers to its participants.tsv row; these are also in the study QC tables)."""


def check_covariates(config: dict, columns: dict) -> list:
    """Check ``group.covariates`` and ``clinical.covariates`` against the participants tables.

    A covariate must be a column of at least one study's participants.tsv or a subject QC
    measure (:data:`QC_COVARIATES`). One that exists in some studies only is fine: it is
    adjusted for where present, and each model records the covariates it used. An unknown
    name would be dropped at job time while the report still claims the adjustment.

    Parameters
    ----------
    config : dict
        The validated config.
    columns : dict
        participants.tsv path -> its column names.

    Returns
    -------
    list of MsnetInputError
        One per unknown name (empty when all are known).
    """
    available = set().union(*map(set, columns.values())) if columns else set()
    known = sorted(available - {"participant_id"})
    problems = []
    for section in ("group", "clinical"):
        for name in config.get(section, {}).get("covariates", []):
            if name in QC_COVARIATES or name in known:
                continue
            tables = ", ".join(map(str, list(columns)[:3])) + (" ..." if len(columns) > 3 else "")
            problems.append(MsnetInputError(
                f"config {section}.covariates: '{name}' is neither a column of any "
                f"participants.tsv ({tables}) nor a subject QC measure, so no model could "
                f"adjust for it. participants.tsv columns: {', '.join(known)}; QC measures: "
                f"{', '.join(QC_COVARIATES)}. Fix the name or remove it."))
    return problems


def _fmriprep_plan(config: dict, preflight: bool = True, cache=None) -> Plan:
    from msnet.io.fmriprep import scan_study_files
    from msnet.io.tables import read_participants, read_studies

    data = config["data"]
    studies = read_studies(data["studies_tsv"])
    rows, excluded, problems, checks, columns = [], [], [], [], {}
    try:
        analysis_space(studies)
    except MsnetInputError as exc:
        problems.append(exc)
    for study in studies.to_dict("records"):
        try:
            people = read_participants(study["participants_tsv"], study["study_id"])
            columns[study["participants_tsv"]] = list(people.columns)
            found, missing, broken = scan_study_files(
                study["fmriprep_dir"], list(people["participant_id"]), task=study["task"],
                space=study["space"], on_missing=data["on_missing"], multi_run=data["multi_run"],
                read_headers=False,
            )
        except MsnetInputError as exc:  # this study's table or folder: the others go on
            problems.append(exc)
            continue
        problems += broken
        excluded += [{"study_id": study["study_id"], **m} for m in missing]
        for person in people.to_dict("records"):
            files = found.get(person["participant_id"])
            if files is None:
                continue
            try:
                lesion = _lesion_path(person, study["participants_tsv"])
            except MsnetInputError as exc:
                problems.append(exc)
                continue
            checks.append((files, lesion))
            rows.append({
                "study_id": study["study_id"],
                "participant_id": person["participant_id"],
                "group": person["group"],
                "bold": [str(r.bold) for r in files.runs],
                "mask": [str(r.mask) for r in files.runs],
                "confounds": [str(r.confounds) for r in files.runs],
                "lesion_mask": lesion,
            })
    if columns:  # unknown covariate names (only when some participants table was readable)
        problems += check_covariates(config, columns)
    if preflight:
        from msnet.io.preflight import check_subjects

        problems += check_subjects(checks, config.get("denoise"), cache=cache)
    if problems:
        raise MsnetInputErrors(problems, f"{data['studies_tsv']} and the files it points to")
    if not rows:
        raise MsnetInputError(f"{data['studies_tsv']}: no subject with data was found.")
    return Plan(studies=studies, subjects=_with_labels(pd.DataFrame(rows)),
                excluded=pd.DataFrame(excluded, columns=["study_id", "participant_id", "reason"]))


def _lesion_path(person: dict, participants_tsv) -> str | None:
    value = person.get("lesion_mask")
    if not isinstance(value, str) or not value:
        return None
    path = (Path(participants_tsv).parent / value).resolve()
    if not path.is_file():
        raise MsnetInputError(
            f"{participants_tsv}: lesion_mask {path} of {person['participant_id']} does not "
            "exist. Fix the path (relative to participants.tsv) or write n/a."
        )
    return str(path)


def build_plan(config: dict, preflight: bool = True, cache=None) -> Plan:
    """Build the plan for a validated config (see :func:`msnet.config.validate_config`).

    Parameters
    ----------
    config : dict
        The validated config.
    preflight : bool
        Real data: also check every subject's files from their headers
        (:mod:`msnet.io.preflight`). ``msnet validate`` and the Snakefile's main process do;
        a job re-parsing the workflow does not.
    cache : str or Path, optional
        The preflight's cache of subjects that passed (the Snakefile keeps one in
        ``.snakemake/``).

    Raises
    ------
    MsnetInputErrors
        Every problem found in the tables and files, one line each.
    """
    if (config.get("literature") or {}).get("peaks_tsv"):
        from msnet.literature import check_literature_tables

        check_literature_tables(config)  # literature or mixed mode: the published studies
    if config["data"]["mode"] == "literature":  # no image studies
        return Plan(studies=pd.DataFrame(columns=STUDY_COLUMNS),
                    subjects=pd.DataFrame(columns=SUBJECT_COLUMNS))
    if config["data"]["mode"] == "simulate":
        return _simulated_plan(config)
    return _fmriprep_plan(config, preflight, cache)


STUDY_COLUMNS = ["study_id", "fmriprep_dir", "participants_tsv", "task", "space", "site"]
"""Columns of :attr:`Plan.studies`."""
SUBJECT_COLUMNS = ["study_id", "participant_id", "label", "group", "bold", "mask", "confounds",
                   "lesion_mask"]
"""Columns of :attr:`Plan.subjects`."""


def record_excluded_inputs(records, path) -> None:
    """Write the inputs dropped before analysis (``on_missing: exclude``) as a TSV.

    Parameters
    ----------
    records : list of dict
        ``study_id``, ``participant_id``, ``reason`` per excluded input (may be empty).
    path : str or Path
        Output TSV (written even when empty, with its header).
    """
    from msnet.derivatives import write_table

    write_table(pd.DataFrame(records, columns=["study_id", "participant_id", "reason"]), path)


def subject_outputs(results_dir, study_id: str, label: str, seed_maps: bool = False,
                    page: bool = False, space: str = SPACE, qcfc: bool = False) -> dict:
    """Paths of one subject's subject-stage outputs (the one place that names them).

    Parameters
    ----------
    results_dir : str or Path
    study_id, label : str
        Study id and participant label without ``sub-``. Snakemake passes the wildcard
        placeholders ``"{study}"``/``"{sub}"`` to get output patterns.
    seed_maps : bool
        Include the seed-to-voxel maps.
    page : bool
        Include the subject's QC page (config ``qc.subject_pages``; :mod:`msnet.qcpage`).
    space : str
        Template space of the subject's BOLD runs (the ``space-`` entity of its maps).
    qcfc : bool
        Include the subject's edges under every QC-FC strategy (config ``qcfc.enabled``;
        :mod:`msnet.qcfc`).

    Returns
    -------
    dict
        ``qc``, ``maps`` (network -> path), ``timeseries``, ``relmat``, ``networks``, with
        ``page`` the QC page ``page`` and with ``seed_maps``, ``seed_maps`` (network -> path);
        the layout :func:`msnet.connectivity.compute_subject_connectivity` writes.
    """
    from msnet import ANALYSIS_NETWORKS

    prefix = f"{results_dir}/subjects/study-{study_id}/sub-{label}/sub-{label}"
    paths = {
        "qc": f"{prefix}_qc.json",
        "maps": {n: f"{prefix}_{map_name(f'network-{n}', 'amplitude', space)}"
                 for n in ANALYSIS_NETWORKS},
        "timeseries": f"{prefix}_atlas-Seitzman300_timeseries.tsv",
        "relmat": f"{prefix}_atlas-Seitzman300_relmat.tsv",
        "networks": f"{prefix}_networks.tsv",
    }
    if page:
        paths["page"] = subject_page(results_dir, study_id, label)
    if qcfc:
        paths["qcfc"] = f"{prefix}_atlas-Seitzman300_desc-strategies_edges.npz"
    if seed_maps:
        paths["seed_maps"] = {n: f"{prefix}_{map_name(f'seed-{n}', 'z', space)}"
                              for n in ANALYSIS_NETWORKS}
    return paths


def subject_page(results_dir, study_id: str, label: str) -> str:
    """Path of one subject's QC page (:mod:`msnet.qcpage`); with ``results_dir`` ``"."``
    the link from ``report.html`` in the results folder."""
    return f"{results_dir}/subjects/study-{study_id}/sub-{label}/sub-{label}_qc.html"


def study_qc_table(results_dir, study_id: str) -> str:
    """Path of one study's subject QC table (see :func:`msnet.qc.summarise_study_qc`)."""
    return f"{results_dir}/subjects/study-{study_id}/study-{study_id}_desc-subjects_qc.tsv"


def subject_chunks(subjects, per_job: int) -> list:
    """Split the subjects into the subject stage's jobs: consecutive runs within each study.

    Chunks never cross a study, so adding a subject to one study changes only that study's
    last job.

    Parameters
    ----------
    subjects : pandas.DataFrame
        ``Plan.subjects`` (``study_id`` and ``label`` columns, in plan order).
    per_job : int
        Subjects per job (>= 1).

    Returns
    -------
    list of (str, list of dict)
        ``("{study}_{k}", rows)`` with ``k`` counting from 1 within the study.
    """
    chunks = []
    for study, rows in subjects.groupby("study_id", sort=False):
        records = rows.to_dict("records")
        for k, start in enumerate(range(0, len(records), per_job), start=1):
            chunks.append((f"{study}_{k}", records[start:start + per_job]))
    return chunks
