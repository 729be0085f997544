"""Snakemake adapter for rule compare_groups_pooled_combat ->
msnet.harmonize.compare_groups_pooled_combat."""

from msnet.harmonize import compare_groups_pooled_combat
from msnet.logs import log_to_file

log_to_file(snakemake.log[0])
compare_groups_pooled_combat(snakemake.params.participants, snakemake.params.qc,
                             snakemake.params.networks, snakemake.params.maps,
                             snakemake.params.masks, snakemake.params.out_dir,
                             {**snakemake.params.options, "n_jobs": snakemake.threads},
                             sites=snakemake.params.sites)
