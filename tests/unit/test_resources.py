"""Resource requests grow with the inputs and config values replace the estimates."""

import pytest

from msnet import simulate
from msnet.config import validate_config
from msnet.io.plan import build_plan
from msnet.resources import Workload, estimate, rule_resource, workload

RULES = ["simulate_study", "simulate", "compute_subject_connectivity", "summarise_study_qc",
         "make_network_masks", "compare_groups_study", "compare_groups_pooled",
         "clinical_study", "clinical_pooled", "meta_networks", "meta_voxelwise",
         "meta_vs_mega", "build_report"]


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
    assert estimate("compare_groups_pooled", big)["mem_mb"] > 4 * estimate(
        "compare_groups_pooled", small)["mem_mb"]
    assert estimate("simulate_study", big)["runtime"] > estimate("simulate_study", small)["runtime"]
    fine = _workload(grid_voxels=1_082_035, n_volumes=300)  # fMRIPrep 2 mm, 300 volumes
    assert estimate("compute_subject_connectivity", fine)["mem_mb"] > 4 * estimate(
        "compute_subject_connectivity", small)["mem_mb"]
    assert estimate("compute_subject_connectivity", small, 10)["runtime"] > estimate(
        "compute_subject_connectivity", small, 1)["runtime"]
    more = _workload(permutations={"group": 10000, "clinical": 1000, "meta": 500})
    assert estimate("compare_groups_pooled", more)["runtime"] > estimate(
        "compare_groups_pooled", small)["runtime"]
    assert estimate("compare_groups_pooled", _workload(tfce=True))["runtime"] > estimate(
        "compare_groups_pooled", small)["runtime"]


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
