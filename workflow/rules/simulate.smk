"""Stage 1 (demo only): write the synthetic fMRIPrep-like dataset."""

# A study's participants.tsv is written last, after all of its subjects' files, so it is the
# one output later rules depend on (Snakemake outputs cannot vary in number per wildcard).


if SIMULATE:

    rule simulate_study:
        output:
            participants=f"{SIM_DIR}/study-{{study}}/participants.tsv",
        log:
            f"{R}/logs/simulate_study/study-{{study}}.log",
        benchmark:
            f"{R}/benchmarks/simulate_study/study-{{study}}.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=lambda wc: resources_for("simulate_study", "mem_mb"),
            runtime=lambda wc: resources_for("simulate_study", "runtime"),
        params:
            sim=config["simulate"],
            seed=config["seed"],
            out_dir=output_folder("participants", up=2),
        script:
            "../../scripts/simulate_study.py"

    rule simulate:
        input:
            expand(f"{SIM_DIR}/study-{{study}}/participants.tsv", study=STUDIES),
        output:
            studies=f"{SIM_DIR}/studies.tsv",
            truth=f"{SIM_DIR}/ground_truth.json",
        log:
            f"{R}/logs/simulate.log",
        benchmark:
            f"{R}/benchmarks/simulate.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=lambda wc: resources_for("simulate", "mem_mb"),
            runtime=lambda wc: resources_for("simulate", "runtime"),
        params:
            sim=config["simulate"],
            seed=config["seed"],
            out_dir=output_folder("studies"),
        script:
            "../../scripts/simulate.py"

    ALL_TARGETS += rules.simulate.output
