"""Snakemake adapter for rule clinical_study -> msnet.clinical.clinical_study."""

from msnet.clinical import clinical_study
from msnet.logs import log_to_file

log_to_file(snakemake.log[0])
clinical_study(snakemake.input.participants, snakemake.params.qc, snakemake.params.networks,
               snakemake.wildcards.study, snakemake.params.out_dir, snakemake.params.options)
