"""Benchmark: ComBat on voxel matrices, msnet's adapter vs a plain neuroHarmonize call.

Same input for both: the demo's subjects (``simulate.plan_dataset`` of the default config:
group, age, sex, disease duration, EDSS, T2LV; one site per study) and a random
``subjects x --voxels`` float32 map matrix with a planted additive and multiplicative site
effect. It times

* msnet: :meth:`msnet.harmonize.Harmonizer.maps` (preserved covariates built from the
  subjects table, usable rows, unharmonisable-voxel check, ``harmonizationLearn``, the
  per-site shrinkage table);
* plain: ``neuroHarmonize.harmonizationLearn(Y, covars)`` with the same covariate table built
  beforehand (compute only),

and prints both times (best of ``--repeats``), their ratio and the largest absolute
difference of the harmonised data. ``--subjects N`` repeats the subjects table up to N rows
(e.g. 2410 for the published sample).

Usage: ``python benchmarks/bench_combat.py [--voxels 30000] [--subjects 0] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

from msnet import simulate
from msnet.harmonize import Harmonizer, combat_covariates


def make_inputs(n_voxels: int, n_subjects: int, seed: int = 0):
    """The demo's subjects (repeated up to ``n_subjects``) and their maps with site effects."""
    subjects = simulate.plan_dataset({}, 20261121)
    if n_subjects and n_subjects > len(subjects):
        reps = int(np.ceil(n_subjects / len(subjects)))
        subjects = pd.concat([subjects] * reps, ignore_index=True).iloc[:n_subjects]
    rng = np.random.default_rng(seed)
    subjects["mean_fd"] = rng.uniform(0.05, 0.3, len(subjects))
    sites = subjects["study_id"].to_numpy()
    levels, index = np.unique(sites, return_inverse=True)
    add = rng.normal(0, 0.3, (len(levels), n_voxels)).astype(np.float32)
    mult = np.exp(rng.normal(0, 0.3, len(levels))).astype(np.float32)
    Y = rng.standard_normal((len(subjects), n_voxels), dtype=np.float32) * mult[index, None]
    Y += add[index] + 0.3 * (subjects["group"] == "MS").to_numpy(np.float32)[:, None]
    return subjects, Y


def run_msnet(subjects, Y):
    t0 = time.perf_counter()
    harmonizer = Harmonizer(covariates=["age", "sex", "mean_fd"])
    _, out, _ = harmonizer.maps(subjects, Y, "DMN")
    return time.perf_counter() - t0, out


def run_plain(subjects, Y):
    from neuroHarmonize import harmonizationLearn

    cov, _ = combat_covariates(subjects, ["age", "sex", "mean_fd"])
    covars = cov.reset_index(drop=True)
    covars.insert(0, "SITE", subjects["study_id"].to_numpy())
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        _, out = harmonizationLearn(Y.astype(np.float64), covars)
    return time.perf_counter() - t0, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=30000)
    parser.add_argument("--subjects", type=int, default=0,
                        help="repeat the demo's subjects up to this many (0: the demo's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    subjects, Y = make_inputs(args.voxels, args.subjects)
    print(f"ComBat: {len(subjects)} subjects x {args.voxels} voxels, "
          f"{subjects['study_id'].nunique()} sites")
    t_msnet, out_msnet = min((run_msnet(subjects, Y) for _ in range(args.repeats)),
                             key=lambda r: r[0])
    t_plain, out_plain = min((run_plain(subjects, Y) for _ in range(args.repeats)),
                             key=lambda r: r[0])
    diff = float(np.abs(out_msnet.astype(np.float64) - out_plain).max())
    print(f"msnet Harmonizer.maps      {t_msnet:8.2f} s")
    print(f"neuroHarmonize (plain)     {t_plain:8.2f} s")
    print(f"ratio msnet / plain        {t_msnet / t_plain:8.2f}")
    print(f"max |difference|           {diff:8.2e} (msnet returns float32)")


if __name__ == "__main__":
    main()
