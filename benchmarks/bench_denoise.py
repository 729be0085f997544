"""Benchmark: msnet ``clean_subject`` against the plain nilearn route, same input, one run.

Builds one synthetic subject at fMRIPrep's real size (97 x 115 x 97 at 2 mm, nilearn's
MNI152 2 mm brain mask resampled onto that grid, 300 volumes, int16 ``.nii.gz``, a
fMRIPrep-style confounds TSV) in a temporary folder, then runs each route in its own
subprocess (so the peak memory, ``ru_maxrss``, is per route):

(a) msnet: ``find_subject_files`` + ``clean_subject`` (36-parameter confounds + scrubbing,
    6 mm smoothing, detrend, 0.01-0.08 Hz band-pass);
(b) nilearn: ``load_confounds`` (same confounds and scrubbing) +
    ``NiftiMasker(smoothing_fwhm=6, detrend=True, high_pass=0.01, low_pass=0.08, t_r,
    standardize="zscore_sample").fit_transform(bold, confounds, sample_mask)``.

It prints wall and CPU time (CPU time is the steadier number on a shared machine) and peak
memory of both, their ratios, and the equivalence of the
outputs at full size (msnet's output z-scored like nilearn's: per-voxel correlation and
maximum absolute difference). The censored volumes are placed where nilearn 0.13.1's
interpolation bug (see ``msnet.denoise``) does not act, so both must agree.

Usage: ``python benchmarks/bench_denoise.py [--volumes 300] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

SHAPE = (97, 115, 97)
AFFINE = np.array([[2.0, 0, 0, -96.0], [0, 2.0, 0, -132.0], [0, 0, 2.0, -78.0], [0, 0, 0, 1]])
TR = 2.0
LABEL = "sub-bench"
SPACE = "MNI152NLin2009cAsym"
CONFOUND_OPTIONS = {  # 36 parameters: 24 motion + 8 WM/CSF + 4 global signal
    "strategy": "custom", "motion": "full", "wm_csf": "full", "global_signal": "full",
    "scrub": 5, "fd_threshold": 0.5, "std_dvars_threshold": 1.5,
    "smoothing_fwhm": 6.0, "detrend": True, "high_pass": 0.01, "low_pass": 0.08,
}


def build_subject(root: Path, n_volumes: int, seed: int = 0) -> None:
    """Write one fMRIPrep-like subject (BOLD, mask, confounds, sidecar) under ``root``."""
    import nibabel as nib
    import pandas as pd
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    rng = np.random.default_rng(seed)
    func = root / LABEL / "func"
    func.mkdir(parents=True, exist_ok=True)
    mask_img = resample_img(load_mni152_brain_mask(resolution=2), target_affine=AFFINE,
                            target_shape=SHAPE, interpolation="nearest", force_resample=True,
                            copy_header=True)
    mask = np.asarray(mask_img.dataobj) > 0
    stem = f"{LABEL}_task-rest_space-{SPACE}_res-2_desc-"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), func / f"{stem}brain_mask.nii.gz")

    motion = np.cumsum(rng.normal(0, 0.03, (n_volumes, 6)), axis=0)
    motion[:, 3:] *= 0.01
    table = pd.DataFrame(motion, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"])
    table["csf"] = np.cumsum(rng.normal(size=n_volumes))
    table["white_matter"] = np.cumsum(rng.normal(size=n_volumes))
    table["global_signal"] = rng.normal(size=n_volumes)
    for col in list(table.columns):
        deriv = table[col].diff()
        table[f"{col}_derivative1"] = deriv
        table[f"{col}_power2"] = table[col] ** 2
        table[f"{col}_derivative1_power2"] = deriv**2
    fd = np.r_[np.nan, np.minimum(0.3, np.abs(np.diff(motion, axis=0)) @ [1, 1, 1, 50, 50, 50])]
    spikes = [int(n_volumes * f) for f in (0.2, 0.21, 0.45, 0.62)]  # mirrors n-1-i stay kept
    fd[spikes] = 0.9
    table["framewise_displacement"] = fd
    table["std_dvars"] = np.r_[np.nan, rng.uniform(0.8, 1.3, n_volumes - 1)]
    table["dvars"] = table["std_dvars"] * 12
    for k in range(2):
        table[f"non_steady_state_outlier_{k:02d}"] = (np.arange(n_volumes) == k).astype(int)
    table.to_csv(func / f"{LABEL}_task-rest_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")

    n_vox = int(mask.sum())
    spatial = rng.normal(size=(8, n_vox)).astype(np.float32)
    temporal = np.cumsum(rng.normal(size=(n_volumes, 8)), axis=0).astype(np.float32)
    nuisance = table[["csf", "white_matter", "trans_x"]].to_numpy(np.float32)
    data = np.empty(SHAPE + (n_volumes,), dtype=np.int16, order="F")
    base = np.where(mask, 1000.0, 80.0).astype(np.float32)
    for t in range(n_volumes):
        vol = base + rng.normal(0, 15, SHAPE).astype(np.float32) * np.where(mask, 1.0, 0.3)
        vol[mask] += temporal[t] @ spatial * 3 + nuisance[t] @ spatial[:3] * 2
        data[..., t] = np.round(vol).astype(np.int16)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = TR
    nib.save(img, func / f"{stem}preproc_bold.nii.gz")
    (func / f"{stem}preproc_bold.json").write_text(json.dumps({"RepetitionTime": TR}))


def route_msnet(root: Path, out: Path) -> dict:
    """Run msnet; save the z-scored output; return timings."""
    t0 = time.perf_counter()
    from msnet.denoise import clean_subject
    from msnet.io.fmriprep import find_subject_files

    t_import = time.perf_counter() - t0
    t1, c1 = time.perf_counter(), time.process_time()
    files = find_subject_files(root, LABEL, space=SPACE)
    result = clean_subject(files, CONFOUND_OPTIONS, {"min_minutes_kept": 0})
    seconds, cpu = time.perf_counter() - t1, time.process_time() - c1
    data = result.data
    z = (data - data.mean(0)) / data.std(0, ddof=1)
    np.save(out, z.astype(np.float32))
    np.save(out.with_name("msnet_sample_mask.npy"), result.sample_mask)
    return {"seconds": seconds, "cpu_seconds": cpu, "import_seconds": t_import, "shape": list(data.shape)}


def route_nilearn(root: Path, out: Path) -> dict:
    """Run the plain nilearn route on the same files; save its output; return timings."""
    t0 = time.perf_counter()
    from nilearn.interfaces.fmriprep import load_confounds
    from nilearn.maskers import NiftiMasker

    t_import = time.perf_counter() - t0
    func = root / LABEL / "func"
    bold = str(next(func.glob("*_desc-preproc_bold.nii.gz")))
    mask = str(next(func.glob("*_desc-brain_mask.nii.gz")))
    t1, c1 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        confounds, sample_mask = load_confounds(
            bold, strategy=("motion", "wm_csf", "global_signal", "scrub"), motion="full",
            wm_csf="full", global_signal="full", scrub=5, fd_threshold=0.5, std_dvars_threshold=1.5,
        )
        masker = NiftiMasker(mask_img=mask, smoothing_fwhm=6.0, detrend=True, high_pass=0.01,
                             low_pass=0.08, t_r=TR, standardize="zscore_sample")
        data = masker.fit_transform(bold, confounds=confounds, sample_mask=sample_mask)
    seconds, cpu = time.perf_counter() - t1, time.process_time() - c1
    np.save(out, data.astype(np.float32))
    np.save(out.with_name("nilearn_sample_mask.npy"), sample_mask)
    return {"seconds": seconds, "cpu_seconds": cpu, "import_seconds": t_import, "shape": list(data.shape)}


def run_child(route: str, root: Path) -> dict:
    """Run one route in a fresh interpreter; return its report with peak RSS (MB)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", route, "--root", str(root)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"{route} route failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["process_seconds"] = time.perf_counter() - t0
    return report


def compare(root: Path) -> dict:
    """Per-voxel correlation and max abs difference between the two z-scored outputs."""
    a = np.load(root / "msnet.npy").astype(np.float64)
    b = np.load(root / "nilearn.npy").astype(np.float64)
    same_mask = bool(np.array_equal(np.load(root / "msnet_sample_mask.npy"), np.load(root / "nilearn_sample_mask.npy")))
    if a.shape != b.shape:
        return {"same_shape": False, "shapes": [a.shape, b.shape], "same_sample_mask": same_mask}
    r = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return {"same_shape": True, "same_sample_mask": same_mask, "min_voxel_r": float(r.min()),
            "median_voxel_r": float(np.median(r)), "max_abs_diff": float(np.abs(a - b).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=300)
    parser.add_argument("--keep", type=Path, help="build/keep the data here instead of a temp dir")
    parser.add_argument("--child", choices=("msnet", "nilearn"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        route = route_msnet if args.child == "msnet" else route_nilearn
        report = route(args.root, args.root / f"{args.child}.npy")
        report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(report))
        return
    with tempfile.TemporaryDirectory(prefix="msnet-bench-") as tmp:
        root = args.keep or Path(tmp)
        if not (root / LABEL).is_dir():
            t0 = time.perf_counter()
            build_subject(root, args.volumes)
            print(f"built {SHAPE + (args.volumes,)} int16 subject in {time.perf_counter() - t0:.1f} s")
        reports = {route: run_child(route, root) for route in ("msnet", "nilearn")}
        for route, rep in reports.items():
            print(f"{route:8s} clean {rep['seconds']:7.2f} s wall, {rep['cpu_seconds']:7.2f} s CPU | "
                  f"process incl. imports "
                  f"{rep['process_seconds']:7.2f} s | peak RSS {rep['peak_rss_mb']:8.0f} MB | "
                  f"output {tuple(rep['shape'])}")
        ms, nl = reports["msnet"], reports["nilearn"]
        print(f"ratio nilearn/msnet: wall time {nl['seconds'] / ms['seconds']:.1f}x, "
              f"CPU time {nl['cpu_seconds'] / ms['cpu_seconds']:.1f}x "
              f"(whole process {nl['process_seconds'] / ms['process_seconds']:.1f}x), "
              f"peak memory {nl['peak_rss_mb'] / ms['peak_rss_mb']:.1f}x")
        print("equivalence (msnet z-scored vs nilearn):", json.dumps(compare(root)))


if __name__ == "__main__":
    main()
