"""Snakemake adapter for rule simulate_study -> msnet.simulate.simulate_study."""

from msnet.logs import log_to_file
from msnet.simulate import simulate_study

log_to_file(snakemake.log[0])
simulate_study(
    snakemake.params.sim, snakemake.params.seed, snakemake.wildcards.study, snakemake.params.out_dir
)
