"""Snakemake adapter for rule compare_groups_study -> msnet.group.compare_groups_study."""

from msnet.logs import log_to_file
from msnet.group import compare_groups_study

log_to_file(snakemake.log[0])
compare_groups_study(snakemake.input.participants, snakemake.params.qc, snakemake.params.networks,
                     snakemake.params.maps, snakemake.params.masks, snakemake.wildcards.study,
                     snakemake.params.out_dir, snakemake.params.options)
