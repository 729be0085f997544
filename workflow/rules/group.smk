"""Stage 3: MS vs HC per study and pooled (network level and voxelwise)."""


rule make_network_masks:
    input:
        qc_tables=qc_tables(),
    output:
        masks=expand(MASK_PATTERN, net=NETWORKS),
    log:
        f"{R}/logs/make_network_masks.log",
    benchmark:
        f"{R}/benchmarks/make_network_masks.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=lambda wc: resources_for("make_network_masks", "mem_mb"),
        runtime=lambda wc: resources_for("make_network_masks", "runtime"),
    params:
        qc=subject_files("qc"),
        maps=subject_maps(),
        options=GROUP_OPTIONS,
        out_dir=output_folder("masks"),
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
        g=expand(
            f"{GROUP_DIR}/study-{{{{study}}}}/{map_name('study-{{study}}_network-{net}', 'g', SPACE)}",
            net=NETWORKS,
        ),
        varg=expand(
            f"{GROUP_DIR}/study-{{{{study}}}}/{map_name('study-{{study}}_network-{net}', 'varg', SPACE)}",
            net=NETWORKS,
        ),
        t=expand(
            f"{GROUP_DIR}/study-{{{{study}}}}/{map_name('study-{{study}}_network-{net}', 't', SPACE)}",
            net=NETWORKS,
        ),
    log:
        f"{R}/logs/compare_groups_study/study-{{study}}.log",
    benchmark:
        f"{R}/benchmarks/compare_groups_study/study-{{study}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=lambda wc: resources_for("compare_groups_study", "mem_mb"),
        runtime=lambda wc: resources_for("compare_groups_study", "runtime"),
    params:
        qc=lambda wc: subject_files("qc", wc.study),
        networks=lambda wc: subject_files("networks", wc.study),
        maps=lambda wc: subject_maps(wc.study),
        masks=dict(zip(NETWORKS, expand(MASK_PATTERN, net=NETWORKS))),
        options=GROUP_OPTIONS,
        out_dir=output_folder("table"),
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
        t=expand(
            f"{POOLED_DIR}/{map_name('pooled_network-{net}', 't', SPACE)}",
            net=NETWORKS,
        ),
        logpfwe=expand(
            f"{POOLED_DIR}/{map_name('pooled_network-{net}', 'logpfwe', SPACE)}",
            net=NETWORKS,
        ),
        clusters=expand(
            f"{POOLED_DIR}/pooled_network-{{net}}_clusters.tsv", net=NETWORKS
        ),
    log:
        f"{R}/logs/compare_groups_pooled.log",
    benchmark:
        f"{R}/benchmarks/compare_groups_pooled.tsv"
    conda:
        CONDA_ENV
    threads: lambda wc: resources_for("compare_groups_pooled", "threads")
    resources:
        mem_mb=lambda wc: resources_for("compare_groups_pooled", "mem_mb"),
        runtime=lambda wc: resources_for("compare_groups_pooled", "runtime"),
    params:
        participants=lambda wc: {s: participants_tsv(s) for s in STUDIES},
        qc=subject_files("qc"),
        networks=subject_files("networks"),
        maps=subject_maps(),
        masks=dict(zip(NETWORKS, expand(MASK_PATTERN, net=NETWORKS))),
        options=GROUP_OPTIONS,
        out_dir=output_folder("table"),
    script:
        "../../scripts/compare_groups_pooled.py"


ALL_TARGETS += expand(rules.compare_groups_study.output.table, study=STUDIES)
ALL_TARGETS += rules.compare_groups_pooled.output


if config["group"]["harmonize"] == "combat":

    COMBAT_LABEL = "pooled_harmonize-combat"

    rule compare_groups_pooled_combat:
        input:
            participants=[participants_tsv(s) for s in STUDIES],
            qc_tables=qc_tables(),
            masks=expand(MASK_PATTERN, net=NETWORKS),
        output:
            table=f"{POOLED_DIR}/{COMBAT_LABEL}_desc-MSvsHC_networks.tsv",
            exclusions=f"{POOLED_DIR}/{COMBAT_LABEL}_desc-exclusions.tsv",
            shrinkage=f"{POOLED_DIR}/{COMBAT_LABEL}_desc-shrinkage_stats.tsv",
            t=expand(
                f"{POOLED_DIR}/{map_name(f'{COMBAT_LABEL}_network-{{net}}', 't', SPACE)}",
                net=NETWORKS,
            ),
            logpfwe=expand(
                f"{POOLED_DIR}/{map_name(f'{COMBAT_LABEL}_network-{{net}}', 'logpfwe', SPACE)}",
                net=NETWORKS,
            ),
            clusters=expand(
                f"{POOLED_DIR}/{COMBAT_LABEL}_network-{{net}}_clusters.tsv",
                net=NETWORKS,
            ),
        log:
            f"{R}/logs/compare_groups_pooled_combat.log",
        benchmark:
            f"{R}/benchmarks/compare_groups_pooled_combat.tsv"
        conda:
            CONDA_ENV
        threads: lambda wc: resources_for("compare_groups_pooled", "threads")
        resources:
            mem_mb=lambda wc: resources_for("compare_groups_pooled", "mem_mb"),
            runtime=lambda wc: resources_for("compare_groups_pooled", "runtime"),
        params:
            participants=lambda wc: {s: participants_tsv(s) for s in STUDIES},
            qc=subject_files("qc"),
            networks=subject_files("networks"),
            maps=subject_maps(),
            masks=dict(zip(NETWORKS, expand(MASK_PATTERN, net=NETWORKS))),
            sites={s: str(STUDY_ROWS[s]["site"]) for s in STUDIES},
            options=GROUP_OPTIONS,
            out_dir=output_folder("table"),
        script:
            "../../scripts/compare_groups_pooled_combat.py"

    ALL_TARGETS += rules.compare_groups_pooled_combat.output
