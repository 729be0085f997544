"""Snakemake adapter for rule literature_meta -> msnet.literature.literature_meta."""

from msnet.literature import literature_meta
from msnet.logs import log_to_file

log_to_file(snakemake.log[0])
literature_meta(snakemake.input.peaks, snakemake.input.studies, snakemake.params.out_dir,
                snakemake.params.options, snakemake.params.space, snakemake.params.masks,
                snakemake.params.image_maps, snakemake.input.moderators or None,
                snakemake.params.ibma_maps, snakemake.params.simulated)
