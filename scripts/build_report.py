"""Snakemake adapter for rule build_report -> msnet.report.build_report."""

from msnet.logs import log_to_file
from msnet.report import build_report

log_to_file(snakemake.log[0])
build_report(snakemake.config, snakemake.params.inputs, snakemake.output.html,
             snakemake.params.figures_dir, snakemake.output.comparison,
             snakemake.output.citations)
