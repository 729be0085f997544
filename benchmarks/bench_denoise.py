"""Benchmark: msnet ``clean_subject`` against the plain nilearn route, same input, one run.

Builds one synthetic subject at fMRIPrep's real size (97 x 115 x 97 at 2 mm, nilearn's
MNI152 2 mm brain mask resampled onto that grid, 300 volumes, int16 ``.nii.gz``, a
fMRIPrep-style confounds TSV; ``_synthetic.build_subject``) in a temporary folder, then runs each route in its own
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

import json
import time
import warnings
from pathlib import Path

import numpy as np
from _synthetic import CONFOUND_OPTIONS, LABEL, NILEARN_CONFOUNDS, SPACE, TR, subject_routes_main


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
        confounds, sample_mask = load_confounds(bold, **NILEARN_CONFOUNDS)
        masker = NiftiMasker(mask_img=mask, smoothing_fwhm=6.0, detrend=True, high_pass=0.01,
                             low_pass=0.08, t_r=TR, standardize="zscore_sample")
        data = masker.fit_transform(bold, confounds=confounds, sample_mask=sample_mask)
    seconds, cpu = time.perf_counter() - t1, time.process_time() - c1
    np.save(out, data.astype(np.float32))
    np.save(out.with_name("nilearn_sample_mask.npy"), sample_mask)
    return {"seconds": seconds, "cpu_seconds": cpu, "import_seconds": t_import, "shape": list(data.shape)}


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


def summarise(reports: dict, root: Path) -> None:
    """Print each route's figures, the ratios and the equivalence of their outputs."""
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


def main() -> None:
    subject_routes_main(__file__, __doc__, {"msnet": route_msnet, "nilearn": route_nilearn},
                        "{route}.npy", summarise)


if __name__ == "__main__":
    main()
