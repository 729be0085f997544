"""Snakemake adapter for rule record_excluded_inputs -> msnet.io.plan.record_excluded_inputs."""

from msnet.io.plan import record_excluded_inputs
from msnet.logs import log_to_file

log_to_file(snakemake.log[0])
record_excluded_inputs(snakemake.params.records, snakemake.output.table)
