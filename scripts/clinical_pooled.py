"""Snakemake adapter for rule clinical_pooled -> msnet.clinical.clinical_pooled."""

from msnet.clinical import clinical_pooled
from msnet.logs import log_to_file

log_to_file(snakemake.log[0])
clinical_pooled(snakemake.params.participants, snakemake.params.qc, snakemake.params.networks,
                snakemake.params.maps, snakemake.params.masks, snakemake.params.out_dir,
                {**snakemake.params.options, "n_jobs": snakemake.threads})
