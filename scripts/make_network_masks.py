"""Snakemake adapter for rule make_network_masks -> msnet.group.make_network_masks."""

from msnet.logs import log_to_file
from msnet.group import make_network_masks

log_to_file(snakemake.log[0])
make_network_masks(snakemake.params.qc, snakemake.params.maps, snakemake.params.out_dir,
                   snakemake.params.options)
