"""QC-FC motion benchmarks across denoising strategies (msnet.qcfc): results/qcfc/."""

QCFC_DIR = f"{R}/qcfc"
QCFC_OUTPUTS = qcfc_outputs(QCFC_DIR)


if QCFC:

    rule compute_qcfc:
        input:
            participants=[participants_tsv(s) for s in STUDIES],
            qc_tables=qc_tables(),  # each stands for its study's subject files
        output:
            **QCFC_OUTPUTS,
        log:
            f"{R}/logs/compute_qcfc.log",
        benchmark:
            f"{R}/benchmarks/compute_qcfc.tsv"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=lambda wc: resources_for("compute_qcfc", "mem_mb"),
            runtime=lambda wc: resources_for("compute_qcfc", "runtime"),
        params:
            participants=dict(zip(STUDIES, [participants_tsv(s) for s in STUDIES])),
            subjects=[
                {
                    "study_id": row.study_id,
                    "participant_id": row.participant_id,
                    "edges": subject_outputs(
                        R, row.study_id, row.label, space=SPACE, qcfc=True
                    )["qcfc"],
                }
                for row in PLAN.subjects.itertuples()
            ],
            options=config["qcfc"],
            denoise=config["denoise"],
            out_dir=output_folder("strategies"),
        script:
            "../../scripts/compute_qcfc.py"

    ALL_TARGETS += rules.compute_qcfc.output
