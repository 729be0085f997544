"""Snakemake adapter for rule compute_qcfc -> msnet.qcfc.compute_qcfc."""

from msnet.logs import log_to_file
from msnet.qcfc import compute_qcfc

log_to_file(snakemake.log[0])
compute_qcfc(snakemake.input.qc_tables, snakemake.params.participants,
             {(s["study_id"], s["participant_id"]): s["edges"] for s in snakemake.params.subjects},
             snakemake.params.out_dir, snakemake.params.options, snakemake.params.denoise)
