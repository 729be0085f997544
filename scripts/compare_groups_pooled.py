"""Snakemake adapter for rule compare_groups_pooled -> msnet.group.compare_groups_pooled."""

from msnet.logs import log_to_file
from msnet.group import compare_groups_pooled

log_to_file(snakemake.log[0])
compare_groups_pooled(snakemake.params.participants, snakemake.params.qc, snakemake.params.networks,
                      snakemake.params.maps, snakemake.params.masks, snakemake.params.out_dir,
                      {**snakemake.params.options, "n_jobs": snakemake.threads})
