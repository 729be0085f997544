"""The results folder as a BIDS-derivatives dataset: dataset_description.json, the config
snapshot and the atlas table the subject sidecars refer to (msnet.derivatives)."""

from msnet.derivatives import ATLAS_FILE, CONFIG_SNAPSHOT, config_hash


rule describe_derivatives:
    output:
        description=f"{R}/dataset_description.json",
        config=f"{R}/{CONFIG_SNAPSHOT}",
        atlas=f"{R}/{ATLAS_FILE}",
    log:
        f"{R}/logs/describe_derivatives.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=300,
        runtime=2,
    params:
        # a changed config (its hash) re-runs this rule, so the description stays true
        config_hash=config_hash(config),
        config=dict(config),
        sources=[] if SIMULATE else [STUDY_ROWS[s]["fmriprep_dir"] for s in STUDIES],
    script:
        "../../scripts/describe_derivatives.py"


ALL_TARGETS += rules.describe_derivatives.output
