"""Shared fixtures: the reduced synthetic dataset run through every stage in-process.

The Snakemake wiring is tested separately (``test_snakemake.py``); here the package
functions are called directly, in the order the workflow calls them, so the statistical
acceptance checks (planted effects recovered, clinical null kept) run in a few minutes.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from msnet import ANALYSIS_NETWORKS
from msnet.config import validate_config
from msnet.io.plan import build_plan, simulated_dataset_dir, subject_outputs

REPO = Path(__file__).resolve().parents[2]
N_PERM = 200


def reduced_config(results_dir, **simulate) -> dict:
    """The demo configuration on a coarser (6 mm) grid with fewer permutations."""
    return validate_config({
        "results_dir": str(results_dir),
        "simulate": {"resolution_mm": 6, **simulate},
        "group": {"n_permutations": N_PERM},
        "clinical": {"n_permutations": N_PERM},
        "meta": {"n_permutations": N_PERM},
    })


def simulate_and_process(config: dict) -> dict:
    """Write the synthetic dataset and run the subject stage for every subject.

    Returns
    -------
    dict
        (study_id, participant_id) -> that subject's output paths.
    """
    from msnet.connectivity import compute_subject_connectivity
    from msnet.simulate import simulate_study, write_dataset_index

    root = Path(config["results_dir"])
    plan = build_plan(config)
    sim_dir = simulated_dataset_dir(root)
    for study in plan.studies["study_id"]:
        simulate_study(config["simulate"], config["seed"], study, sim_dir)
    write_dataset_index(config["simulate"], config["seed"], sim_dir)
    subjects = {}
    for row in plan.subjects.itertuples():
        paths = subject_outputs(root, row.study_id, row.label)
        compute_subject_connectivity(
            str(sim_dir / f"study-{row.study_id}"), row.participant_id, paths,
            denoise_options=config["denoise"], qc_options=config["qc"],
            connectivity_options=config["connectivity"], study_id=row.study_id,
        )
        subjects[(row.study_id, row.participant_id)] = paths
    return subjects


def run_pipeline(config: dict, voxelwise_meta: bool = True) -> dict:
    """Simulate, process every subject, then run group, clinical and meta stages.

    Returns
    -------
    dict
        Paths of the main outputs (see the keys below).
    """
    from msnet import clinical, group, meta

    root = Path(config["results_dir"])
    sim_dir = simulated_dataset_dir(root)
    subjects = simulate_and_process(config)
    qc = [p["qc"] for p in subjects.values()]
    nets_tsv = [p["networks"] for p in subjects.values()]
    maps = {n: [p["maps"][n] for p in subjects.values()] for n in ANALYSIS_NETWORKS}
    participants = {s: str(sim_dir / f"study-{s}" / "participants.tsv")
                    for s in build_plan(config).studies["study_id"]}

    group_opts = {**config["group"], "seed": config["seed"]}
    masks = group.make_network_masks(qc, maps, root / "group" / "masks", group_opts)
    study_tables, g_maps, v_maps = {}, {n: {} for n in ANALYSIS_NETWORKS}, {
        n: {} for n in ANALYSIS_NETWORKS}
    for study, tsv in participants.items():
        out = root / "group" / f"study-{study}"
        keys = [k for k in subjects if k[0] == study]
        group.compare_groups_study(
            tsv, [subjects[k]["qc"] for k in keys], [subjects[k]["networks"] for k in keys],
            {n: [subjects[k]["maps"][n] for k in keys] for n in ANALYSIS_NETWORKS},
            masks, study, out, group_opts)
        study_tables[study] = str(out / f"study-{study}_desc-MSvsHC_networks.tsv")
        for n in ANALYSIS_NETWORKS:
            g_maps[n][study] = str(out / f"study-{study}_network-{n}_space-MNI152NLin2009cAsym_stat-g_map.nii.gz")
            v_maps[n][study] = str(out / f"study-{study}_network-{n}_space-MNI152NLin2009cAsym_stat-varg_map.nii.gz")
    pooled_dir = root / "group" / "pooled"
    group.compare_groups_pooled(participants, qc, nets_tsv, maps, masks, pooled_dir, group_opts)
    clinical_dir = root / "clinical"
    clinical.clinical_pooled(participants, qc, nets_tsv, maps, masks, clinical_dir,
                             {**config["clinical"], "seed": config["seed"]})
    meta_dir = root / "meta"
    meta_opts = {**config["meta"], "seed": config["seed"]}
    meta_tables = meta.meta_networks(study_tables, participants, meta_dir, meta_opts)
    if voxelwise_meta:
        for n in ANALYSIS_NETWORKS:
            meta.meta_voxelwise(g_maps[n], v_maps[n], masks[n], n, meta_tables["moderators"],
                                meta_dir, meta_opts)
    return {
        "root": root,
        "config": config,
        "qc": qc,
        "truth": sim_dir / "ground_truth.json",
        "pooled": {n: {"t": pooled_dir / f"pooled_network-{n}_space-MNI152NLin2009cAsym_stat-t_map.nii.gz",
                       "logp": pooled_dir / f"pooled_network-{n}_space-MNI152NLin2009cAsym_stat-logpfwe_map.nii.gz"}
                   for n in ANALYSIS_NETWORKS},
        "meta": {n: {"z": meta_dir / f"meta_network-{n}_space-MNI152NLin2009cAsym_stat-z_map.nii.gz",
                     "logp": meta_dir / f"meta_network-{n}_space-MNI152NLin2009cAsym_stat-logpfwe_map.nii.gz"}
                 for n in ANALYSIS_NETWORKS},
        "clinical": clinical_dir / "pooled_desc-clinical_networks.tsv",
        "meta_tables": meta_tables,
    }


@pytest.fixture(scope="session")
def null_clinical_run(tmp_path_factory):
    """The reduced demo with the published null clinical association."""
    return run_pipeline(reduced_config(tmp_path_factory.mktemp("null_clinical")))


@pytest.fixture(scope="session")
def planted_clinical_run(tmp_path_factory):
    """The reduced demo's first 12 studies (59 MS, 40 HC) with a planted EDSS slope (network-level
    stages only): the slope's p is below 1e-9 in every network (below 1e-15 with all 25
    studies, at twice the cost)."""
    config = reduced_config(tmp_path_factory.mktemp("planted_clinical"),
                            clinical_slope=0.3, clinical_variable="edss", n_studies=12)
    config["clinical"]["voxelwise_variables"] = []
    return run_pipeline(config, voxelwise_meta=False)


@pytest.fixture(scope="session")
def demo_subjects(tmp_path_factory):
    """The first four studies of the demo exactly as `snakemake --cores 2` writes them
    (same config and seed; each study's random streams do not depend on the others)."""
    config = validate_config({"results_dir": str(tmp_path_factory.mktemp("demo4")),
                              "simulate": {"n_studies": 4}})
    return {"config": config, "root": Path(config["results_dir"]),
            "subjects": simulate_and_process(config)}


# ----------------------------------------------------------- real Snakemake runs

SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
TINY_CONFIG = {
    "simulate": {"n_studies": 3, "min_per_group": 3, "resolution_mm": 8},
    "group": {"n_permutations": 50},
    "clinical": {"n_permutations": 50},
    "meta": {"n_permutations": 50},
}
"""Three small studies on an 8 mm grid, 50 permutations: every stage in a few minutes."""


def snakemake_workdir(workdir: Path, config: dict) -> list:
    """Prepare a working directory of its own for a Snakemake run (its own ``.snakemake/``
    with locks and metadata, not the checkout's) and return the command's first arguments."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "config.yaml", workdir / "config.yaml")  # the Snakefile's configfile
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    return [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--configfile",
            str(workdir / "tiny.yaml")]


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory):
    """The tiny config run once by ``snakemake --cores 2``, uninterrupted (shared by the
    end-to-end test and the kill-and-resume test)."""
    workdir = tmp_path_factory.mktemp("tiny_workflow")
    results = workdir / "results"
    command = snakemake_workdir(workdir, {**TINY_CONFIG, "results_dir": str(results)})
    proc = subprocess.run([*command, "--cores", "2"], cwd=workdir, capture_output=True,
                          text=True, timeout=1800)
    return {"workdir": workdir, "results": results, "proc": proc, "command": command}
