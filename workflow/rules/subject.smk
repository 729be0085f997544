"""Stage 2: the subject stage, `resources.subjects_per_job` subjects per job: denoise -> QC -> connectivity."""

# One rule per job: a job's outputs are its subjects' files, and Snakemake needs the same
# number of outputs for every job of a wildcard rule, which chunks of unequal size are not.
for CHUNK, CHUNK_ROWS in subject_chunks(
    PLAN.subjects, config["resources"]["subjects_per_job"]
):
    CHUNK_SUBJECTS = [subject_job(row) for row in CHUNK_ROWS]

    rule:
        name:
            f"compute_subject_connectivity_{CHUNK}"
        input:
            subject_input_files(CHUNK_ROWS),
        output:
            output_files(CHUNK_SUBJECTS),
        log:
            f"{R}/logs/compute_subject_connectivity/chunk-{CHUNK}.log",
        benchmark:
            f"{R}/benchmarks/compute_subject_connectivity/chunk-{CHUNK}.tsv"
        conda:
            CONDA_ENV
        threads: resources_for("compute_subject_connectivity", "threads")
        resources:
            mem_mb=resources_for("compute_subject_connectivity", "mem_mb"),
            runtime=resources_for(
                "compute_subject_connectivity", "runtime", len(CHUNK_ROWS)
            ),
        params:
            subjects=CHUNK_SUBJECTS,
            options=SUBJECT_OPTIONS,
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
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=lambda wc: resources_for("summarise_study_qc", "mem_mb"),
        runtime=lambda wc: resources_for("summarise_study_qc", "runtime"),
    script:
        "../../scripts/summarise_study_qc.py"
