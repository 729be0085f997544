"""Literature mode (msnet.literature): ALE and MKDA (NiMARE), the SDM-style and hybrid
meta-analyses of published peaks, and in the demo their comparison with the image-based
meta-analysis of the same studies. results/literature/."""

from msnet.literature import literature_enabled, literature_outputs
from msnet.report import literature_figure_paths

LITERATURE = literature_enabled(config)
LIT_DIR = f"{R}/literature"
LIT = config["literature"]
# the demo without tables of its own: every simulated study publishes its t maps' peaks
LIT_PUBLISH = SIMULATE and not LIT["peaks_tsv"]
LIT_TABLES = (
    {
        "peaks": f"{LIT_DIR}/published/literature_desc-published_peaks.tsv",
        "studies": f"{LIT_DIR}/published/literature_desc-published_studies.tsv",
    }
    if LIT_PUBLISH
    else {"peaks": LIT["peaks_tsv"], "studies": LIT["studies_tsv"]}
)
# the hybrid's image studies: half of the demo's (the other half as peaks), else all of them
LIT_IMAGE_STUDIES = STUDIES[::2] if LIT_PUBLISH else STUDIES
LIT_OUT = literature_outputs(
    LIT_DIR,
    NETWORKS,
    SPACE,
    hybrid=bool(STUDIES),
    comparison=bool(STUDIES),
    masks=not STUDIES,
)


# network -> study -> (g, var(g)) of the hybrid's image studies; network -> the image-based
# meta-analysis' z and signed -log10 FWE p maps
LIT_IMAGE_MAPS = {
    net: {
        s: (study_maps("g", net)[s], study_maps("varg", net)[s])
        for s in LIT_IMAGE_STUDIES
    }
    for net in NETWORKS
}
LIT_IBMA_MAPS = {
    net: {
        s: f"{META_DIR}/{map_name(f'meta_network-{net}', s, SPACE)}"
        for s in ("z", "logpfwe")
    }
    for net in NETWORKS
}


if LITERATURE and LIT_PUBLISH:

    rule publish_study_peaks:
        input:
            t=[study_maps("t", net)[s] for s in STUDIES for net in NETWORKS],
            tables=expand(rules.compare_groups_study.output.table, study=STUDIES),
            moderators=rules.meta_networks.output.moderators,
        output:
            peaks=LIT_TABLES["peaks"],
            studies=LIT_TABLES["studies"],
        log:
            f"{R}/logs/publish_study_peaks.log",
        benchmark:
            f"{R}/benchmarks/publish_study_peaks.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=lambda wc: resources_for("publish_study_peaks", "mem_mb"),
            runtime=lambda wc: resources_for("publish_study_peaks", "runtime"),
        params:
            t_maps={
                s: {net: study_maps("t", net)[s] for net in NETWORKS} for s in STUDIES
            },
            tables=dict(
                zip(
                    STUDIES,
                    expand(rules.compare_groups_study.output.table, study=STUDIES),
                )
            ),
        script:
            "../../scripts/publish_study_peaks.py"

    localrules:
        publish_study_peaks,


if LITERATURE:

    rule literature_meta:
        input:
            peaks=LIT_TABLES["peaks"],
            studies=LIT_TABLES["studies"],
            masks=expand(MASK_PATTERN, net=NETWORKS) if STUDIES else [],
            images=[
                p for maps in LIT_IMAGE_MAPS.values() for g in maps.values() for p in g
            ],
            moderators=rules.meta_networks.output.moderators if STUDIES else [],
            ibma=(
                [p for maps in LIT_IBMA_MAPS.values() for p in maps.values()]
                if STUDIES
                else []
            ),
        output:
            maps=[
                p
                for net in LIT_OUT["maps"].values()
                for stats in net.values()
                for p in stats.values()
            ],
            clusters=[p for net in LIT_OUT["clusters"].values() for p in net.values()],
            tables=[
                LIT_OUT[k]
                for k in ("metaregression", "comparison", "recovery")
                if k in LIT_OUT
            ],
            methods=LIT_OUT["methods"],
            masks=list(LIT_OUT.get("masks", {}).values()),
        log:
            f"{R}/logs/literature_meta.log",
        benchmark:
            f"{R}/benchmarks/literature_meta.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=lambda wc: resources_for("literature_meta", "mem_mb"),
            runtime=lambda wc: resources_for("literature_meta", "runtime"),
        params:
            out_dir=output_folder("methods"),
            options={
                **LIT,
                "meta": META_OPTIONS,
                "radius_mm": config["report"]["radius_mm"],
                "networks": NETWORKS,
            },
            space=SPACE,
            masks=(
                dict(zip(NETWORKS, expand(MASK_PATTERN, net=NETWORKS)))
                if STUDIES
                else None
            ),
            image_maps=LIT_IMAGE_MAPS if STUDIES else None,
            ibma_maps=LIT_IBMA_MAPS if STUDIES else None,
            simulated=SIMULATE,
        script:
            "../../scripts/literature_meta.py"

    ALL_TARGETS += rules.literature_meta.output


if LITERATURE and not STUDIES:

    rule build_literature_report:
        input:
            rules.literature_meta.output,
            peaks=LIT_TABLES["peaks"],
            studies=LIT_TABLES["studies"],
        output:
            html=f"{R}/report.html",
            citations=f"{R}/citations.bib",
            figures=literature_figure_paths(f"{R}/figures", NETWORKS, "png"),
            svg=literature_figure_paths(f"{R}/figures", NETWORKS, "svg"),
        log:
            f"{R}/logs/build_literature_report.log",
        benchmark:
            f"{R}/benchmarks/build_literature_report.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=lambda wc: resources_for("build_report", "mem_mb"),
            runtime=lambda wc: resources_for("build_report", "runtime"),
        params:
            outputs=LIT_OUT,
            figures_dir=output_folder("figures"),
        script:
            "../../scripts/build_literature_report.py"

    ALL_TARGETS += [rules.build_literature_report.output.html]
