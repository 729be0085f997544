"""Snakemake adapter for rule nbs_analyses -> msnet.nbs.nbs_analyses."""

from msnet.logs import log_to_file
from msnet.nbs import nbs_analyses

log_to_file(snakemake.log[0])
nbs_analyses(snakemake.params.participants, snakemake.params.qc, snakemake.params.relmats,
             snakemake.params.out_dir, {**snakemake.params.options, "n_jobs": snakemake.threads},
             snakemake.params.group, snakemake.params.clinical)
