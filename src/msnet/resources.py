"""Memory and run time each rule asks for, scaled with what it processes.

A constant request is wrong at one end or the other: 4 GB per subject job is ten times what a
4 mm demo subject needs, and a pooled model's needs grow with subjects x voxels (about 1 GB
for 2,410 subjects at 4 mm, several at 2 mm), and a SLURM queue punishes both. Each rule's
``mem_mb`` and ``runtime`` here are a linear model of its input size (subjects, voxels,
volumes, permutations) whose coefficients come from the peaks that
``benchmarks/bench_fullscale.sh`` measured for the demo and for the 2,410-subject run on a
2-core machine, times :data:`HEADROOM`. A value set in the config's ``resources`` section
always wins over the estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HEADROOM = 2.0
"""Factor between the measured peak and the request (memory and time)."""

MNI_EXTENT_MM = (182.0, 218.0, 182.0)
"""Field of view of the MNI152 grid (91 x 109 x 91 voxels at 2 mm)."""

BRAIN_FRACTION = 0.27
"""Share of the MNI grid inside the brain mask (29,398 of 109,350 voxels at 4 mm)."""

NETWORKS = 4

NBS_EDGES = 44850
"""Edges of the Seitzman 300-ROI matrix (:mod:`msnet.nbs`)."""

LITERATURE_STUDIES = 50
"""Studies assumed per literature meta-analysis (the tables are read by the job, not at
planning); twice the reference meta-analysis's 25."""


@dataclass(frozen=True)
class Workload:
    """What the rules' costs grow with.

    Attributes
    ----------
    n_subjects : int
        Subjects in the plan.
    max_study_subjects : int
        Subjects in the largest study.
    n_studies : int
    grid_voxels : int
        Voxels of one BOLD volume (the whole grid).
    n_volumes : int
        Volumes of one BOLD run.
    permutations : dict
        Stage (``group``, ``clinical``, ``meta``) -> permutation count.
    tfce : bool
        Whether the pooled models compute TFCE (about ten times the permutation cost).
    """

    n_subjects: int
    max_study_subjects: int
    n_studies: int
    grid_voxels: int
    n_volumes: int
    permutations: dict
    tfce: bool = False

    @property
    def mask_voxels(self) -> int:
        """Estimated voxels in the analysis mask."""
        return int(self.grid_voxels * BRAIN_FRACTION)

    @property
    def bold_mb(self) -> float:
        """One BOLD run as float32, in MB."""
        return self.grid_voxels * self.n_volumes * 4 / 1e6


def workload(config: dict, plan) -> Workload:
    """The :class:`Workload` of a validated config and its plan.

    For the demo the grid follows ``simulate.resolution_mm`` and the longest simulated run; for
    real data it is the largest grid and the longest run among the BOLD headers of each
    study's first subject (one header per study, no voxel data): studies whose subjects'
    runs differ in size should set the subject rule's resources in the config.
    """
    counts = plan.subjects["study_id"].value_counts()
    if config["data"]["mode"] == "literature":  # no images: the literature grid
        res = config["literature"]["resolution_mm"]
        grid, n_volumes = math.prod(math.ceil(e / res) for e in MNI_EXTENT_MM), 0
    elif config["data"]["mode"] == "simulate":
        res = config["simulate"]["resolution_mm"]
        grid = math.prod(math.ceil(e / res) for e in MNI_EXTENT_MM)
        from msnet import simulate

        sim = simulate.sim_config(config["simulate"])
        n_volumes = max(volumes for volumes, _ in simulate.study_protocols(sim))
    else:
        import nibabel as nib

        firsts = plan.subjects.drop_duplicates("study_id")["bold"]
        shapes = [nib.load(runs[0]).shape for runs in firsts]
        grid = max(math.prod(shape[:3]) for shape in shapes)
        n_volumes = max(shape[3] for shape in shapes)
    return Workload(
        n_subjects=len(plan.subjects), max_study_subjects=int(counts.max()) if len(counts) else 0,
        n_studies=len(counts), grid_voxels=grid, n_volumes=n_volumes,
        permutations={k: int(config[k]["n_permutations"])
                      for k in ("group", "clinical", "meta", "literature", "nbs")},
        tfce=bool(config["group"].get("tfce")),
    )


def _request(mem_mb: float, minutes: float) -> dict:
    return {"mem_mb": int(math.ceil(HEADROOM * mem_mb / 100.0) * 100),
            "runtime": max(2, int(math.ceil(HEADROOM * minutes)))}


def estimate(rule: str, w: Workload, n_subjects: int | None = None) -> dict:
    """``mem_mb`` and ``runtime`` (minutes) to request for one job of a rule.

    Parameters
    ----------
    rule : str
        Rule name (the subject-stage rules by their common prefix
        ``compute_subject_connectivity``).
    w : Workload
    n_subjects : int, optional
        Subjects in this job (subject-stage chunks; default 1).

    Returns
    -------
    dict
        ``mem_mb`` and ``runtime``.
    """
    n = n_subjects or 1
    # Coefficients fitted to bench_fullscale.sh's peaks (demo: 189 subjects; scale 1: 2,410
    # subjects, 25 studies; 4 mm, 120-240 volumes, 1000/1000/500 permutations) and to
    # bench_subject.py at fMRIPrep size (97 x 115 x 97 x 300: 25-35 s per subject, loaded).
    # seconds per subject: simulating and processing both grow with grid x volumes
    per_subject_s = 0.5 + 6e-8 * w.grid_voxels * w.n_volumes
    # one permutation of the voxelwise GLM over the four network masks together (about one
    # brain's worth of voxels): about 1.1 ns per subject x brain voxel (numba kernels)
    perm_s = {k: 1.1e-9 * w.n_subjects * w.mask_voxels * v * (10 if w.tfce else 1)
              for k, v in w.permutations.items()}
    brain_maps_mb = w.n_subjects * w.mask_voxels * 8 / 1e6  # one float64 brain map per subject
    study_maps_mb = w.max_study_subjects * w.mask_voxels * 8 / 1e6
    pooled_min = 1 + w.n_subjects / 5000
    models = {
        "simulate_study": (300 + 3 * w.bold_mb, 1 + w.max_study_subjects * per_subject_s / 60),
        "simulate": (300, 1),
        "compute_subject_connectivity": (250 + 2 * w.bold_mb, 0.5 + n * per_subject_s / 60),
        "summarise_study_qc": (300, 1),
        "make_network_masks": (150 + 0.75 * brain_maps_mb, 1 + w.n_subjects / 2000),
        "compare_groups_study": (150 + study_maps_mb, 2),
        "compare_groups_pooled": (450 + brain_maps_mb, pooled_min + perm_s["group"] / 60),
        "clinical_study": (400, 2),
        "clinical_pooled": (150 + 0.5 * brain_maps_mb, pooled_min + perm_s["clinical"] / 60),
        "meta_networks": (400, 2),
        "meta_voxelwise": (400 + 40 * w.n_studies * w.mask_voxels * 8 / 1e6,
                           1 + 1e-8 * w.permutations["meta"] * w.n_studies * w.mask_voxels),
        "meta_vs_mega": (300, 1),
        "build_report": (500 + 0.1 * w.n_subjects, 1 + w.n_subjects / 2000),
        # QC-FC: a float32 subjects x 44,850-edge matrix per strategy (5), a float64 copy
        "compute_qcfc": (400 + w.n_subjects * 44850 * (4 * 5 + 8) / 1e6, 1 + w.n_subjects / 500),
        # nbs_analyses: every subject's 44,850 edges as float32 plus the engine's float64
        # and float32 residuals, and a 128 MB batch; per permutation of a pooled contrast
        # about 1.1 ns per subject x edge (the group stage's kernels), 3 contrasts
        "nbs_analyses": (600 + w.n_subjects * NBS_EDGES * 16 / 1e6,
                         2 + 3 * 1.1e-9 * w.n_subjects * NBS_EDGES
                         * w.permutations.get("nbs", 5000) / 60),
        "publish_study_peaks": (400, 1),
        # literature_meta: every network in one job (NiMARE is imported once); the study maps
        # of up to LITERATURE_STUDIES studies per network, and per network and permutation 10
        # refits (SDM-style and hybrid, sign flips and 4 moderators) at about 1 ns per study x
        # voxel (the meta stage's compiled kernels), plus ALE and MKDA (seconds each)
        "literature_meta": (600 + 4 * LITERATURE_STUDIES * w.mask_voxels * 8 / 1e6,
                            2 + 10e-9 * LITERATURE_STUDIES * w.mask_voxels
                            * w.permutations.get("literature", 1000) / 60),
    }
    if rule not in models:
        raise KeyError(f"no resource model for rule {rule!r}")
    return _request(*models[rule])


def rule_resource(config: dict, rule: str, key: str, w: Workload, n_subjects: int | None = None):
    """A rule's ``threads``, ``mem_mb`` or ``runtime``: the config's value, else the estimate.

    Parameters
    ----------
    config : dict
        Validated config (its ``resources`` section).
    rule, key : str
    w : Workload
    n_subjects : int, optional
        Subjects in a subject-stage job: an estimate covers them all, and a configured
        ``runtime`` of ``compute_subject_connectivity`` (per subject) is multiplied by it.
    """
    value = config["resources"][rule].get(key)
    if value is None:
        return estimate(rule, w, n_subjects)[key]
    if key == "runtime" and n_subjects:
        return value * n_subjects
    return value
