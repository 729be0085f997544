"""Paths, options and helper functions of all rules (no rules here, no science)."""

from pathlib import Path

import msnet
from msnet.io.plan import (
    analysis_space,
    map_name,
    mask_name,
    simulated_dataset_dir,
    study_qc_table,
    subject_chunks,
    subject_outputs,
)
from msnet.qcfc import output_paths as qcfc_outputs
from msnet.resources import rule_resource, workload

R = config["results_dir"]
NETWORKS = list(msnet.ANALYSIS_NETWORKS)
STUDIES = list(PLAN.studies["study_id"])
# Built once: rule definitions and input functions look studies up thousands of times.
STUDY_ROWS = PLAN.studies.set_index("study_id", drop=False).to_dict("index")
SIMULATE = config["data"]["mode"] == "simulate"
WORKLOAD = workload(config, PLAN)
ALL_TARGETS = []
SPACE = analysis_space(PLAN.studies)  # the space- entity of every map
CONDA_ENV = "../envs/msnet.yaml"  # every rule's environment for `--sdm conda`


def resources_for(rule_name, key, n_subjects=None):
    """A rule's threads, mem_mb or runtime (config `resources`, else estimated)."""
    return rule_resource(config, rule_name, key, WORKLOAD, n_subjects)


# --------------------------------------------------------------------------- folders, options
SIM_DIR = str(simulated_dataset_dir(R))
GROUP_DIR = f"{R}/group"
MASK_PATTERN = f"{GROUP_DIR}/masks/{mask_name('{net}', SPACE)}"
GROUP_OPTIONS = {**config["group"], "seed": config["seed"]}
CLINICAL_DIR = f"{R}/clinical"
CLINICAL_OPTIONS = {**config["clinical"], "seed": config["seed"]}
META_DIR = f"{R}/meta"
META_OPTIONS = {**config["meta"], "seed": config["seed"]}
META_TABLES = ["networks", "loo", "egger", "metaregression"]


def output_folder(name, up=1):
    """A params function: the folder of the rule's output `name` (its first file if a list),
    `up` levels up, so that folders passed to scripts are never spelled out twice."""

    def folder(wildcards, output):
        path = output[name] if isinstance(output[name], str) else output[name][0]
        return str(Path(path).parents[up - 1])

    return folder


def participants_tsv(study):
    """The study's participants.tsv (for the demo, written by rule simulate_study)."""
    if SIMULATE:
        return f"{SIM_DIR}/study-{study}/participants.tsv"
    return STUDY_ROWS[study]["participants_tsv"]


QCFC = config["qcfc"]["enabled"]  # each subject's edges under every QC-FC strategy
SUBJECT_PATHS = {study: [] for study in STUDIES}  # study -> each subject's output paths
for _row in PLAN.subjects.itertuples():
    SUBJECT_PATHS[_row.study_id].append(
        subject_outputs(R, _row.study_id, _row.label, space=SPACE, qcfc=QCFC)
    )


def subject_files(kind, study=None, net=None):
    """Subject-stage outputs of every subject (of one study when `study` is given)."""
    studies = STUDIES if study is None else [study]
    paths = [p for s in studies for p in SUBJECT_PATHS[s]]
    return [p["maps"][net] if kind == "map" else p[kind] for p in paths]


def subject_maps(study=None):
    """Network -> subject-stage maps of every subject (of one study when given)."""
    return {net: subject_files("map", study, net) for net in NETWORKS}


def qc_tables(study=None):
    """The study QC tables that stand for the subject outputs in later rules' inputs.

    Later rules take the per-subject files as params: one graph edge per study instead of
    six per subject keeps `snakemake -n` fast at 2,410 subjects.
    """
    return [study_qc_table(R, s) for s in (STUDIES if study is None else [study])]


def study_maps(stat, net):
    """Study -> its voxelwise group map of one statistic and network."""
    return {
        s: f"{GROUP_DIR}/study-{s}/{map_name(f'study-{s}_network-{net}', stat, SPACE)}"
        for s in STUDIES
    }


# --------------------------------------------------------------------------- subject stage
SEED_MAPS = config["connectivity"]["seed_maps"]
SUBJECT_PAGES = config["qc"]["subject_pages"]  # each subject's QC page (msnet.qcpage)
SUBJECT_OPTIONS = {
    "denoise": config["denoise"],
    "qc": config["qc"],
    "connectivity": config["connectivity"],
    "multi_run": config["data"]["multi_run"],
    "qcfc": config["qcfc"],
}


def lesion_mask(row):
    """The subject's lesion mask path, or None (n/a in participants.tsv reads as NaN)."""
    path = row["lesion_mask"]
    return path if isinstance(path, str) and path else None


def subject_job(row):
    """What compute_subjects needs to know about one subject."""
    study = STUDY_ROWS[row["study_id"]]
    return {
        "fmriprep_dir": study["fmriprep_dir"],
        "participant_id": row["participant_id"],
        "out_paths": subject_outputs(
            R, row["study_id"], row["label"], SEED_MAPS, SUBJECT_PAGES, SPACE, QCFC
        ),
        "task": study["task"],
        "space": study["space"],
        "lesion_mask": lesion_mask(row),
        "study_id": row["study_id"],
    }


def subject_input_files(rows):
    """The subjects' fMRIPrep files; for the demo, the simulated study's participants.tsv."""
    if SIMULATE:
        return sorted(
            {f"{SIM_DIR}/study-{row['study_id']}/participants.tsv" for row in rows}
        )
    files = []
    for row in rows:
        files += row["bold"] + row["mask"] + row["confounds"]
        files += [lesion_mask(row)] if lesion_mask(row) else []
    return files


def output_files(subjects):
    """Every output path of the subjects, all QC files first.

    Later rules ask for the QC files only (each is written last, after the subject's other
    outputs); Snakemake matches a requested file against a job's outputs in order, so QC
    files first keeps `snakemake -n` fast at 2,410 subjects.
    """
    paths = [s["out_paths"] for s in subjects]
    rest = [v for p in paths for k, v in p.items() if k != "qc"]
    return [p["qc"] for p in paths] + [
        f for v in rest for f in (v.values() if isinstance(v, dict) else [v])
    ]
