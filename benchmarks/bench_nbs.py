"""Benchmark msnet's Network-Based Statistic against bctpy's ``nbs_bct`` on the same input.

Both run the same two-sample NBS (no covariates, one study, component size, one-sided
primary threshold ``t > 3``) on the same synthetic Seitzman-sized matrices (300 nodes,
44,850 edges; a DMN-SMN-like block lowered in the first group) and the same permutations
(bctpy is driven through a RandomState that replays them), one thread each. Prints the CPU
seconds of each, the ratio, and whether the null distributions of the largest component
agree; msnet is also timed at a larger permutation count (its cost per permutation falls as
batches fill).

Usage::

    python benchmarks/bench_nbs.py [--nodes 300] [--subjects 40] [--permutations 20]
                                   [--msnet-permutations 1000]

Needs bctpy (the ``test`` extra). Measured figures are in the README's speed table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def _stack(Y, n_nodes, rows):
    i, j = np.triu_indices(n_nodes, 1)
    M = np.zeros((n_nodes, n_nodes, len(rows)))
    for k, r in enumerate(rows):
        M[i, j, k] = Y[r]
        M[j, i, k] = Y[r]
    return M


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--subjects", type=int, default=40, help="both groups together")
    parser.add_argument("--permutations", type=int, default=20,
                        help="permutations of the side-by-side run (bctpy is slow)")
    parser.add_argument("--msnet-permutations", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=3.0)
    args = parser.parse_args(argv)

    import bct

    from msnet import nbs as N
    from msnet import stats as st

    rng = np.random.default_rng(0)
    n, nn, k = args.subjects, args.nodes, args.permutations
    nx = n // 2
    i, j = np.triu_indices(nn, 1)
    Y = rng.standard_normal((n, i.size))
    block = (i < nn // 5) & (j >= nn // 5) & (j < nn // 3)
    Y[:nx, block] -= 0.8
    x, y = _stack(Y, nn, range(nx)), _stack(Y, nn, range(nx, n))
    tested = np.r_[np.ones(nx), np.zeros(n - nx)]
    graph = N.EdgeGraph.complete(nn)
    print(f"NBS, {nn} nodes ({i.size:,} edges), {n} subjects ({nx} vs {n - nx}), "
          f"t > {args.threshold:g} (MS < HC tail), component size, one thread")

    # warm-up: numba's compiled kernels are loaded from the cache on first use
    N.nbs(Y[:, :100], tested, np.ones((n, 1)), N.EdgeGraph(np.c_[i[:100], j[:100]], nn),
          threshold=args.threshold, tail="negative", n_perm=2)

    perms = [rng.permutation(n) for _ in range(k)]

    class Replay(np.random.RandomState):
        def __init__(self):
            super().__init__(0)
            self.queue = list(perms)

        def permutation(self, m):
            return self.queue.pop(0)

    c0 = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        _, _, null_bct = bct.nbs_bct(x, y, args.threshold, k=k, tail="left", seed=Replay())
    t_bct = time.process_time() - c0

    queue = [np.argsort(p) for p in perms]
    draw = st.draw_permutations

    def replay(rng_, b, n_, blocks=None):
        out = np.array(queue[:b])
        del queue[:b]
        return out

    st.draw_permutations = replay
    try:
        c0 = time.process_time()
        res = N.nbs(Y, tested, np.ones((n, 1)), graph, threshold=args.threshold,
                    tail="negative", n_perm=k)
        t_msnet = time.process_time() - c0
    finally:
        st.draw_permutations = draw
    same = np.array_equal(res.h0_size, null_bct)
    print(f"bctpy nbs_bct, {k} permutations: {t_bct:8.2f} s CPU "
          f"({1000 * t_bct / k:,.0f} ms per permutation)")
    print(f"msnet nbs,     {k} permutations: {t_msnet:8.2f} s CPU "
          f"({1000 * t_msnet / k:,.1f} ms per permutation)")
    print(f"ratio bctpy / msnet: {t_bct / t_msnet:,.0f}x; null distributions identical: {same}")

    K = args.msnet_permutations
    c0 = time.process_time()
    N.nbs(Y, tested, np.ones((n, 1)), graph, threshold=args.threshold, tail="negative",
          n_perm=K, seed=1)
    t_big = time.process_time() - c0
    print(f"msnet nbs,   {K} permutations: {t_big:8.2f} s CPU "
          f"({1000 * t_big / K:,.2f} ms per permutation; bctpy at its rate: "
          f"{t_bct / k * K / 60:,.0f} min)")


if __name__ == "__main__":
    main()
