"""Stage 3: MS vs HC per study and pooled (network level and voxelwise)."""

GROUP_DIR = f"{R}/group"
MASK_PATTERN = f"{GROUP_DIR}/masks/network-{{net}}_mask.nii.gz"
GROUP_OPTIONS = {**config["group"], "seed": config["seed"]}


def participants_tsv(study):
    """The study's participants.tsv (for the demo, written by rule simulate_study)."""
    if SIMULATE:
        return f"{SIM_DIR}/study-{study}/participants.tsv"
    return STUDY_ROWS[study]["participants_tsv"]


SUBJECT_PATHS = {study: [] for study in STUDIES}  # study -> each subject's output paths
for _row in PLAN.subjects.itertuples():
    SUBJECT_PATHS[_row.study_id].append(subject_outputs(R, _row.study_id, _row.label))


def subject_files(kind, study=None, net=None):
    """Subject-stage outputs of every subject (of one study when `study` is given)."""
    studies = STUDIES if study is None else [study]
    paths = [p for s in studies for p in SUBJECT_PATHS[s]]
    return [p["maps"][net] if kind == "map" else p[kind] for p in paths]


def subject_maps(study=None):
    return {net: subject_files("map", study, net) for net in NETWORKS}


def qc_tables(study=None):
    """The study QC tables that stand for the subject outputs in later rules' inputs.

    Later rules take the per-subject files as params: one graph edge per study instead of
    six per subject keeps `snakemake -n` fast at 2,410 subjects.
    """
    return [study_qc_table(R, s) for s in (STUDIES if study is None else [study])]


rule make_network_masks:
    input:
        qc_tables=qc_tables(),
    output:
        masks=expand(MASK_PATTERN, net=NETWORKS),
    params:
        qc=subject_files("qc"),
        maps=subject_maps(),
        options=GROUP_OPTIONS,
        out_dir=f"{GROUP_DIR}/masks",
    log:
        f"{R}/logs/make_network_masks.log",
    benchmark:
        f"{R}/benchmarks/make_network_masks.tsv"
    threads: 1
    resources:
        mem_mb=lambda wc: resources_for("make_network_masks", "mem_mb"),
        runtime=lambda wc: resources_for("make_network_masks", "runtime"),
    script:
        "../../scripts/make_network_masks.py"


rule compare_groups_study:
    input:
        participants=lambda wc: participants_tsv(wc.study),
        qc_tables=lambda wc: qc_tables(wc.study),
        masks=expand(MASK_PATTERN, net=NETWORKS),
    output:
        table=f"{GROUP_DIR}/study-{{study}}/study-{{study}}_desc-MSvsHC_networks.tsv",
        exclusions=f"{GROUP_DIR}/study-{{study}}/study-{{study}}_desc-exclusions.tsv",
        g=expand(f"{GROUP_DIR}/study-{{{{study}}}}/study-{{{{study}}}}_network-{{net}}_stat-g_map.nii.gz", net=NETWORKS),
        varg=expand(f"{GROUP_DIR}/study-{{{{study}}}}/study-{{{{study}}}}_network-{{net}}_stat-varg_map.nii.gz", net=NETWORKS),
    params:
        qc=lambda wc: subject_files("qc", wc.study),
        networks=lambda wc: subject_files("networks", wc.study),
        maps=lambda wc: subject_maps(wc.study),
        masks=dict(zip(NETWORKS, expand(MASK_PATTERN, net=NETWORKS))),
        options=GROUP_OPTIONS,
        out_dir=lambda wc: f"{GROUP_DIR}/study-{wc.study}",
    log:
        f"{R}/logs/compare_groups_study/study-{{study}}.log",
    benchmark:
        f"{R}/benchmarks/compare_groups_study/study-{{study}}.tsv"
    threads: 1
    resources:
        mem_mb=lambda wc: resources_for("compare_groups_study", "mem_mb"),
        runtime=lambda wc: resources_for("compare_groups_study", "runtime"),
    script:
        "../../scripts/compare_groups_study.py"


POOLED_DIR = f"{GROUP_DIR}/pooled"

rule compare_groups_pooled:
    input:
        participants=[participants_tsv(s) for s in STUDIES],
        qc_tables=qc_tables(),
        masks=expand(MASK_PATTERN, net=NETWORKS),
    output:
        table=f"{POOLED_DIR}/pooled_desc-MSvsHC_networks.tsv",
        exclusions=f"{POOLED_DIR}/pooled_desc-exclusions.tsv",
        t=expand(f"{POOLED_DIR}/pooled_network-{{net}}_stat-t_map.nii.gz", net=NETWORKS),
        logpfwe=expand(f"{POOLED_DIR}/pooled_network-{{net}}_stat-logpfwe_map.nii.gz", net=NETWORKS),
        clusters=expand(f"{POOLED_DIR}/pooled_network-{{net}}_clusters.tsv", net=NETWORKS),
    params:
        participants=lambda wc: {s: participants_tsv(s) for s in STUDIES},
        qc=subject_files("qc"),
        networks=subject_files("networks"),
        maps=subject_maps(),
        masks=dict(zip(NETWORKS, expand(MASK_PATTERN, net=NETWORKS))),
        options=GROUP_OPTIONS,
        out_dir=POOLED_DIR,
    log:
        f"{R}/logs/compare_groups_pooled.log",
    benchmark:
        f"{R}/benchmarks/compare_groups_pooled.tsv"
    threads: lambda wc: resources_for("compare_groups_pooled", "threads")
    resources:
        mem_mb=lambda wc: resources_for("compare_groups_pooled", "mem_mb"),
        runtime=lambda wc: resources_for("compare_groups_pooled", "runtime"),
    script:
        "../../scripts/compare_groups_pooled.py"


ALL_TARGETS += expand(rules.compare_groups_study.output.table, study=STUDIES)
ALL_TARGETS += rules.compare_groups_pooled.output
