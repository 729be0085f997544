"""Snakemake adapter for the subject-stage rules -> msnet.connectivity.compute_subjects."""

from msnet.connectivity import compute_subjects
from msnet.logs import log_to_file

log_to_file(snakemake.log[0])
compute_subjects(snakemake.params.subjects, snakemake.params.options, threads=snakemake.threads)
