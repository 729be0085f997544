"""Benchmark: msnet's whole subject stage against the plain nilearn route, same input, one run.

Builds one synthetic subject at fMRIPrep's real size (97 x 115 x 97 at 2 mm, 300 volumes,
int16 ``.nii.gz``, fMRIPrep-style confounds TSV and sidecar, laid out as an fMRIPrep
derivatives tree; ``_synthetic.build_subject`` with msnet's 12 network templates planted)
in a temporary folder, then runs each route in its own subprocess, so the peak memory
(``ru_maxrss``) is per route:

(a) msnet: ``msnet.connectivity.compute_subject_connectivity`` writing every output (four
    dual-regression stage-2 maps, Seitzman-300 time series, Fisher-z matrix, network
    summary, QC JSON with tSNR/DVARS/FD metrics); denoise options ``_synthetic.CONFOUND_OPTIONS``
    (36 confounds + scrubbing, 6 mm smoothing, detrend, 0.01-0.08 Hz band-pass), spheres of
    5 mm (``roi_radius_mm: 5``, as the nilearn route's single radius), ``stage2_units`` from
    ``--stage2-units`` (default ``psc``, msnet's default);
(b) plain nilearn: ``load_confounds`` (same selection and sample mask) +
    ``NiftiMasker(mask, smoothing_fwhm=6, detrend=True, high_pass=0.01, low_pass=0.08, t_r,
    standardize="psc" | False).fit_transform(bold, confounds, sample_mask)``, dual regression
    with ``numpy.linalg.lstsq`` on the masker output (stage 1: spatially demeaned volumes on
    all 12 templates; stage 2: voxel series, in % signal change (psc) or z-scored
    (standardized), on the z-scored time courses, as msnet defines the map; with psc,
    nilearn's stage 1 sees % signal change and msnet's the cleaned signal, and nilearn's
    mean is taken over the first..last kept volume, msnet's over all post-dummy volumes, so
    the maps agree closely but not to float precision), the maps written with
    ``masker.inverse_transform`` (as float32: nilearn's image keeps the mask's uint8 dtype),
    ``NiftiSpheresMasker(Seitzman coordinates, radius=5, mask_img, allow_overlap=True, same
    cleaning).fit_transform`` and ``ConnectivityMeasure(kind="correlation")`` (nilearn's
    default Ledoit-Wolf estimator), time series and Fisher-z matrix written as TSV. It
    computes no QC metrics.

Both routes build the templates with ``msnet.atlas.network_templates`` (inside the timing).
Both run with ``--threads`` BLAS/OpenMP threads (threadpoolctl; default 1, the subject rule's
default); msnet also smooths with that many threads.

The msnet child also reads the same ``.nii.gz`` with isal alone (igzip_threaded, as msnet
streams it) just before and just after its stage, and runs the stage a second time in the
same process: the first run is a job's first subject (it pays the lazy imports, e.g.
scipy.ndimage), the second a job's later subjects (``resources.subjects_per_job``).

Printed: wall and CPU time of the stage (module imports excluded; CPU time is the steadier
number on a shared machine), the isal read time of the same file and the ratio stage/read,
the whole child process (imports included), peak RSS, the ratios nilearn/msnet, and the
equivalence at full size: msnet's cleaned voxel series (captured from
``msnet.denoise.clean_subject`` inside the timed call, without a copy) against NiftiMasker's,
both z-scored (ddof 1): per-voxel r >= 0.9999 and max |diff| <= 1e-4 are required; the
stage-2 maps (spatial r, DMN first); the ROI time series and the Fisher-z matrices. The
censoring pattern is one nilearn 0.13.1's interpolation bug does not touch (every censored
volume's mirror ``n-1-i`` is kept, see ``_synthetic``), so nilearn is not patched.

Usage::

    python benchmarks/bench_subject.py [--volumes 300] [--keep [DIR]] [--skip-nilearn]
                                       [--stage2-units {psc,standardized}] [--threads 1]

``--keep`` keeps the temporary folder (its path is printed); ``--keep DIR`` builds the
subject in DIR, or reuses it when DIR already holds one of the same size.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _synthetic import (CONFOUND_OPTIONS, LABEL, NILEARN_CONFOUNDS, SHAPE, SPACE, TR, build_subject,
                        peak_rss_mb, run_child, subject_paths)

NETWORKS = ("DMN", "SMN", "VN", "SN")  # msnet.ANALYSIS_NETWORKS, not imported in the parent
ROI_RADIUS_MM = 5.0
THRESHOLDS = {"min_voxel_r": 0.9999, "max_abs_diff": 1e-4}
MARKER = "bench_subject.json"


def _out_paths(out: Path) -> dict:
    prefix = out / LABEL
    return {
        "qc": f"{prefix}_qc.json",
        "maps": {net: f"{prefix}_network-{net}_stat-z_map.nii.gz" for net in NETWORKS},
        "timeseries": f"{prefix}_atlas-Seitzman300_timeseries.tsv",
        "relmat": f"{prefix}_atlas-Seitzman300_relmat.tsv",
        "networks": f"{prefix}_networks.tsv",
    }


def isal_read(path: Path) -> tuple[float, float]:
    """Wall and CPU seconds to decompress ``path`` with isal as msnet streams it (one
    background thread, 64 MB blocks), discarding the bytes."""
    from isal import igzip_threaded

    buffer = bytearray(64 * 2**20)
    t0, c0 = time.perf_counter(), time.process_time()
    with igzip_threaded.open(path, "rb", threads=1, block_size=len(buffer)) as stream:
        while stream.readinto(buffer):
            pass
    return time.perf_counter() - t0, time.process_time() - c0


def route_msnet(root: Path, units: str, threads: int) -> dict:
    """Run msnet's subject stage (twice); save its cleaned voxel series for the comparison."""
    t0 = time.perf_counter()
    import msnet.denoise
    from msnet.connectivity import compute_subject_connectivity

    t_import = time.perf_counter() - t0
    captured = {}
    clean_subject = msnet.denoise.clean_subject

    def capture(*args, **kwargs):  # keeps a reference only: no copy, no extra work
        captured["cleaned"] = clean_subject(*args, **kwargs)
        return captured["cleaned"]

    msnet.denoise.clean_subject = capture
    bold = subject_paths(root)[0]
    reads = [isal_read(bold)]
    options = {"roi_radius_mm": ROI_RADIUS_MM, "stage2_units": units}
    runs = []
    for name in ("out-msnet-first", "out-msnet"):  # a job's first subject, then a later one
        out = root / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        t1, c1 = time.perf_counter(), time.process_time()
        qc = compute_subject_connectivity(root, LABEL, _out_paths(out), denoise_options=CONFOUND_OPTIONS,
                                          connectivity_options=options, space=SPACE, threads=threads)
        runs.append((time.perf_counter() - t1, time.process_time() - c1))
        if not runs[1:]:
            peak = peak_rss_mb()  # the first subject's peak: what one-subject jobs need
    reads.append(isal_read(bold))
    (seconds, cpu), (seconds_next, cpu_next) = runs
    cleaned = captured["cleaned"]
    np.save(root / "msnet_clean.npy", cleaned.data)
    np.save(root / "msnet_sample_mask.npy", cleaned.sample_mask)
    return {"seconds": seconds, "cpu_seconds": cpu, "import_seconds": t_import, "peak_rss_mb": peak,
            "seconds_next": seconds_next, "cpu_seconds_next": cpu_next,
            "read_seconds": [r[0] for r in reads], "read_cpu_seconds": [r[1] for r in reads],
            "shape": list(cleaned.data.shape), "include": qc["include"],
            "exclusion_reason": qc["exclusion_reason"], "dr_template_r": qc["dr_template_r"],
            "dr_vif": qc["dr_vif"]}


def _plain_dual_regression(voxels: np.ndarray, templates: np.ndarray, units: str) -> np.ndarray:
    """Dual regression the plain way (``numpy.linalg.lstsq``); returns the analysis maps.

    Stage 1: each volume, spatially demeaned, on the spatially demeaned templates. Stage 2:
    each voxel's series (already in % signal change for ``psc``, z-scored over time for
    ``standardized``) on the z-scored time courses (msnet's statistics).
    """
    x = templates.T - templates.T.mean(axis=0)
    timecourses = np.linalg.lstsq(x, (voxels - voxels.mean(axis=1, keepdims=True)).T, rcond=None)[0].T
    tcz = (timecourses - timecourses.mean(0)) / timecourses.std(0, ddof=1)
    y = voxels - voxels.mean(0)
    if units == "standardized":
        sd = voxels.std(0, ddof=1)
        y /= np.where(sd > 0, sd, 1.0)
    return np.linalg.lstsq(tcz, y, rcond=None)[0][: len(NETWORKS)]


def route_nilearn(root: Path, units: str, threads: int) -> dict:
    """Run the plain nilearn route on the same files, writing the same kinds of outputs."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        return _route_nilearn(root, units)


def _route_nilearn(root: Path, units: str) -> dict:
    t0 = time.perf_counter()
    import pandas as pd
    from nilearn.connectome import ConnectivityMeasure
    from nilearn.datasets import fetch_coords_seitzman_2018
    from nilearn.interfaces.fmriprep import load_confounds
    from nilearn.maskers import NiftiMasker, NiftiSpheresMasker

    from msnet.atlas import network_templates

    t_import = time.perf_counter() - t0
    bold, mask, _ = (str(p) for p in subject_paths(root))
    out = root / "out-nilearn"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    steps = {}
    t1, c1 = time.perf_counter(), time.process_time()
    tick = t1

    def step(name):
        nonlocal tick
        now = time.perf_counter()
        steps[name] = round(now - tick, 2)
        tick = now

    cleaning = {"smoothing_fwhm": 6.0, "detrend": True, "high_pass": 0.01, "low_pass": 0.08, "t_r": TR}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        confounds, sample_mask = load_confounds(bold, **NILEARN_CONFOUNDS)
        step("load_confounds")
        masker = NiftiMasker(mask_img=mask, standardize="psc" if units == "psc" else False, **cleaning)
        voxels = masker.fit_transform(bold, confounds=confounds, sample_mask=sample_mask)
        step("NiftiMasker")
        _, templates = network_templates(masker.mask_img_)
        maps = _plain_dual_regression(voxels, templates, units)
        step("dual regression")
        for net, values in zip(NETWORKS, maps):
            img = masker.inverse_transform(values.astype(np.float32))
            img.set_data_dtype(np.float32)  # else nilearn's image keeps the mask's uint8 on disk
            img.to_filename(out / f"{LABEL}_network-{net}_stat-z_map.nii.gz")
        step("write maps")
        atlas = fetch_coords_seitzman_2018()
        seeds = atlas.rois[["x", "y", "z"]].to_numpy(float).tolist()
        spheres = NiftiSpheresMasker(seeds, radius=ROI_RADIUS_MM, mask_img=mask, allow_overlap=True,
                                     standardize=False, **cleaning)
        series = spheres.fit_transform(bold, confounds=confounds, sample_mask=sample_mask)
        step("NiftiSpheresMasker")
        corr = ConnectivityMeasure(kind="correlation").fit_transform([series])[0]
        np.fill_diagonal(corr, np.nan)
        names = [f"ROI{i + 1:03d}" for i in range(len(seeds))]
        pd.DataFrame(series, columns=names).to_csv(
            out / f"{LABEL}_atlas-Seitzman300_timeseries.tsv", sep="\t", index=False, float_format="%.7g")
        pd.DataFrame(np.arctanh(corr), index=pd.Index(names, name="roi"), columns=names).to_csv(
            out / f"{LABEL}_atlas-Seitzman300_relmat.tsv", sep="\t", float_format="%.7g", na_rep="n/a")
        step("ConnectivityMeasure + write")
    seconds, cpu = time.perf_counter() - t1, time.process_time() - c1
    peak = peak_rss_mb()
    np.save(root / "nilearn_clean.npy", voxels)
    np.save(root / "nilearn_sample_mask.npy", sample_mask)
    np.save(root / "nilearn_series.npy", series)
    return {"seconds": seconds, "cpu_seconds": cpu, "import_seconds": t_import, "peak_rss_mb": peak,
            "shape": list(voxels.shape), "steps": steps}


def _zscore(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.mean(0)
    x /= x.std(0, ddof=1)
    return x


def _columnwise_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def _spatial_r(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def compare(root: Path) -> dict:
    """Equivalence of the two routes' cleaned voxels, maps, ROI series and matrices."""
    import nibabel as nib
    import pandas as pd

    same_mask = bool(np.array_equal(np.load(root / "msnet_sample_mask.npy"),
                                    np.load(root / "nilearn_sample_mask.npy")))
    a, b = np.load(root / "msnet_clean.npy"), np.load(root / "nilearn_clean.npy")
    if a.shape != b.shape:
        return {"same_shape": False, "shapes": [a.shape, b.shape], "same_sample_mask": same_mask}
    a, b = _zscore(a), _zscore(b)
    r = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))
    voxels = {"same_sample_mask": same_mask, "min_voxel_r": float(r.min()),
              "median_voxel_r": float(np.median(r)), "max_abs_diff": float(np.abs(a - b).max())}
    voxels["pass"] = bool(same_mask and voxels["min_voxel_r"] >= THRESHOLDS["min_voxel_r"]
                          and voxels["max_abs_diff"] <= THRESHOLDS["max_abs_diff"])
    del a, b
    mask = np.asarray(nib.load(subject_paths(root)[1]).dataobj) > 0
    maps = {}
    for net in NETWORKS:
        m, n = (np.asarray(nib.load(root / f"out-{route}" / f"{LABEL}_network-{net}_stat-z_map.nii.gz")
                           .dataobj)[mask] for route in ("msnet", "nilearn"))
        maps[net] = {"spatial_r": _spatial_r(m, n), "max_abs_diff": float(np.abs(m - n).max()),
                     "max_abs_msnet": float(np.abs(m).max())}
    ms_series = pd.read_csv(root / "out-msnet" / f"{LABEL}_atlas-Seitzman300_timeseries.tsv", sep="\t")
    nl_series = np.load(root / "nilearn_series.npy")
    roi_r = _columnwise_r(ms_series.to_numpy(np.float64), nl_series.astype(np.float64))
    z_ms = pd.read_csv(root / "out-msnet" / f"{LABEL}_atlas-Seitzman300_relmat.tsv", sep="\t",
                       index_col=0).to_numpy(np.float64)
    z_nl = pd.read_csv(root / "out-nilearn" / f"{LABEL}_atlas-Seitzman300_relmat.tsv", sep="\t",
                       index_col=0).to_numpy(np.float64)
    off = ~np.eye(len(z_ms), dtype=bool)
    z_emp = np.arctanh(np.corrcoef(nl_series.astype(np.float64), rowvar=False)[off])
    return {
        "cleaned_voxels": voxels,
        "stage2_maps": maps,
        "roi_timeseries": {"min_roi_r": float(roi_r.min()),
                           "max_rel_diff": float(np.abs(ms_series.to_numpy() - nl_series).max()
                                                 / np.abs(nl_series).max())},
        "relmat": {"max_abs_diff_vs_empirical": float(np.abs(z_ms[off] - z_emp).max()),
                   "r_vs_ledoit_wolf": _spatial_r(z_ms[off], z_nl[off]),
                   "max_abs_diff_vs_ledoit_wolf": float(np.abs(z_ms[off] - z_nl[off]).max())},
    }


def _prepare(root: Path, volumes: int) -> None:
    """Build the subject under ``root`` unless one of this size is already there."""
    marker = root / MARKER
    wanted = {"volumes": volumes, "networks": True}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        print(f"reusing the subject in {root}")
        return
    t0 = time.perf_counter()
    build_subject(root, volumes, networks=True)
    marker.write_text(json.dumps(wanted))
    print(f"built {SHAPE + (volumes,)} int16 subject in {root} ({time.perf_counter() - t0:.1f} s)")


def _print_route(route: str, rep: dict) -> None:
    print(f"{route:8s} stage {rep['seconds']:7.2f} s wall, {rep['cpu_seconds']:7.2f} s CPU | "
          f"process incl. imports {rep['process_seconds']:7.2f} s | "
          f"peak RSS {rep['peak_rss_mb']:8.0f} MB | cleaned {tuple(rep['shape'])}")


def run(root: Path, skip_nilearn: bool, units: str, threads: int) -> None:
    """Run the routes on the subject in ``root`` and print the report."""
    routes = ("msnet",) if skip_nilearn else ("msnet", "nilearn")
    print(f"stage-2 units: {units}; threads: {threads}")
    extra = ["--stage2-units", units, "--threads", str(threads)]
    reports = {route: run_child(__file__, route, root, extra) for route in routes}
    for route, rep in reports.items():
        _print_route(route, rep)
    ms = reports["msnet"]
    read, read_cpu = np.mean(ms["read_seconds"]), np.mean(ms["read_cpu_seconds"])
    print("isal read of the same .nii.gz (before/after the stage): "
          + " / ".join(f"{w:.2f} s" for w in ms["read_seconds"])
          + f" wall, {read_cpu:.2f} s CPU")
    print(f"ratio stage/read (wall): {ms['seconds'] / read:.1f}x for a job's first subject "
          f"({ms['seconds']:.2f} s), {ms['seconds_next'] / read:.1f}x for its next ones "
          f"({ms['seconds_next']:.2f} s); CPU: {ms['cpu_seconds'] / read_cpu:.1f}x / "
          f"{ms['cpu_seconds_next'] / read_cpu:.1f}x")
    print(f"msnet QC: include={ms['include']} ({ms['exclusion_reason']}); template r "
          + json.dumps({k: round(v, 3) for k, v in ms["dr_template_r"].items()})
          + "; VIF " + json.dumps({k: round(v, 2) for k, v in ms["dr_vif"].items()}))
    if skip_nilearn:
        return
    nl = reports["nilearn"]
    print("nilearn steps (s):", json.dumps(nl["steps"]))
    ms_process = ms["process_seconds"] - ms["seconds_next"] - sum(ms["read_seconds"])  # one run
    print(f"ratio nilearn/msnet: wall time {nl['seconds'] / ms['seconds']:.1f}x, "
          f"CPU time {nl['cpu_seconds'] / ms['cpu_seconds']:.1f}x "
          f"(whole process {nl['process_seconds'] / ms_process:.1f}x), "
          f"peak memory {nl['peak_rss_mb'] / ms['peak_rss_mb']:.1f}x")
    result = compare(root)
    print(f"equivalence (z-scored cleaned voxels; need r >= {THRESHOLDS['min_voxel_r']}, "
          f"|diff| <= {THRESHOLDS['max_abs_diff']}):", json.dumps(result["cleaned_voxels"]))
    print("stage-2 maps msnet vs plain route:", json.dumps(result["stage2_maps"]))
    print("ROI time series:", json.dumps(result["roi_timeseries"]))
    print("Fisher-z matrix (msnet vs nilearn empirical / Ledoit-Wolf):", json.dumps(result["relmat"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=300, help="volumes of the synthetic run (default 300)")
    parser.add_argument("--keep", nargs="?", const=True, type=Path, metavar="DIR",
                        help="keep the temporary folder; with DIR, build (or reuse) the subject there")
    parser.add_argument("--skip-nilearn", action="store_true", help="run the msnet route only")
    parser.add_argument("--stage2-units", choices=("psc", "standardized"), default="psc",
                        help="msnet connectivity.stage2_units; the nilearn route follows (default psc)")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS/OpenMP (and msnet smoothing) threads of both routes (default 1)")
    parser.add_argument("--child", choices=("msnet", "nilearn"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        route = route_msnet if args.child == "msnet" else route_nilearn
        print(json.dumps(route(args.root, args.stage2_units, args.threads)))
        return
    if isinstance(args.keep, Path):
        args.keep.mkdir(parents=True, exist_ok=True)
        root = args.keep
    else:
        root = Path(tempfile.mkdtemp(prefix="msnet-bench-subject-"))
    try:
        _prepare(root, args.volumes)
        run(root, args.skip_nilearn, args.stage2_units, args.threads)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
