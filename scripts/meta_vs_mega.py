"""Snakemake adapter for rule meta_vs_mega -> msnet.meta.meta_vs_mega."""

from msnet.logs import log_to_file
from msnet.meta import meta_vs_mega

log_to_file(snakemake.log[0])
meta_vs_mega(snakemake.input.meta, snakemake.input.mega, snakemake.output.table,
             alpha=snakemake.params.alpha, combat_table=snakemake.input.combat or None)
