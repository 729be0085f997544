"""Snakemake adapter for rule meta_voxelwise -> msnet.meta.meta_voxelwise."""

from msnet.logs import log_to_file
from msnet.meta import meta_voxelwise

log_to_file(snakemake.log[0])
meta_voxelwise(snakemake.params.g, snakemake.params.varg, snakemake.input.mask,
               snakemake.wildcards.net, snakemake.input.moderators, snakemake.params.out_dir,
               snakemake.params.options)
