"""Stage 2: one job per subject: denoise -> QC -> network connectivity."""

from msnet.io.plan import subject_outputs

SEED_MAPS = config["connectivity"]["seed_maps"]
SUBJECT_OUTPUTS = subject_outputs(R, "{study}", "{sub}", SEED_MAPS)  # wildcard patterns


def subject_row(wildcards):
    subjects = PLAN.subjects
    row = subjects[(subjects["study_id"] == wildcards.study) & (subjects["label"] == wildcards.sub)]
    return row.iloc[0]


def subject_inputs(wildcards):
    """The subject's fMRIPrep files; for the demo, the simulated study's participants.tsv."""
    row = subject_row(wildcards)
    if SIMULATE:
        return {"participants": f"{SIM_DIR}/study-{wildcards.study}/participants.tsv"}
    files = {"bold": row["bold"], "mask": row["mask"], "confounds": row["confounds"]}
    if row["lesion_mask"]:
        files["lesion_mask"] = row["lesion_mask"]
    return files


def study_param(wildcards, column):
    studies = PLAN.studies.set_index("study_id")
    return studies.loc[wildcards.study, column]


rule compute_subject_connectivity:
    input:
        unpack(subject_inputs),
    output:
        qc=SUBJECT_OUTPUTS["qc"],
        maps=list(SUBJECT_OUTPUTS["maps"].values()),
        timeseries=SUBJECT_OUTPUTS["timeseries"],
        relmat=SUBJECT_OUTPUTS["relmat"],
        networks=SUBJECT_OUTPUTS["networks"],
        seed_maps=list(SUBJECT_OUTPUTS.get("seed_maps", {}).values()),
    params:
        fmriprep_dir=lambda wc: study_param(wc, "fmriprep_dir"),
        task=lambda wc: study_param(wc, "task"),
        space=lambda wc: study_param(wc, "space"),
        participant_id=lambda wc: f"sub-{wc.sub}",
        lesion_mask=lambda wc: subject_row(wc)["lesion_mask"],
        multi_run=config["data"]["multi_run"],
        denoise=config["denoise"],
        qc=config["qc"],
        connectivity=config["connectivity"],
        networks=NETWORKS,
    log:
        f"{R}/logs/compute_subject_connectivity/study-{{study}}_sub-{{sub}}.log",
    benchmark:
        f"{R}/benchmarks/compute_subject_connectivity/study-{{study}}_sub-{{sub}}.tsv"
    threads: lambda wc: resources_for("compute_subject_connectivity", "threads")
    resources:
        mem_mb=lambda wc: resources_for("compute_subject_connectivity", "mem_mb"),
        runtime=lambda wc: resources_for("compute_subject_connectivity", "runtime"),
    script:
        "../../scripts/compute_subject_connectivity.py"


ALL_TARGETS += [subject_outputs(R, row.study_id, row.label)["qc"]
                for row in PLAN.subjects.itertuples()]
