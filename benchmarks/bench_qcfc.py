"""Benchmark: QC-FC's several denoising strategies, msnet vs the plain nilearn route, one run.

On one synthetic subject at fMRIPrep's real size (97 x 115 x 97 at 2 mm, 300 volumes, int16
``.nii.gz``; ``_synthetic.build_subject``), each route computes the Seitzman-300 Fisher-z
edges under the same four denoising strategies (all with 6 mm smoothing, detrending and a
0.01-0.08 Hz band-pass; the synthetic confounds table has no CompCor or cosine columns, so the
strategies are custom selections):

* ``24P+2P``: 24 motion parameters + WM/CSF means; ``24P+2P+scrub``: the same with censoring
  (FD > 0.5 mm or std DVARS > 1.5, segments < 5 volumes); ``36P+scrub``: 24 motion + 8 WM/CSF
  + 4 global signal terms with censoring (the main analysis here); ``24P+2P+GSR``.

(a) msnet: ``clean_subject`` once (the main strategy, voxelwise, as the subject stage runs it,
    keeping the ROI means of the uncleaned BOLD) + ``msnet.qcfc.subject_edges`` (every other
    strategy cleans those ROI signals; the BOLD is read once);
(b) nilearn: per strategy, ``load_confounds`` + ``NiftiSpheresMasker(seeds, radius=5,
    mask_img, allow_overlap=True, smoothing_fwhm=6, detrend, high_pass, low_pass, t_r)
    .fit_transform(bold, confounds, sample_mask)`` and the Fisher z of the correlations
    (the BOLD is read and smoothed once per strategy).

Both routes use 5 mm spheres for every ROI (msnet: ``connectivity.roi_radius_mm: 5``). The
script prints CPU and wall time of each route (CPU is the steadier number on a shared
machine), msnet's cost beyond its one-strategy subject stage, the ratio, and the largest
difference between the two routes' edges per strategy.

Usage: ``python benchmarks/bench_qcfc.py [--volumes 300] [--keep DIR]``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
from _synthetic import CONFOUND_OPTIONS, LABEL, SPACE, TR, subject_routes_main

BASE = {k: CONFOUND_OPTIONS[k] for k in ("smoothing_fwhm", "detrend", "high_pass", "low_pass")}
STRATEGIES = {
    "36P+scrub": {**CONFOUND_OPTIONS},
    "24P+2P": {**BASE, "strategy": "custom", "motion": "full", "wm_csf": "basic",
               "global_signal": None, "scrub": None},
    "24P+2P+scrub": {**BASE, "strategy": "custom", "motion": "full", "wm_csf": "basic",
                     "global_signal": None, "scrub": 5, "fd_threshold": 0.5,
                     "std_dvars_threshold": 1.5},
    "24P+2P+GSR": {**BASE, "strategy": "custom", "motion": "full", "wm_csf": "basic",
                   "global_signal": "basic", "scrub": None},
}
"""msnet denoise options of each strategy; the first is the main analysis."""
RADIUS = 5.0


def route_msnet(root: Path, out: Path) -> dict:
    from msnet import qcfc
    from msnet.connectivity import _roi_membership, subject_connectivity, validate_options
    from msnet.denoise import clean_subject, resolve_options
    from msnet.io.fmriprep import find_subject_files

    opts = validate_options({"roi_radius_mm": RADIUS})
    main = next(iter(STRATEGIES.values()))
    t0, c0 = time.perf_counter(), time.process_time()
    files = find_subject_files(root, LABEL, space=SPACE)
    cleaned = clean_subject(files, main, {"min_minutes_kept": 0},
                            roi_membership=_roi_membership(opts))
    result = subject_connectivity(cleaned, opts)
    t1, c1 = time.perf_counter(), time.process_time()
    strategies = {name: resolve_options(o) for name, o in STRATEGIES.items()}
    edges = qcfc.subject_edges(cleaned, strategies, result.relmat.to_numpy())
    t2, c2 = time.perf_counter(), time.process_time()
    np.save(out, edges["fc"])
    return {"seconds": t2 - t0, "cpu_seconds": c2 - c0, "stage_seconds": t1 - t0,
            "stage_cpu_seconds": c1 - c0, "extra_seconds": t2 - t1, "extra_cpu_seconds": c2 - c1,
            "usable": edges["usable"].tolist()}


def _nilearn_confounds(opts: dict) -> dict:
    strategy = ["motion", "wm_csf"] + (["global_signal"] if opts["global_signal"] else [])
    kwargs = {"motion": opts["motion"], "wm_csf": opts["wm_csf"]}
    if opts["global_signal"]:
        kwargs["global_signal"] = opts["global_signal"]
    if opts["scrub"] is not None:
        strategy.append("scrub")
        kwargs.update(scrub=opts["scrub"], fd_threshold=opts["fd_threshold"],
                      std_dvars_threshold=opts["std_dvars_threshold"])
    return {"strategy": tuple(strategy), **kwargs}


def route_nilearn(root: Path, out: Path) -> dict:
    from nilearn.interfaces.fmriprep import load_confounds
    from nilearn.maskers import NiftiSpheresMasker

    from msnet import atlas, qcfc

    func = root / LABEL / "func"
    bold = str(next(func.glob("*_desc-preproc_bold.nii.gz")))
    mask = str(next(func.glob("*_desc-brain_mask.nii.gz")))
    seeds = atlas.seitzman_rois()[["x", "y", "z"]].to_numpy(float)
    i, j = qcfc.edge_index(len(seeds))
    t0, c0 = time.perf_counter(), time.process_time()
    fc = []
    for name, opts in STRATEGIES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            confounds, sample_mask = load_confounds(bold, **_nilearn_confounds(opts))
            masker = NiftiSpheresMasker(seeds, radius=RADIUS, mask_img=mask, allow_overlap=True,
                                        smoothing_fwhm=opts["smoothing_fwhm"], detrend=True,
                                        high_pass=opts["high_pass"], low_pass=opts["low_pass"],
                                        t_r=TR, standardize=False)
            series = masker.fit_transform(bold, confounds=confounds, sample_mask=sample_mask)
        r = np.corrcoef(series.T)[i, j]
        fc.append(np.arctanh(np.clip(r, -1 + 1e-7, 1 - 1e-7)))
    np.save(out, np.array(fc, dtype=np.float32))
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


def summarise(reports: dict, root: Path) -> None:
    """Print both routes' figures, the ratios and the largest difference per strategy."""
    ms, nl = reports["msnet"], reports["nilearn"]
    n = len(STRATEGIES)
    print(f"{n} strategies: {', '.join(STRATEGIES)} (main: {next(iter(STRATEGIES))})")
    print(f"msnet    {ms['cpu_seconds']:7.2f} s CPU, {ms['seconds']:7.2f} s wall, peak "
          f"{ms['peak_rss_mb']:.0f} MB: subject stage (main strategy) "
          f"{ms['stage_cpu_seconds']:.2f} s CPU + the other {n - 1} strategies "
          f"{ms['extra_cpu_seconds']:.3f} s CPU ({ms['extra_seconds']:.3f} s wall)")
    print(f"nilearn  {nl['cpu_seconds']:7.2f} s CPU, {nl['seconds']:7.2f} s wall, peak "
          f"{nl['peak_rss_mb']:.0f} MB: NiftiSpheresMasker per strategy "
          f"({nl['cpu_seconds'] / n:.2f} s CPU each)")
    print(f"ratio nilearn/msnet: CPU {nl['cpu_seconds'] / ms['cpu_seconds']:.1f}x, wall "
          f"{nl['seconds'] / ms['seconds']:.1f}x; per extra strategy "
          f"{nl['cpu_seconds'] / n / max(ms['extra_cpu_seconds'] / (n - 1), 1e-9):.0f}x")
    a = np.load(root / "qcfc_msnet.npy").astype(np.float64)
    b = np.load(root / "qcfc_nilearn.npy").astype(np.float64)
    diffs = {name: float(np.nanmax(np.abs(a[k] - b[k]))) for k, name in enumerate(STRATEGIES)}
    print("max |Fisher z difference| msnet vs nilearn per strategy:", json.dumps(diffs))


def main() -> None:
    subject_routes_main(__file__, __doc__, {"msnet": route_msnet, "nilearn": route_nilearn},
                        "qcfc_{route}.npy", summarise, networks=True)


if __name__ == "__main__":
    main()
