"""Resource requests grow with the inputs and config values replace the estimates."""

import pytest

from msnet import simulate
from msnet.config import validate_config
from msnet.io.plan import build_plan
from msnet.resources import Workload, estimate, rule_resource, workload

RULES = ["simulate_study", "simulate", "compute_subject_connectivity", "summarise_study_qc",
         "make_network_masks", "compare_groups_study", "compare_groups_pooled",
         "clinical_study", "clinical_pooled", "meta_networks", "meta_voxelwise",
         "meta_vs_mega", "build_report", "publish_study_peaks", "literature_meta",
         "nbs_analyses", "compute_qcfc"]


def _workload(**changes):
    base = dict(n_subjects=189, max_study_subjects=22, n_studies=25, grid_voxels=116_380,
                n_volumes=140, permutations={"group": 1000, "clinical": 1000, "meta": 500})
    return Workload(**{**base, **changes})


def test_every_rule_of_the_schema_has_a_model():
    config = validate_config({})
    assert set(config["resources"]) - {"subjects_per_job"} == set(RULES)
    for rule in RULES:
        request = estimate(rule, _workload())
        assert request["mem_mb"] >= 100 and request["runtime"] >= 2


def test_requests_grow_with_subjects_voxels_and_permutations():
    small, big = _workload(), _workload(n_subjects=2410, max_study_subjects=428)
    assert estimate("compare_groups_pooled", big)["mem_mb"] > 1.5 * estimate(
        "compare_groups_pooled", small)["mem_mb"]
    assert estimate("simulate_study", big)["runtime"] > estimate("simulate_study", small)["runtime"]
    fine = _workload(grid_voxels=1_082_035, n_volumes=300)  # fMRIPrep 2 mm, 300 volumes
    assert estimate("compute_subject_connectivity", fine)["mem_mb"] > 4 * estimate(
        "compute_subject_connectivity", small)["mem_mb"]
    assert estimate("compute_subject_connectivity", fine, 10)["runtime"] > estimate(
        "compute_subject_connectivity", fine, 1)["runtime"]
    more = _workload(permutations={"group": 10000, "clinical": 1000, "meta": 500})
    assert estimate("compare_groups_pooled", more)["runtime"] > estimate(
        "compare_groups_pooled", small)["runtime"]
    assert estimate("compare_groups_pooled", _workload(tfce=True))["runtime"] > estimate(
        "compare_groups_pooled", small)["runtime"]


MEASURED_PEAK_MB = {
    "compute_subject_connectivity": (334, 343), "simulate_study": (362, 375),
    "make_network_masks": (195, 629), "compare_groups_study": (159, 236),
    "compare_groups_pooled": (484, 941), "clinical_pooled": (188, 455),
    "meta_voxelwise": (286, 300), "build_report": (355, 373),
}
"""Peak RSS per rule printed by benchmarks/bench_fullscale.sh (2026-11-30): the demo (189
subjects) and scale 1 (2,410 subjects, 25 studies), 4 mm, runs of up to 240 volumes."""


MEASURED_MAX_MINUTES = {
    "simulate_study": 11.3, "compare_groups_pooled": 1.5, "clinical_pooled": 1.8,
    "meta_voxelwise": 3.8, "make_network_masks": 1.5, "build_report": 0.8,
}
"""Longest job of each rule at scale 1 in the same run (wall, on a machine with other work)."""


@pytest.mark.parametrize("rule", sorted(MEASURED_MAX_MINUTES))
def test_runtime_requests_cover_the_measured_scale_1_jobs(rule):
    full = _workload(n_subjects=2410, max_study_subjects=428, n_volumes=240)
    assert estimate(rule, full)["runtime"] >= 1.5 * MEASURED_MAX_MINUTES[rule]


@pytest.mark.parametrize("rule", sorted(MEASURED_PEAK_MB))
def test_memory_requests_cover_the_measured_peaks_without_waste(rule):
    """Each request is at least 1.5x the measured peak (headroom) and at most 6x (a request
    far above the need keeps jobs pending on small nodes), at both scales."""
    demo = _workload(max_study_subjects=22, n_volumes=240)
    full = _workload(n_subjects=2410, max_study_subjects=428, n_volumes=240)
    for w, peak in zip((demo, full), MEASURED_PEAK_MB[rule], strict=True):
        request = estimate(rule, w, 10)["mem_mb"]
        assert 1.5 * peak <= request <= 6 * peak, (rule, w.n_subjects, request, peak)


def test_demo_workload_comes_from_the_simulation_settings():
    config = validate_config({"simulate": {"n_studies": 3, "resolution_mm": 8}})
    w = workload(config, build_plan(config))
    assert w.n_studies == 3  # the longest of the three studies' runs (n_volumes null):
    assert w.n_volumes == max(volumes for volumes, _ in simulate.STUDY_PROTOCOLS[:3])
    fixed = validate_config({"simulate": {"n_studies": 3, "resolution_mm": 8, "n_volumes": 90}})
    assert workload(fixed, build_plan(fixed)).n_volumes == 90
    assert w.grid_voxels == 23 * 28 * 23  # 182 x 218 x 182 mm at 8 mm
    assert w.permutations["group"] == config["group"]["n_permutations"]


def test_unknown_rule_is_refused():
    with pytest.raises(KeyError, match="no resource model"):
        estimate("no_such_rule", _workload())


def test_config_values_replace_the_estimates():
    config = validate_config({"resources": {"compare_groups_pooled": {"mem_mb": 8000},
                                            "compute_subject_connectivity": {"runtime": 3}}})
    w = _workload()
    assert rule_resource(config, "compare_groups_pooled", "mem_mb", w) == 8000
    assert rule_resource(config, "compare_groups_pooled", "runtime", w) == estimate(
        "compare_groups_pooled", w)["runtime"]
    assert rule_resource(config, "compare_groups_pooled", "threads", w) == 2
    assert rule_resource(config, "compute_subject_connectivity", "runtime", w, 10) == 30


def test_real_data_workload_takes_the_largest_study_run(tmp_path):
    """Real data: the grid and run length come from each study's first BOLD header, so a study
    with longer runs than the first one raises the estimate (headers only)."""
    from types import SimpleNamespace

    import nibabel as nib
    import numpy as np
    import pandas as pd

    def bold(name, shape):
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), path)
        return [str(path)]

    subjects = pd.DataFrame({
        "study_id": ["A", "A", "B"],
        "bold": [bold("a1", (4, 5, 6, 30)), bold("a2", (4, 5, 6, 300)), bold("b1", (6, 5, 6, 80))],
    })
    config = validate_config({})
    config["data"]["mode"] = "fmriprep"
    w = workload(config, SimpleNamespace(subjects=subjects))
    assert (w.grid_voxels, w.n_volumes, w.n_studies, w.max_study_subjects) == (180, 80, 2, 2)


def test_nbs_request_grows_with_subjects_and_its_permutations():
    small = _workload(permutations={"group": 1000, "clinical": 1000, "meta": 500, "nbs": 250})
    big = _workload(n_subjects=2410, permutations={"group": 1000, "clinical": 1000, "meta": 500,
                                                   "nbs": 5000})
    assert estimate("nbs_analyses", big)["mem_mb"] > 2 * estimate("nbs_analyses", small)["mem_mb"]
    assert estimate("nbs_analyses", big)["runtime"] > 10 * estimate("nbs_analyses", small)["runtime"]
