"""QC-FC on simulated data with a motion-driven FC artefact (simulate.motion_artifact): the
simple strategy (24 motion parameters + WM/CSF) leaves it and QC-FC detects it, with the
short-distance excess Power et al. described; censoring (scrubbing) and aCompCor remove most
of it. The subject stage and the QC-FC stage are the package functions the workflow calls."""

from pathlib import Path

import pandas as pd
import pytest

from msnet.config import validate_config
from msnet.io.plan import build_plan, simulated_dataset_dir, study_qc_table, subject_outputs

pytestmark = [pytest.mark.slow]


def _qcfc_run(root: Path, artifact: float) -> pd.DataFrame:
    from msnet import qcfc
    from msnet.connectivity import compute_subject_connectivity
    from msnet.qc import summarise_study_qc
    from msnet.simulate import simulate_study

    config = validate_config({
        "results_dir": str(root),
        "simulate": {"n_studies": 8, "scale": 0.15, "resolution_mm": 8, "n_volumes": 120,
                     "tr": 2.5, "motion_artifact": artifact},
        "qcfc": {"strategies": [{"name": "simple", "strategy": "simple"},
                                {"name": "scrubbing", "strategy": "scrubbing"},
                                {"name": "compcor", "strategy": "compcor"}]},
    })
    plan = build_plan(config)
    sim = simulated_dataset_dir(root)
    edges, qc = {}, {}
    for study in plan.studies["study_id"]:
        simulate_study(config["simulate"], config["seed"], study, sim)
    for row in plan.subjects.itertuples():
        paths = subject_outputs(root, row.study_id, row.label, qcfc=True)
        compute_subject_connectivity(
            str(sim / f"study-{row.study_id}"), row.participant_id, paths,
            denoise_options=config["denoise"], qc_options=config["qc"],
            connectivity_options=config["connectivity"], study_id=row.study_id,
            qcfc_options=config["qcfc"])
        edges[(row.study_id, row.participant_id)] = paths["qcfc"]
        qc.setdefault(row.study_id, []).append(paths["qc"])
    participants = {s: str(sim / f"study-{s}" / "participants.tsv") for s in qc}
    tables = []
    for study, files in qc.items():
        tables.append(study_qc_table(root, study))
        summarise_study_qc(files, participants[study], study, tables[-1])
    out = qcfc.compute_qcfc(tables, participants, edges, root / "qcfc", config["qcfc"],
                            config["denoise"])
    return pd.read_csv(out["strategies"], sep="\t").set_index("strategy")


def test_qcfc_detects_the_simulated_motion_artifact_and_censoring_or_compcor_reduce_it(
        tmp_path):
    stats = _qcfc_run(tmp_path, artifact=10.0)
    simple, scrub, compcor = (stats.loc[s] for s in ("simple", "scrubbing", "compcor"))
    assert stats["n"].min() >= 60
    assert simple["pct_sig_fdr"] > 1.0 and simple["pct_sig_uncorrected"] > 12.0
    assert simple["median_abs_r"] > simple["null_median_abs_r"] * 1.15
    assert simple["distance_rho"] < -0.05  # short edges inflated most
    # aCompCor: the artefact's patterns reach white matter and CSF
    assert compcor["pct_sig_uncorrected"] < simple["pct_sig_uncorrected"] / 2
    assert compcor["distance_rho"] > simple["distance_rho"] + 0.05
    # censoring: the disturbances start at the high-FD volumes it removes
    assert scrub["pct_sig_fdr"] < simple["pct_sig_fdr"] / 4
    for other in (scrub, compcor):
        assert other["median_abs_r"] < simple["median_abs_r"]


@pytest.mark.workflow
def test_tiny_workflow_writes_qcfc_and_its_report_section(tiny_workflow):
    """The shared tiny Snakemake run (conftest.tiny_workflow): the compute_qcfc rule's tables
    and benchmark file, each subject's strategies file, the report's verdict and figures."""
    from msnet.qcfc import output_paths, read_subject_edges

    assert tiny_workflow["proc"].returncode == 0, tiny_workflow["proc"].stderr[-3000:]
    results = tiny_workflow["results"]
    paths = output_paths(results / "qcfc")
    stats = pd.read_csv(paths["strategies"], sep="\t")
    assert list(stats["strategy"]) == ["main", "simple", "scrubbing", "compcor", "gsr"]
    assert (results / "benchmarks" / "compute_qcfc.tsv").is_file()
    files = sorted((results / "subjects").glob("study-*/sub-*/*_desc-strategies_edges.npz"))
    assert len(files) == 18
    edges = read_subject_edges(files[0])
    assert edges["fc"].shape == (5, 44850)
    html = (results / "report.html").read_text()
    section = html.split('<h2 id="motion-qcfc">')[1].split("</section>")[0]
    assert "The main analysis used the strategy" in section and section.count("<img ") == 2
    assert (results / "figures" / "qcfc_desc-benchmarks.svg").is_file()
