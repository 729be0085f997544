"""Stage 5: random-effects meta-analysis across studies, meta-regression, meta vs mega."""


rule meta_networks:
    input:
        tables=expand(rules.compare_groups_study.output.table, study=STUDIES),
        participants=[participants_tsv(s) for s in STUDIES],
    output:
        tables=expand(f"{META_DIR}/meta_desc-{{name}}_stats.tsv", name=META_TABLES),
        moderators=f"{META_DIR}/meta_desc-studies_moderators.tsv",
        forest=f"{META_DIR}/meta_desc-forest_data.tsv",
    log:
        f"{R}/logs/meta_networks.log",
    benchmark:
        f"{R}/benchmarks/meta_networks.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=lambda wc: resources_for("meta_networks", "mem_mb"),
        runtime=lambda wc: resources_for("meta_networks", "runtime"),
    params:
        tables=dict(
            zip(
                STUDIES, expand(rules.compare_groups_study.output.table, study=STUDIES)
            )
        ),
        participants={s: participants_tsv(s) for s in STUDIES},
        options=META_OPTIONS,
        out_dir=output_folder("moderators"),
    script:
        "../../scripts/meta_networks.py"


rule meta_voxelwise:
    input:
        g=lambda wc: list(study_maps("g", wc.net).values()),
        varg=lambda wc: list(study_maps("varg", wc.net).values()),
        mask=MASK_PATTERN,
        moderators=rules.meta_networks.output.moderators,
    output:
        maps=expand(
            f"{META_DIR}/{map_name('meta_network-{{net}}', '{stat}', SPACE)}",
            stat=["g", "z", "logpfwe", "fdrq", "i2", "tau2"],
        ),
        clusters=f"{META_DIR}/meta_network-{{net}}_clusters.tsv",
    log:
        f"{R}/logs/meta_voxelwise/network-{{net}}.log",
    benchmark:
        f"{R}/benchmarks/meta_voxelwise/network-{{net}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=lambda wc: resources_for("meta_voxelwise", "mem_mb"),
        runtime=lambda wc: resources_for("meta_voxelwise", "runtime"),
    params:
        g=lambda wc: study_maps("g", wc.net),
        varg=lambda wc: study_maps("varg", wc.net),
        options=META_OPTIONS,
        out_dir=output_folder("clusters"),
    script:
        "../../scripts/meta_voxelwise.py"


rule meta_vs_mega:
    input:
        meta=f"{META_DIR}/meta_desc-networks_stats.tsv",
        mega=rules.compare_groups_pooled.output.table,
        combat=(
            rules.compare_groups_pooled_combat.output.table
            if config["group"]["harmonize"] == "combat"
            else []
        ),
    output:
        table=f"{META_DIR}/meta_desc-metavsmega_stats.tsv",
    log:
        f"{R}/logs/meta_vs_mega.log",
    benchmark:
        f"{R}/benchmarks/meta_vs_mega.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=lambda wc: resources_for("meta_vs_mega", "mem_mb"),
        runtime=lambda wc: resources_for("meta_vs_mega", "runtime"),
    params:
        alpha=config["meta"]["alpha"],
    script:
        "../../scripts/meta_vs_mega.py"


ALL_TARGETS += rules.meta_networks.output
ALL_TARGETS += expand(rules.meta_voxelwise.output.clusters, net=NETWORKS)
ALL_TARGETS += rules.meta_vs_mega.output
