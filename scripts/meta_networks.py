"""Snakemake adapter for rule meta_networks -> msnet.meta.meta_networks."""

from msnet.logs import log_to_file
from msnet.meta import meta_networks

log_to_file(snakemake.log[0])
meta_networks(snakemake.params.tables, snakemake.params.participants, snakemake.params.out_dir,
              snakemake.params.options)
