"""Snakemake adapter for rule summarise_study_qc -> msnet.qc.summarise_study_qc."""

from msnet.logs import log_to_file
from msnet.qc import summarise_study_qc

log_to_file(snakemake.log[0])
summarise_study_qc(snakemake.input.qc, snakemake.input.participants, snakemake.wildcards.study,
                   snakemake.output.table)
