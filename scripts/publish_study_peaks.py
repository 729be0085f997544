"""Snakemake adapter for rule publish_study_peaks -> msnet.literature.publish_study_peaks."""

from msnet.literature import publish_study_peaks
from msnet.logs import log_to_file

log_to_file(snakemake.log[0])
publish_study_peaks(snakemake.params.t_maps, snakemake.params.tables,
                    snakemake.input.moderators, snakemake.output.peaks,
                    snakemake.output.studies)
