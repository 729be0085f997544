"""Shared helpers of the benchmarks: a synthetic fMRIPrep subject at real size, child runs.

``build_subject`` writes one subject at fMRIPrep's 2 mm MNI size (97 x 115 x 97, nilearn's
MNI152 2 mm brain mask resampled onto that grid, int16 ``.nii.gz``, fMRIPrep-style confounds
TSV, bold sidecar) as an fMRIPrep derivatives tree, so
``msnet.io.fmriprep.find_subject_files(root, LABEL, space=SPACE)`` finds it.

The censored volumes (4 FD spikes, a 2-volume segment that ``scrub=5`` removes, 2 dummy
scans) are placed so that every censored volume's mirror ``n-1-i`` is kept: nilearn
0.13.1's interpolation bug (see ``msnet.denoise``) does not act, and msnet and nilearn must
agree to float32 precision without patching nilearn.

``run_child`` runs one route of a benchmark script in a fresh interpreter so that its peak
memory (``ru_maxrss``, reported by the child with :func:`peak_rss_mb`) is that route's alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
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
"""msnet ``denoise`` options both benchmarks use; the nilearn routes mirror them."""

NILEARN_CONFOUNDS = {
    "strategy": ("motion", "wm_csf", "global_signal", "scrub"), "motion": "full",
    "wm_csf": "full", "global_signal": "full", "scrub": 5, "fd_threshold": 0.5,
    "std_dvars_threshold": 1.5,
}
"""``nilearn.interfaces.fmriprep.load_confounds`` arguments equal to :data:`CONFOUND_OPTIONS`."""


def _network_signal(mask_img, n_volumes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """msnet's 12 network templates and independent 0.01-0.08 Hz time courses (unit SD)."""
    from scipy.signal import butter, sosfiltfilt

    from msnet.atlas import network_templates

    _, templates = network_templates(mask_img)
    rng = np.random.default_rng(seed)
    sos = butter(4, [0.01, 0.08], btype="band", fs=1.0 / TR, output="sos")
    courses = sosfiltfilt(sos, rng.normal(size=(n_volumes, len(templates))), axis=0)
    courses /= courses.std(axis=0)
    return templates, courses.astype(np.float32)


def build_subject(root: Path, n_volumes: int, seed: int = 0, networks: bool = False) -> None:
    """Write one fMRIPrep-like subject (BOLD, mask, confounds, sidecar) under ``root``.

    With ``networks``, msnet's 12 network templates (Seitzman blobs) are added to the BOLD
    with independent band-limited time courses, so dual regression has networks to find;
    without it the image and tables are identical to those bench_denoise.py always used.
    """
    import nibabel as nib
    import pandas as pd
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    rng = np.random.default_rng(seed)
    func = root / LABEL / "func"
    func.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "msnet benchmark subject", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep"}]}))
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
    if networks:
        templates, courses = _network_signal(mask_img, n_volumes, seed + 1)
        courses *= 20.0  # BOLD units; the voxel noise SD is 15 before smoothing
    data = np.empty(SHAPE + (n_volumes,), dtype=np.int16, order="F")
    base = np.where(mask, 1000.0, 80.0).astype(np.float32)
    for t in range(n_volumes):
        vol = base + rng.normal(0, 15, SHAPE).astype(np.float32) * np.where(mask, 1.0, 0.3)
        vol[mask] += temporal[t] @ spatial * 3 + nuisance[t] @ spatial[:3] * 2
        if networks:
            vol[mask] += courses[t] @ templates
        data[..., t] = np.round(vol).astype(np.int16)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = TR
    nib.save(img, func / f"{stem}preproc_bold.nii.gz")
    (func / f"{stem}preproc_bold.json").write_text(json.dumps({"RepetitionTime": TR}))


def subject_paths(root: Path) -> tuple[Path, Path, Path]:
    """BOLD, brain mask and confounds TSV of the subject under ``root``."""
    func = root / LABEL / "func"
    return (next(func.glob("*_desc-preproc_bold.nii.gz")), next(func.glob("*_desc-brain_mask.nii.gz")),
            next(func.glob("*_desc-confounds_timeseries.tsv")))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str, route: str, root: Path, extra=()) -> dict:
    """Run ``script --child route --root root [extra...]`` in a fresh interpreter.

    The child prints one JSON report as its last stdout line; ``process_seconds`` (wall
    time of the whole child, imports included) is added here.
    """
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, script, "--child", route, "--root", str(root), *extra],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"{route} route failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["process_seconds"] = time.perf_counter() - t0
    return report


def subject_routes_main(script: str, doc: str, routes: dict, out_name: str, summarise,
                        networks: bool = False) -> None:
    """The command line of the one-subject benchmarks (``bench_denoise.py``,
    ``bench_qcfc.py``): build one synthetic subject (or reuse ``--keep DIR``), run every
    route in a fresh interpreter of its own (its peak memory its own), then
    ``summarise(reports, root)`` prints the figures and ratios.

    Parameters
    ----------
    script, doc : str
        The benchmark's ``__file__`` and ``__doc__``.
    routes : dict
        Route name -> ``route(root, out_npy) -> dict`` (timings; run in the child).
    out_name : str
        The child's output file in ``root``, with ``{route}``.
    summarise : callable
        ``summarise(reports: dict, root: Path)``.
    networks : bool
        Build the subject with msnet's network templates (:func:`build_subject`).
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=300)
    parser.add_argument("--keep", type=Path, help="build/keep the data here instead of a temp dir")
    parser.add_argument("--child", choices=tuple(routes), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report = routes[args.child](args.root, args.root / out_name.format(route=args.child))
        report["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(report))
        return
    with tempfile.TemporaryDirectory(prefix="msnet-bench-") as tmp:
        root = args.keep or Path(tmp)
        if not (root / LABEL).is_dir():
            t0 = time.perf_counter()
            build_subject(root, args.volumes, networks=networks)
            print(f"built a {SHAPE + (args.volumes,)} int16 subject in "
                  f"{time.perf_counter() - t0:.1f} s")
        summarise({route: run_child(script, route, root) for route in routes}, root)
