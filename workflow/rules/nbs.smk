"""Edge-level inference: the Network-Based Statistic on the 300-ROI matrices (msnet.nbs)."""

from msnet.nbs import output_paths as nbs_output_paths

NBS_DIR = f"{R}/nbs"
NBS_OPTIONS = {**config["nbs"], "seed": config["seed"]}
NBS_OUTPUTS = nbs_output_paths(NBS_DIR)


if config["nbs"]["enabled"]:

    rule nbs_analyses:
        input:
            participants=[participants_tsv(s) for s in STUDIES],
            qc_tables=qc_tables(),
        output:
            analyses=NBS_OUTPUTS["analyses"],
            components=NBS_OUTPUTS["components"],
            edges=NBS_OUTPUTS["edges"],
            networkpairs=NBS_OUTPUTS["networkpairs"],
            figures=[p for f in NBS_OUTPUTS["figures"].values() for p in f.values()],
        log:
            f"{R}/logs/nbs_analyses.log",
        benchmark:
            f"{R}/benchmarks/nbs_analyses.tsv"
        conda:
            CONDA_ENV
        threads: lambda wc: resources_for("nbs_analyses", "threads")
        resources:
            mem_mb=lambda wc: resources_for("nbs_analyses", "mem_mb"),
            runtime=lambda wc: resources_for("nbs_analyses", "runtime"),
        params:
            participants=lambda wc: {s: participants_tsv(s) for s in STUDIES},
            qc=subject_files("qc"),
            relmats=subject_files("relmat"),
            options=NBS_OPTIONS,
            group=config["group"],
            clinical=config["clinical"],
            out_dir=output_folder("analyses"),
        script:
            "../../scripts/nbs_analyses.py"

    ALL_TARGETS += rules.nbs_analyses.output
