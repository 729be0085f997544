"""Preflight speed: the plan of N real-data subjects with every header checked, in one run.

Builds one subject at fMRIPrep's real size (97 x 115 x 97, 300 volumes, int16 ``.nii.gz``; a
300-row confounds table with fMRIPrep 23's ~250 columns and its JSON sidecar) and links it as
``--subjects`` participants spread over ``--studies`` studies (hard links: the preflight reads
the same bytes of each file as it would of distinct ones, but from a warm page cache). Then
times ``msnet.io.plan.build_plan`` (tables, file discovery, header preflight) with the thread
pool, with one thread, and again with the cache that ``snakemake`` keeps, and prints them.

    python benchmarks/bench_preflight.py --subjects 189 --studies 25
    python benchmarks/bench_preflight.py --subjects 2410 --studies 25
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE, N_VOLUMES, SPACE = (97, 115, 97), 300, "MNI152NLin2009cAsym"


def build_template(folder: Path) -> dict:
    """One fMRIPrep-size run: zero-filled BOLD (only the header is read), mask, confounds."""
    import nibabel as nib
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    affine = np.array([[2.0, 0, 0, -96.0], [0, 2.0, 0, -132.0], [0, 0, 2.0, -78.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.zeros(SHAPE + (N_VOLUMES,), np.int16), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    nib.save(img, folder / "bold.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), affine), folder / "mask.nii.gz")
    rng = np.random.default_rng(0)
    columns = {}
    for base in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf",
                 "white_matter", "global_signal"):
        for suffix in ("", "_derivative1", "_power2", "_derivative1_power2"):
            columns[base + suffix] = rng.normal(size=N_VOLUMES)
    for name in ("framewise_displacement", "dvars", "std_dvars", "rmsd", "tcompcor"):
        columns[name] = rng.uniform(size=N_VOLUMES)
    for prefix, n in (("a_comp_cor_", 150), ("t_comp_cor_", 20), ("c_comp_cor_", 20),
                      ("w_comp_cor_", 20), ("cosine", 9), ("motion_outlier", 10)):
        for i in range(n):
            columns[f"{prefix}{i:02d}"] = rng.normal(size=N_VOLUMES)
    pd.DataFrame(columns).to_csv(folder / "conf.tsv", sep="\t", index=False, float_format="%.6f")
    meta = {f"a_comp_cor_{i:02d}": {"Method": "aCompCor", "Mask": "combined", "Retained": True,
                                    "SingularValue": 1.0, "VarianceExplained": 0.01}
            for i in range(150)}
    (folder / "conf.json").write_text(json.dumps(meta))
    (folder / "bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    return {name: folder / name for name in ("bold.nii.gz", "mask.nii.gz", "conf.tsv",
                                             "conf.json", "bold.json")}


def build_dataset(root: Path, template: dict, n_subjects: int, n_studies: int) -> Path:
    lines = ["study_id\tfmriprep_dir\tparticipants_tsv"]
    per_study = np.array_split(np.arange(n_subjects), n_studies)
    for s, ids in enumerate(per_study):
        study = root / f"S{s:02d}"
        rows = ["participant_id\tgroup\tage\tsex"]
        for i in ids:
            pid = f"sub-S{s:02d}n{i:04d}"
            func = study / pid / "func"
            func.mkdir(parents=True)
            stem = f"{pid}_task-rest_space-{SPACE}_res-2_desc-"
            conf = f"{pid}_task-rest_desc-confounds_timeseries"
            for src, name in (("bold.nii.gz", f"{stem}preproc_bold.nii.gz"),
                              ("mask.nii.gz", f"{stem}brain_mask.nii.gz"),
                              ("bold.json", f"{stem}preproc_bold.json"),
                              ("conf.tsv", f"{conf}.tsv"), ("conf.json", f"{conf}.json")):
                os.link(template[src], func / name)
            rows.append(f"{pid}\t{'MS' if i % 2 else 'HC'}\t40\tF")
        (study / "participants.tsv").write_text("\n".join(rows) + "\n")
        lines.append(f"S{s:02d}\tS{s:02d}\tS{s:02d}/participants.tsv")
    (root / "studies.tsv").write_text("\n".join(lines) + "\n")
    return root / "studies.tsv"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=189)
    parser.add_argument("--studies", type=int, default=25)
    parser.add_argument("--workdir", help="folder for the synthetic dataset (default: a temp dir)")
    args = parser.parse_args(argv)

    from msnet.config import validate_config
    from msnet.io import preflight
    from msnet.io.plan import build_plan

    root = Path(args.workdir or tempfile.mkdtemp(prefix="msnet_bench_preflight_"))
    template = build_template(root / "template")
    studies = build_dataset(root / "data", template, args.subjects, args.studies)
    config = validate_config({"data": {"mode": "fmriprep", "studies_tsv": str(studies)}})

    def timed(**kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        plan = build_plan(config, **kwargs)
        assert len(plan.subjects) == args.subjects
        return time.perf_counter() - start, time.process_time() - cpu

    no_check = timed(preflight=False)
    threads = timed()
    default_workers = preflight.DEFAULT_WORKERS
    preflight.DEFAULT_WORKERS = 1
    try:
        serial = timed()
    finally:
        preflight.DEFAULT_WORKERS = default_workers
    cache = root / "cache.json"
    timed(cache=cache)
    cached = timed(cache=cache)
    n = args.subjects
    print(f"{n} subjects in {args.studies} studies (97x115x97x300 BOLD, 300x264 confounds)")
    print(f"  plan without preflight  {no_check[0]:6.2f} s wall {no_check[1]:6.2f} s CPU")
    print(f"  plan + preflight, {default_workers} threads {threads[0]:6.2f} s wall {threads[1]:6.2f} s CPU"
          f"  ({1000 * (threads[0] - no_check[0]) / n:.1f} ms/subject for the headers)")
    print(f"  plan + preflight, 1 thread  {serial[0]:6.2f} s wall {serial[1]:6.2f} s CPU"
          f"  (threads: {serial[0] / threads[0]:.1f}x faster)")
    print(f"  plan + preflight, cached    {cached[0]:6.2f} s wall {cached[1]:6.2f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
