"""Snakemake adapter for rule build_literature_report -> msnet.report.build_literature_report."""

from msnet.logs import log_to_file
from msnet.report import build_literature_report

log_to_file(snakemake.log[0])
build_literature_report(snakemake.config, snakemake.input.peaks, snakemake.input.studies,
                        snakemake.params.outputs, snakemake.output.html,
                        snakemake.params.figures_dir, snakemake.output.citations)
