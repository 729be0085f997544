"""Benchmark: msnet's permutation engine vs nilearn ``permuted_ols``, side by side in one run.

Same data, same model, same statistic: N subjects in 25 studies (MS/HC group tested; one
indicator per study, age, sex and mean FD as confounds), one smooth-noise map per subject
over the 4 mm MNI152 brain mask (29,398 voxels), Freedman–Lane permutations across the
whole sample (nilearn's scheme). For every N and every kind of inference — voxel max-t,
cluster size and mass (cluster-forming p < 0.001), TFCE — the script runs msnet
``permuted_glm`` with ``--n-perm`` permutations and nilearn ``permuted_ols`` with fewer (it is
slow), each with the same number of threads (BLAS included), and prints:

* ms per permutation of each: the time spent in the permutation loop divided by the number of
  permutations (nilearn: its ``_permuted_ols_on_chunk``; msnet: from building its permutation
  operator to the end), and their ratio;
* minutes for 5,000 permutations: the set-up (observed statistics) plus 5,000 times the
  per-permutation cost;
* agreement: the observed maps (t, TFCE, cluster size and mass) side by side, and the null
  distributions of the maxima (so the FWE p-values): their 95th percentiles (the FWE
  thresholds at alpha 0.05) with bootstrap Monte-Carlo standard errors, the number of
  nilearn's null maxima above msnet's threshold (binomial test of 5%), and a two-sample
  Kolmogorov–Smirnov p.

msnet's within-study permutations (its default for pooled analyses, ``permute_within_study``;
nilearn has no equivalent) are timed too, for voxel max-t.

Run:  python benchmarks/bench_permutation.py [--sizes 1000 2410] [--n-jobs 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage
from scipy import stats as sps

KINDS = ("voxel max-t", "cluster size/mass", "TFCE")


def brain_mask():
    """The 4 mm MNI152 brain mask (image and boolean array)."""
    from nilearn.datasets import load_mni152_brain_mask

    img = load_mni152_brain_mask(resolution=4)
    return img, np.asarray(img.dataobj) > 0


def make_data(n_subjects, n_studies, mask, seed=0):
    """Design (tested, confounds, study) and data (N, V): smooth noise within the mask."""
    rng = np.random.default_rng(seed)
    study = np.repeat(np.arange(n_studies), int(np.ceil(n_subjects / n_studies)))[:n_subjects]
    group = (rng.random(n_subjects) < 0.63).astype(float)
    age = rng.normal(40, 10, n_subjects)
    sex = rng.integers(0, 2, n_subjects).astype(float)
    fd = rng.gamma(2.0, 0.08, n_subjects)
    dummies = (study[:, None] == np.arange(n_studies)[None, :]).astype(float)
    confounds = np.column_stack([dummies, age, sex, fd])
    Y = np.empty((n_subjects, int(mask.sum())), np.float32)
    for start in range(0, n_subjects, 100):
        k = min(100, n_subjects - start)
        vol = ndimage.gaussian_filter(rng.normal(size=(k, *mask.shape)).astype(np.float32),
                                      (0, 1.0, 1.0, 1.0))
        Y[start:start + k] = vol[:, mask]
    Y += (0.05 * study + 0.01 * age)[:, None].astype(np.float32)
    return group, confounds, Y, study


def kind_options(kind):
    """msnet and nilearn keyword arguments of one kind of inference."""
    if kind == "cluster size/mass":
        return {"cluster_forming_p": 0.001}, {"threshold": 0.001}
    if kind == "TFCE":
        return {"tfce": True}, {"tfce": True}
    return {}, {}


def run_msnet(group, confounds, Y, mask, n_perm, kind, n_jobs, blocks=None):
    """Run msnet; return (total s, permutation-loop s, result)."""
    from msnet import stats

    opts, _ = kind_options(kind)
    marks = []
    init = stats._NullT.__init__

    def timed_init(self, *args, **kwargs):
        marks.append(time.perf_counter())
        init(self, *args, **kwargs)

    stats._NullT.__init__ = timed_init
    try:
        t0 = time.perf_counter()
        res = stats.permuted_glm(Y, group, confounds, n_perm=n_perm, seed=1, mask=mask,
                                 n_jobs=n_jobs, blocks=blocks, **opts)
        end = time.perf_counter()
    finally:
        stats._NullT.__init__ = init
    return end - t0, end - marks[0], res


def run_nilearn(group, confounds, Y, mask_img, n_perm, kind, n_jobs):
    """Run nilearn ``permuted_ols`` (BLAS limited to ``n_jobs`` threads, as msnet) on the data
    in float64 (msnet computes in float64 too); return (total s, permutation-loop s, output)."""
    from nilearn.maskers import NiftiMasker
    from nilearn.mass_univariate import permuted_least_squares as pls
    from threadpoolctl import threadpool_limits

    _, kwargs = kind_options(kind)
    if kwargs:
        kwargs["masker"] = NiftiMasker(mask_img).fit()
    spent = []
    chunk = pls._permuted_ols_on_chunk

    def timed_chunk(*args, **kw):
        t0 = time.perf_counter()
        out = chunk(*args, **kw)
        spent.append(time.perf_counter() - t0)
        return out

    pls._permuted_ols_on_chunk = timed_chunk
    try:
        with threadpool_limits(limits=n_jobs, user_api="blas"):
            t0 = time.perf_counter()
            out = pls.permuted_ols(group[:, None], Y.astype(float), confounding_vars=confounds,
                                   model_intercept=False, n_perm=n_perm, random_state=1,
                                   n_jobs=n_jobs, verbose=0, **kwargs)
            total = time.perf_counter() - t0
    finally:
        pls._permuted_ols_on_chunk = chunk
    return total, sum(spent), out


def q95_with_se(h0, rng, n_boot=2000):
    """95th percentile of a null sample and its bootstrap standard error."""
    h0 = np.asarray(h0, float)
    boots = np.quantile(rng.choice(h0, (n_boot, h0.size)), 0.95, axis=1)
    return float(np.quantile(h0, 0.95)), float(np.std(boots))


def compare_nulls(name, mine, ref, rng):
    """One-line comparison of msnet's null sample of a maximum with nilearn's (smaller) one.

    Both estimate the same permutation distribution. Reported: the 95th percentiles (FWE
    thresholds at alpha 0.05) with bootstrap Monte-Carlo SEs; how many of nilearn's maxima
    exceed msnet's threshold (about 5% expected; two-sided binomial p); the two-sample
    Kolmogorov–Smirnov p. Both p-values are valid for nilearn's few permutations (a
    bootstrap SE of a 95th percentile of 5 values is not); agreement = both above 0.01.
    """
    mine, ref = np.asarray(mine, float), np.asarray(ref, float)
    q_ms, se_ms = q95_with_se(mine, rng)
    q_nl, se_nl = q95_with_se(ref, rng)
    above = int(np.sum(ref > q_ms))
    binom = sps.binomtest(above, ref.size, 0.05).pvalue
    ks = sps.ks_2samp(mine, ref).pvalue
    verdict = "agree" if binom > 0.01 and ks > 0.01 else "DISAGREE"
    return (f"{name}: FWE threshold {q_ms:.4g} (SE {se_ms:.2g}, {mine.size} perms) vs "
            f"{q_nl:.4g} (SE {se_nl:.2g}, {ref.size}); {above}/{ref.size} nilearn maxima above "
            f"msnet's (binomial p {binom:.2f}); KS p {ks:.2f}: {verdict}")


def agreement(kind, res, ref, rng):
    """Observed maps and null distributions of msnet vs nilearn, as text."""
    t_ref = ref["t"][0]
    lines = [f"observed t max |diff| {np.abs(res.t - t_ref).max():.1e}"]
    if kind == "voxel max-t":
        lines.append(compare_nulls("max|t|", res.h0_max_t, ref["h0_max_t"][0], rng))
    elif kind == "TFCE":
        rel = np.abs(res.tfce - ref["tfce"][0]).max() / np.abs(ref["tfce"][0]).max()
        lines.append(f"observed TFCE max rel. diff {rel:.1e}")
        lines.append(compare_nulls("max|TFCE|", res.h0_max_tfce, ref["h0_max_tfce"][0], rng))
    else:
        c = res.clusters
        mass = np.r_[0.0, c.masses][c.labels]
        same_size = np.array_equal(np.r_[0, c.sizes][c.labels], ref["size"][0])
        lines.append(f"observed clusters {c.sizes.size}: cluster size map "
                     f"{'identical' if same_size else 'DIFFERENT'}, cluster mass map max |diff| "
                     f"{np.abs(mass - ref['mass'][0]).max():.1e}")
        lines.append(compare_nulls("max size", c.h0_max_size, ref["h0_max_size"][0], rng))
        lines.append(compare_nulls("max mass", c.h0_max_mass, ref["h0_max_mass"][0], rng))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2410],
                        help="numbers of subjects")
    parser.add_argument("--n-studies", type=int, default=25)
    parser.add_argument("--n-perm", type=int, default=1000,
                        help="msnet permutations (voxel max-t; half for clusters and TFCE)")
    parser.add_argument("--nilearn-perm", type=int, nargs=3, default=[100, 40, 12],
                        metavar=("MAXT", "CLUSTER", "TFCE"),
                        help="nilearn permutations at N=1000 per kind (scaled by 1000/N)")
    parser.add_argument("--n-jobs", type=int, default=1)
    args = parser.parse_args(argv)

    mask_img, mask = brain_mask()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    small = np.ones((6, 6, 6), bool)
    warm = make_data(60, 3, small)
    run_msnet(*warm[:3], small, 4, "TFCE", 1)  # numba import, compiled-code cache
    print(f"msnet's compiled kernels: {time.perf_counter() - t0:.1f} s once per process "
          f"(numba import and cache load; not counted below)")
    rows, notes = [], []
    print(f"{args.n_studies} studies, 4 mm MNI152 brain mask ({int(mask.sum())} voxels), "
          f"{args.n_studies + 3} confounds (study indicators, age, sex, FD), "
          f"n_jobs={args.n_jobs} for both (BLAS threads included)", flush=True)
    for n in args.sizes:
        group, confounds, Y, study = make_data(n, args.n_studies, mask)
        V = Y.shape[1]
        for kind, nl_perm in zip(KINDS, args.nilearn_perm):
            ms_perm = args.n_perm if kind == "voxel max-t" else max(1, args.n_perm // 2)
            nl_perm = max(3, round(nl_perm * 1000 / n))
            tot_ms, loop_ms, res = run_msnet(group, confounds, Y, mask, ms_perm, kind,
                                             args.n_jobs)
            tot_nl, loop_nl, ref = run_nilearn(group, confounds, Y, mask_img, nl_perm, kind,
                                               args.n_jobs)
            per_ms, per_nl = loop_ms / ms_perm, loop_nl / nl_perm
            full_ms = (tot_ms - loop_ms + 5000 * per_ms) / 60
            full_nl = (tot_nl - loop_nl + 5000 * per_nl) / 60
            rows.append((n, V, kind, per_ms * 1e3, per_nl * 1e3, per_nl / per_ms, full_ms,
                         full_nl, ms_perm, nl_perm))
            notes.append((n, kind, agreement(kind, res, ref, rng)))
            print(f"  N={n} {kind}: msnet {per_ms * 1e3:.1f} ms/perm ({ms_perm} perms), "
                  f"nilearn {per_nl * 1e3:.0f} ms/perm ({nl_perm} perms)", flush=True)
        n_bl = max(1, args.n_perm // 2)
        tot_bl, loop_bl, res_bl = run_msnet(group, confounds, Y, mask, n_bl, "voxel max-t",
                                            args.n_jobs, blocks=study)
        per_bl = loop_bl / n_bl
        per_nl = next(r[4] for r in rows if r[0] == n and r[2] == "voxel max-t") / 1e3
        notes.append((n, "voxel max-t, within-study permutations (msnet only)", [
            f"msnet {per_bl * 1e3:.1f} ms/perm = {per_nl / per_bl:.1f}x nilearn's "
            f"across-study time; FWE threshold {np.quantile(res_bl.h0_max_t, 0.95):.3f}"]))
        del Y

    print()
    head = (f"{'N':>5} {'voxels':>6}  {'inference':<18} {'msnet ms/perm':>13} "
            f"{'nilearn ms/perm':>15} {'ratio':>6}  {'5,000 perms: msnet':>18} {'nilearn':>8}")
    print(head)
    print("-" * len(head))
    for n, V, kind, ms, nl, ratio, full_ms, full_nl, _, _ in rows:
        print(f"{n:>5} {V:>6}  {kind:<18} {ms:>13.1f} {nl:>15.0f} {ratio:>5.1f}x  "
              f"{full_ms:>14.1f} min {full_nl:>4.0f} min")
    print()
    print("Agreement (msnet vs nilearn on the same data; nulls from different random "
          "permutations):")
    for n, kind, lines in notes:
        print(f"  N={n}, {kind}:")
        for line in lines:
            print(f"    {line}")


if __name__ == "__main__":
    main()
