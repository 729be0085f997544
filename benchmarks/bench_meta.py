"""Benchmark: voxelwise random-effects meta-analysis, msnet engine vs NiMARE IBMA.

Same input for both: ``--studies`` per-study g and var(g) maps (float32 NIfTI, written once
to a temporary folder) over a mask of ``--voxels`` voxels. For DL and REML (Wald inference,
the metafor default) it times

* msnet: loading the maps onto the mask (:func:`msnet.meta._load_maps`) + :func:`fit_rma`;
* NiMARE: ``DerSimonianLaird`` / ``VarianceBasedLikelihood(method="reml")`` ``.fit(dset)``
  (which also loads and masks the images), and the PyMARE estimator it wraps run directly on
  the masked arrays (compute only),

and prints both times, their ratio and the largest absolute differences of the pooled
estimate, its SE, τ² and z. Optionally (``--permutations N``) it also times N sign-flip
permutation refits of msnet's FWE procedure (NiMARE has none for random-effects models).

Usage: ``python benchmarks/bench_meta.py [--studies 25] [--voxels 50000] [--permutations 0]``
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
            opts = meta.resolve_options({"n_permutations": args.permutations})
            for method in ("DL", "REML"):
                opts["method"] = method
                t0 = time.perf_counter()
                meta.sign_flip_null(Y, V, opts, np.random.default_rng(args.seed))
                elapsed = time.perf_counter() - t0
                print(f"\nmsnet sign-flip {method}: {args.permutations} permutations in "
                      f"{elapsed:.2f} s ({elapsed / args.permutations * 1000:.0f} ms each)")


if __name__ == "__main__":
    main()
