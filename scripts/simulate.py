"""Snakemake adapter for rule simulate -> msnet.simulate.write_dataset_index."""

from msnet.logs import log_to_file
from msnet.simulate import write_dataset_index

log_to_file(snakemake.log[0])
write_dataset_index(snakemake.params.sim, snakemake.params.seed, snakemake.params.out_dir)
