"""Snakemake adapter for rule describe_derivatives -> msnet.derivatives.describe_derivatives."""

from msnet.derivatives import describe_derivatives
from msnet.logs import log_to_file

log_to_file(snakemake.log[0])
describe_derivatives(snakemake.params.config, dict(snakemake.output.items()),
                     snakemake.params.sources)
