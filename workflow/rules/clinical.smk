"""Stage 4: connectivity ~ disease duration + EDSS (+ covariates) within MS."""


rule clinical_study:
    input:
        participants=lambda wc: participants_tsv(wc.study),
        qc_tables=lambda wc: qc_tables(wc.study),
    output:
        table=f"{CLINICAL_DIR}/study-{{study}}_desc-clinical_networks.tsv",
    log:
        f"{R}/logs/clinical_study/study-{{study}}.log",
    benchmark:
        f"{R}/benchmarks/clinical_study/study-{{study}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=lambda wc: resources_for("clinical_study", "mem_mb"),
        runtime=lambda wc: resources_for("clinical_study", "runtime"),
    params:
        qc=lambda wc: subject_files("qc", wc.study),
        networks=lambda wc: subject_files("networks", wc.study),
        options=CLINICAL_OPTIONS,
        out_dir=output_folder("table"),
    script:
        "../../scripts/clinical_study.py"


rule clinical_pooled:
    input:
        participants=[participants_tsv(s) for s in STUDIES],
        qc_tables=qc_tables(),
        masks=expand(MASK_PATTERN, net=NETWORKS),
    output:
        table=f"{CLINICAL_DIR}/pooled_desc-clinical_networks.tsv",
        scatter=f"{CLINICAL_DIR}/pooled_desc-partialregression_scatter.tsv",
        exclusions=f"{CLINICAL_DIR}/pooled_desc-clinicalexclusions.tsv",
    log:
        f"{R}/logs/clinical_pooled.log",
    benchmark:
        f"{R}/benchmarks/clinical_pooled.tsv"
    conda:
        CONDA_ENV
    threads: lambda wc: resources_for("clinical_pooled", "threads")
    resources:
        mem_mb=lambda wc: resources_for("clinical_pooled", "mem_mb"),
        runtime=lambda wc: resources_for("clinical_pooled", "runtime"),
    params:
        participants=lambda wc: {s: participants_tsv(s) for s in STUDIES},
        qc=subject_files("qc"),
        networks=subject_files("networks"),
        maps=subject_maps(),
        masks=dict(zip(NETWORKS, expand(MASK_PATTERN, net=NETWORKS))),
        options=CLINICAL_OPTIONS,
        out_dir=output_folder("table"),
    script:
        "../../scripts/clinical_pooled.py"


ALL_TARGETS += expand(rules.clinical_study.output.table, study=STUDIES)
ALL_TARGETS += rules.clinical_pooled.output
