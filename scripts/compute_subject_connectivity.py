"""Snakemake adapter for rule compute_subject_connectivity -> msnet.connectivity."""

from msnet.connectivity import compute_subject_connectivity
from msnet.logs import log_to_file

log_to_file(snakemake.log[0])
out = snakemake.output
nets = snakemake.params.networks
out_paths = {
    "qc": out.qc,
    "maps": dict(zip(nets, out.maps)),
    "timeseries": out.timeseries,
    "relmat": out.relmat,
    "networks": out.networks,
}
if out.seed_maps:
    out_paths["seed_maps"] = dict(zip(nets, out.seed_maps))
compute_subject_connectivity(
    snakemake.params.fmriprep_dir,
    snakemake.params.participant_id,
    out_paths,
    denoise_options=snakemake.params.denoise,
    qc_options=snakemake.params.qc,
    connectivity_options=snakemake.params.connectivity,
    task=snakemake.params.task,
    space=snakemake.params.space,
    multi_run=snakemake.params.multi_run,
    lesion_mask=snakemake.params.lesion_mask,
    study_id=snakemake.wildcards.study,
)
