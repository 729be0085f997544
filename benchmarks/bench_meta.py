"""Benchmark: voxelwise random-effects meta-analysis, msnet engine vs NiMARE IBMA.

Same input for both: ``--studies`` per-study g and var(g) maps (float32 NIfTI, written once
to a temporary folder) over a mask of ``--voxels`` voxels. For DL and REML (Wald inference,
the metafor default) it times

* msnet: loading the maps onto the mask (:func:`msnet.meta._load_maps`) + :func:`fit_rma`;
* NiMARE: ``DerSimonianLaird`` / ``VarianceBasedLikelihood(method="reml")`` ``.fit(dset)``
  (which also loads and masks the images), and the PyMARE estimator it wraps run directly on
  the masked arrays (compute only),

and prints both times, their ratio and the largest absolute differences of the pooled
estimate, its SE, τ² and z. Optionally (``--permutations N``) it also times N permutation
refits of msnet's sign-flip FWE and meta-regression nulls (NiMARE has none for random-effects
models), compiled kernels against the numpy batches they replaced (:func:`time_permutations`).

Usage: ``python benchmarks/bench_meta.py [--studies 25] [--voxels 50000] [--permutations 0]``;
demo size (a network mask of the demo: about 10k voxels, 25 studies):
``python benchmarks/bench_meta.py --voxels 10000 --permutations 100``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from msnet import meta


def make_inputs(folder: Path, n_studies: int, n_voxels: int, seed: int):
    """Write per-study g/var(g) maps and a mask of ``n_voxels`` voxels; return their paths."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(n_voxels ** (1 / 3))) + 1
    shape = (side, side, side)
    mask = np.zeros(int(np.prod(shape)), bool)
    mask[:n_voxels] = True
    mask = mask.reshape(shape)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(folder / "mask.nii.gz")
    tau = rng.choice([0.0, 0.1, 0.3], size=shape)
    g_maps, v_maps = {}, {}
    for i in range(n_studies):
        var = rng.uniform(0.02, 0.15, shape)
        g = 0.2 + rng.normal(0, 1, shape) * np.sqrt(var + tau**2)
        study = f"S{i:02d}"
        g_maps[study] = folder / f"study-{study}_stat-g_map.nii.gz"
        v_maps[study] = folder / f"study-{study}_stat-varg_map.nii.gz"
        for values, path in ((g, g_maps[study]), (var, v_maps[study])):
            img = nib.Nifti1Image(np.where(mask, values, 0).astype(np.float32), affine)
            img.to_filename(path)
    return g_maps, v_maps, folder / "mask.nii.gz"


def run_msnet(g_maps, v_maps, mask_path, method):
    t0 = time.perf_counter()
    mask_img = nib.load(str(mask_path))
    Y = meta._load_maps(g_maps, mask_img, "g")
    V = meta._load_maps(v_maps, mask_img, "var(g)")
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    fit = meta.fit_rma(Y, V, None, method)
    t_fit = time.perf_counter() - t1
    out = {"est": fit.beta[0], "se": fit.se[0], "tau2": fit.tau2, "z": fit.stat[0]}
    return out, t_load, t_fit, Y, V, int((~fit.converged).sum())


def run_nimare(g_maps, v_maps, mask_path, method):
    from nimare.dataset import Dataset
    from nimare.meta.ibma import DerSimonianLaird, VarianceBasedLikelihood

    source = {s: {"contrasts": {"1": {"images": {"beta": str(g_maps[s]),
                                                 "varcope": str(v_maps[s])}}}}
              for s in g_maps}
    estimator = (DerSimonianLaird(small_sample_correction="wald") if method == "DL" else
                 VarianceBasedLikelihood(method="reml", small_sample_correction="wald"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dset = Dataset(source, target=None, mask=str(mask_path))
        t0 = time.perf_counter()
        res = estimator.fit(dset)
        elapsed = time.perf_counter() - t0
    out = {key: res.get_map(key, return_type="array").astype(float)
           for key in ("est", "se", "tau2", "z")}
    return out, elapsed


def run_pymare(Y, V, method):
    """The PyMARE estimator NiMARE wraps, on the already-masked arrays (compute only)."""
    from pymare.estimators import DerSimonianLaird, VarianceBasedLikelihoodEstimator

    estimator = (DerSimonianLaird(small_sample_correction="wald") if method == "DL" else
                 VarianceBasedLikelihoodEstimator(method="REML", small_sample_correction="wald"))
    t0 = time.perf_counter()
    estimator.fit(y=Y, v=V, X=np.ones((Y.shape[0], 1)))
    return time.perf_counter() - t0


def time_permutations(Y, V, n_perm, seed):
    """CPU time per permutation of the stage's nulls: compiled refits vs numpy batches.

    Times :func:`msnet.meta.sign_flip_null` (the main effect) and
    :func:`msnet.meta.moderator_permutation_null` (one moderator) with the stage defaults
    (REML, Knapp-Hartung), once with the compiled kernels and once with the numpy batches
    that ran before them (``meta._COMPILED = False``), back to back, on the same seed; CPU
    time (``time.process_time``) so a loaded machine counts what the job itself uses. The
    plain route has no permutation refits: redoing PyMARE's REML fit per permutation would
    cost one PyMARE REML fit (CPU time here), so that is the ratio printed. ``meta_voxelwise`` runs
    ``1 + len(moderators)`` such nulls per network (5 with the demo's 4 moderators).
    """
    opts = meta.resolve_options({"n_permutations": n_perm, "seed": seed})
    x = np.random.default_rng(seed).normal(50, 8, Y.shape[0])
    X = np.column_stack([np.ones(x.size), x])
    meta.sign_flip_null(Y[:, :10], V[:, :10], opts, np.random.default_rng(seed))  # compile
    meta.moderator_permutation_null(Y[:, :10], V[:, :10], X, opts, np.random.default_rng(seed))
    per, results = {}, {}
    for compiled in (False, True):
        meta._COMPILED = compiled
        t0 = time.process_time()
        flip = meta.sign_flip_null(Y, V, opts, np.random.default_rng(seed))[0]
        t1 = time.process_time()
        mod = meta.moderator_permutation_null(Y, V, X, opts, np.random.default_rng(seed))[0]
        t2 = time.process_time()
        per[compiled] = ((t1 - t0) / n_perm, (t2 - t1) / n_perm)
        results[compiled] = (flip, mod)
    meta._COMPILED = True
    from pymare.estimators import VarianceBasedLikelihoodEstimator

    t0 = time.process_time()
    VarianceBasedLikelihoodEstimator(method="REML").fit(y=Y, v=V, X=np.ones((Y.shape[0], 1)))
    t_pymare = time.process_time() - t0
    print(f"\npermutations (REML, Knapp-Hartung; {n_perm} each, CPU ms per permutation):")
    for label, i in (("sign-flip (main effect)", 0), ("moderator (meta-regression)", 1)):
        before, after = per[False][i] * 1000, per[True][i] * 1000
        diff = np.max(np.abs(results[True][i] - results[False][i]))
        print(f"  {label}: numpy batches {before:.1f} ms, compiled {after:.1f} ms -> "
              f"{before / after:.1f}x; max |diff| of the null maxima {diff:.1e}")
    loops = per[True][0] + 4 * per[True][1], per[False][0] + 4 * per[False][1]
    print(f"  one network, main effect + 4 moderators x {n_perm} permutations: "
          f"{loops[1] * n_perm:.1f} s -> {loops[0] * n_perm:.1f} s CPU")
    print(f"  PyMARE REML fit (one permutation by the plain route) {t_pymare * 1000:.0f} ms vs "
          f"msnet compiled sign-flip {per[True][0] * 1000:.1f} ms -> "
          f"{t_pymare / per[True][0]:.0f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=25)
    parser.add_argument("--voxels", type=int, default=50_000)
    parser.add_argument("--permutations", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import nimare  # noqa: F401  (import cost kept out of the timings)

    with tempfile.TemporaryDirectory() as tmp:
        g_maps, v_maps, mask_path = make_inputs(Path(tmp), args.studies, args.voxels, args.seed)
        print(f"input: {args.studies} studies x {args.voxels} voxels (float32 NIfTI)")
        for method in ("DL", "REML"):
            ours, t_load, t_fit, Y, V, n_bad = run_msnet(g_maps, v_maps, mask_path, method)
            theirs, t_nimare = run_nimare(g_maps, v_maps, mask_path, method)
            t_pymare = run_pymare(Y, V, method)
            total = t_load + t_fit
            print(f"\n{method}: msnet load {t_load:.2f} s + fit {t_fit:.2f} s = {total:.2f} s; "
                  f"NiMARE .fit {t_nimare:.2f} s -> ratio {t_nimare / total:.1f}x; "
                  f"compute only: PyMARE {t_pymare:.2f} s vs msnet {t_fit:.2f} s -> "
                  f"{t_pymare / t_fit:.1f}x; msnet REML not converged: {n_bad}")
            for key in ("est", "se", "tau2", "z"):
                diff = np.abs(ours[key] - theirs[key])
                rel = diff / np.maximum(np.abs(theirs[key]), 1e-8)
                print(f"  {key:5s} max |diff| {np.nanmax(diff):.2e}  max rel {np.nanmax(rel):.2e}")
        if args.permutations:
            time_permutations(Y, V, args.permutations, args.seed)

if __name__ == "__main__":
    main()
