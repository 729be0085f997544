"""Stage 6: figures and the self-contained HTML report (results/report.html)."""

from msnet.report import figure_paths, input_files, report_inputs

FIGURES_DIR = f"{R}/figures"
REPORT_INPUTS = report_inputs(
    R,
    STUDIES,
    subject_files("qc")[0],
    networks=NETWORKS,
    excluded_inputs=f"{R}/excluded_inputs.tsv",
    harmonize=config["group"]["harmonize"],
    space=SPACE,
    nbs=config["nbs"]["enabled"],
    literature=LITERATURE,
    qcfc=QCFC,
)
CAPTIONS = {
    "qc_overview": ("qc_overview.rst", "Dataset and QC"),
    "study_effects": ("study_effects.rst", "Group comparisons"),
    "glass_brain_pooled": ("glass_brain.rst", "Voxelwise results"),
    "glass_brain_meta": ("glass_brain.rst", "Voxelwise results"),
    "forest": ("forest.rst", "Meta-analysis"),
    "funnel": ("funnel.rst", "Meta-analysis"),
    "bubble": ("bubble.rst", "Meta-regression"),
    "clinical_scatter": ("clinical_scatter.rst", "Clinical associations"),
    "qcfc_benchmarks": ("qcfc_benchmarks.rst", "Motion (QC-FC)"),
    "qcfc_fd": ("qcfc_fd.rst", "Motion (QC-FC)"),
}
# Snakemake's report() flag under another name: a line starting with `report` is read as the
# workflow's `report:` directive (by Snakemake and snakefmt)
FOR_REPORT = report
REPORT_FIGURES = [
    FOR_REPORT(
        path, caption=f"../report/{CAPTIONS[kind][0]}", category=CAPTIONS[kind][1]
    )
    for kind, paths in figure_paths(FIGURES_DIR, NETWORKS, "png", QCFC).items()
    for path in paths
]


rule record_excluded_inputs:
    output:
        table=f"{R}/excluded_inputs.tsv",
    log:
        f"{R}/logs/record_excluded_inputs.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=200,
        runtime=2,
    params:
        records=PLAN.excluded.to_dict("records"),
    script:
        "../../scripts/record_excluded_inputs.py"


rule build_report:
    input:
        input_files(REPORT_INPUTS),
    output:
        html=f"{R}/report.html",
        comparison=report(
            f"{R}/report_desc-published_comparison.tsv",
            caption="../report/published_comparison.rst",
            category="Findings",
        ),
        citations=f"{R}/citations.bib",
        figures=REPORT_FIGURES,
        svg=[
            p
            for paths in figure_paths(FIGURES_DIR, NETWORKS, "svg", QCFC).values()
            for p in paths
        ],
    log:
        f"{R}/logs/build_report.log",
    benchmark:
        f"{R}/benchmarks/build_report.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=lambda wc: resources_for("build_report", "mem_mb"),
        runtime=lambda wc: resources_for("build_report", "runtime"),
    params:
        inputs=REPORT_INPUTS,
        figures_dir=output_folder("figures"),
    script:
        "../../scripts/build_report.py"


ALL_TARGETS += [rules.build_report.output.html]
