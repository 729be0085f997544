"""Benchmark: msnet's batched Freedman–Lane permutation engine vs nilearn ``permuted_ols``.

Same data, same model, one run: N subjects in S studies (MS/HC group tested; age, sex, mean
FD and one indicator per study as confounds), V voxels on a 3-D grid of smooth noise.
msnet runs ``--n-perm`` permutations; nilearn runs ``--nilearn-perm`` (fewer, it is slow) and
its time per permutation is extrapolated to ``--n-perm``. Both null distributions of the
maximum |t| are compared (95th percentile = the voxel-level FWE threshold at alpha 0.05,
with a bootstrap Monte-Carlo standard error from the smaller nilearn sample).

Run:  python benchmarks/bench_permutation.py [--clusters] [--n-jobs 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage


def make_data(n_subjects, n_studies, n_voxels, seed=0):
    """Design (tested, confounds), data (N, V) and the 3-D mask of the V voxels."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(n_voxels ** (1 / 3)))
    mask = np.zeros(side**3, bool)
    mask[:n_voxels] = True
    mask = mask.reshape(side, side, side)
    study = np.repeat(np.arange(n_studies), int(np.ceil(n_subjects / n_studies)))[:n_subjects]
    group = (rng.random(n_subjects) < 0.63).astype(float)
    age = rng.normal(40, 10, n_subjects)
    sex = rng.integers(0, 2, n_subjects).astype(float)
    fd = rng.gamma(2.0, 0.08, n_subjects)
    dummies = (study[:, None] == np.arange(n_studies)[None, :]).astype(float)
    confounds = np.column_stack([dummies, age, sex, fd])
    vol = ndimage.gaussian_filter(rng.normal(size=(n_subjects, side, side, side)).astype(
        np.float32), (0, 1.0, 1.0, 1.0))
    Y = vol.reshape(n_subjects, -1)[:, mask.ravel()]
    Y += 0.05 * study[:, None] + 0.01 * age[:, None]
    return group, confounds, Y, mask, study


def run_msnet(group, confounds, Y, mask, n_perm, clusters, n_jobs, blocks=None):
    from msnet.stats import permuted_glm

    t0 = time.perf_counter()
    res = permuted_glm(Y, group, confounds, n_perm=n_perm, seed=1, mask=mask,
                       cluster_forming_p=0.001 if clusters else None, n_jobs=n_jobs,
                       blocks=blocks)
    return time.perf_counter() - t0, res


def run_nilearn(group, confounds, Y, mask, n_perm, clusters, n_jobs):
    import nibabel as nib
    from nilearn.maskers import NiftiMasker
    from nilearn.mass_univariate import permuted_ols

    kwargs = {}
    if clusters:
        img = nib.Nifti1Image(mask.astype(np.uint8), np.eye(4))
        kwargs = {"masker": NiftiMasker(img).fit(), "threshold": 0.001}
    t0 = time.perf_counter()
    out = permuted_ols(group[:, None], Y, confounding_vars=confounds, model_intercept=False,
                       n_perm=n_perm, random_state=1, n_jobs=n_jobs, **kwargs)
    return time.perf_counter() - t0, out


def q95_with_se(h0, rng, n_boot=2000):
    boots = [np.quantile(rng.choice(h0, h0.size), 0.95) for _ in range(n_boot)]
    return float(np.quantile(h0, 0.95)), float(np.std(boots))


def nl_ratio(per_nl, per):
    return f"{per_nl / per:.1f}x faster"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-subjects", type=int, default=1000)
    parser.add_argument("--n-studies", type=int, default=25)
    parser.add_argument("--n-voxels", type=int, default=20000)
    parser.add_argument("--n-perm", type=int, default=1000)
    parser.add_argument("--nilearn-perm", type=int, default=100)
    parser.add_argument("--clusters", action="store_true",
                        help="also cluster-size inference (p<0.001) in both")
    parser.add_argument("--n-jobs", type=int, default=1)
    args = parser.parse_args(argv)

    group, confounds, Y, mask, study = make_data(args.n_subjects, args.n_studies, args.n_voxels)
    print(f"N={args.n_subjects} subjects, {args.n_studies} studies, V={Y.shape[1]} voxels, "
          f"{confounds.shape[1]} confounds, clusters={args.clusters}, n_jobs={args.n_jobs}")
    t_ms, res = run_msnet(group, confounds, Y, mask, args.n_perm, args.clusters, args.n_jobs)
    t_nl, ref = run_nilearn(group, confounds, Y, mask, args.nilearn_perm, args.clusters,
                            args.n_jobs)
    per_ms, per_nl = t_ms / args.n_perm, t_nl / args.nilearn_perm
    print(f"msnet   : {per_ms * 1e3:8.2f} ms/permutation, {args.n_perm} permutations "
          f"{t_ms:8.1f} s (measured)")
    print(f"nilearn : {per_nl * 1e3:8.2f} ms/permutation, {args.n_perm} permutations "
          f"{per_nl * args.n_perm:8.1f} s (extrapolated from {args.nilearn_perm} "
          f"permutations, {t_nl:.1f} s)")
    print(f"speed-up: {per_nl / per_ms:.1f}x")
    print(f"observed t identical: max |diff| = {np.abs(res.t - ref['t'][0]).max():.2e}")
    rng = np.random.default_rng(0)
    q_ms, se_ms = q95_with_se(res.h0_max_t, rng)
    q_nl, se_nl = q95_with_se(ref["h0_max_t"][0], rng)
    se = np.hypot(se_ms, se_nl)
    verdict = "agree" if abs(q_ms - q_nl) <= 3 * se else "DISAGREE"
    print(f"voxel FWE threshold (95th pct of max|t|): msnet {q_ms:.3f}, nilearn {q_nl:.3f}, "
          f"diff {q_ms - q_nl:+.3f} (MC SE {se:.3f}) -> {verdict}")
    t_bl, res_bl = run_msnet(group, confounds, Y, mask, args.n_perm, args.clusters,
                             args.n_jobs, blocks=study)
    print(f"msnet, permutations within study (option permute_within_study; no nilearn "
          f"equivalent): {t_bl / args.n_perm * 1e3:.2f} ms/permutation, "
          f"{nl_ratio(per_nl, t_bl / args.n_perm)} vs nilearn; FWE threshold "
          f"{np.quantile(res_bl.h0_max_t, 0.95):.3f}")
    if args.clusters:
        c_ms = np.quantile(res.clusters.h0_max_size, 0.95)
        c_nl = np.quantile(ref["h0_max_size"][0], 0.95)
        print(f"cluster FWE threshold (95th pct of max size): msnet {c_ms:.1f}, "
              f"nilearn {c_nl:.1f} voxels")


if __name__ == "__main__":
    main()
