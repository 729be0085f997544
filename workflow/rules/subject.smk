"""Stage 2: the subject stage, `resources.subjects_per_job` subjects per job: denoise -> QC -> connectivity."""

from msnet.io.plan import study_qc_table, subject_chunks, subject_outputs

SEED_MAPS = config["connectivity"]["seed_maps"]
SUBJECT_OPTIONS = {
    "denoise": config["denoise"],
    "qc": config["qc"],
    "connectivity": config["connectivity"],
    "multi_run": config["data"]["multi_run"],
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
        "out_paths": subject_outputs(R, row["study_id"], row["label"], SEED_MAPS),
        "task": study["task"],
        "space": study["space"],
        "lesion_mask": lesion_mask(row),
        "study_id": row["study_id"],
    }


def subject_input_files(rows):
    """The subjects' fMRIPrep files; for the demo, the simulated study's participants.tsv."""
    if SIMULATE:
        return sorted({f"{SIM_DIR}/study-{row['study_id']}/participants.tsv" for row in rows})
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
        f for v in rest for f in (v.values() if isinstance(v, dict) else [v])]


# One rule per job: a job's outputs are its subjects' files, and Snakemake needs the same
# number of outputs for every job of a wildcard rule, which chunks of unequal size are not.
for CHUNK, CHUNK_ROWS in subject_chunks(PLAN.subjects, config["resources"]["subjects_per_job"]):
    CHUNK_SUBJECTS = [subject_job(row) for row in CHUNK_ROWS]

    rule:
        name:
            f"compute_subject_connectivity_{CHUNK}"
        input:
            subject_input_files(CHUNK_ROWS),
        output:
            output_files(CHUNK_SUBJECTS),
        params:
            subjects=CHUNK_SUBJECTS,
            options=SUBJECT_OPTIONS,
        log:
            f"{R}/logs/compute_subject_connectivity/chunk-{CHUNK}.log",
        benchmark:
            f"{R}/benchmarks/compute_subject_connectivity/chunk-{CHUNK}.tsv"
        threads: resources_for("compute_subject_connectivity", "threads")
        resources:
            mem_mb=resources_for("compute_subject_connectivity", "mem_mb"),
            runtime=resources_for("compute_subject_connectivity", "runtime", len(CHUNK_ROWS)),
        script:
            "../../scripts/compute_subject_connectivity.py"


ALL_TARGETS += [study_qc_table(R, s) for s in STUDIES]


rule summarise_study_qc:
    input:
        participants=lambda wc: participants_tsv(wc.study),
        qc=lambda wc: subject_files("qc", wc.study),  # each written last by its subject's job
    output:
        table=study_qc_table(R, "{study}"),
    log:
        f"{R}/logs/summarise_study_qc/study-{{study}}.log",
    benchmark:
        f"{R}/benchmarks/summarise_study_qc/study-{{study}}.tsv"
    threads: 1
    resources:
        mem_mb=lambda wc: resources_for("summarise_study_qc", "mem_mb"),
        runtime=lambda wc: resources_for("summarise_study_qc", "runtime"),
    script:
        "../../scripts/summarise_study_qc.py"
