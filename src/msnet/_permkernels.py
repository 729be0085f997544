"""Compiled inner loops of :func:`msnet.stats.permuted_glm` (numba; private).

Imported lazily by :mod:`msnet.stats` the first time a permutation null needs them, so the
stages that never permute do not pay numba's import and cache load (2.8–4.3 s on the shared
2-core machine, printed by ``benchmarks/bench_permutation.py``). Every function releases the
GIL (``nogil``): :func:`msnet.stats.permuted_glm` runs them on ``n_jobs`` threads.

Why compiled code: the three per-permutation steps that are not matrix products are loops
whose work is proportional to the data, not to a Python call per step:

* :func:`group_projection` — the squared projection of the residuals on the permuted study
  indicators, ``sum_s (sum_{i in group s} E_i)^2 / n_s`` per voxel. As a dense matrix product
  it costs one row per study (25 of the 29 rows of a pooled design); as a scatter-add its
  cost does not grow with the number of studies (``bench_permutation.py``, N=2,410: 53–61 ms
  per permutation across studies with it, 25–42 ms within study without it).
* :func:`tfce_max` — the maximum TFCE of a map in one sorted pass with a union-find (instead
  of 2 x 100 ``scipy.ndimage.label`` calls on the whole grid).
* :func:`cluster_max` — the largest supra-threshold cluster size and mass, with a union-find
  over the supra-threshold voxels only.
"""

from __future__ import annotations

import numpy as np
from numba import njit

CHUNK = 64
"""Voxels per block of :func:`group_projection` (one 256-byte row of float32 per subject)."""


@njit(nogil=True, cache=True)
def _root_maxima(parent, size, mass, n):  # pragma: no cover
    """Largest size and mass over the union-find roots (the components) of ``n`` elements."""
    max_size = 0
    max_mass = 0.0
    for v in range(n):
        if parent[v] == v:
            if size[v] > max_size:
                max_size = size[v]
            if mass[v] > max_mass:
                max_mass = mass[v]
    return max_size, max_mass


@njit(nogil=True, cache=True, boundscheck=False, fastmath=True, error_model="numpy")
def group_projection(E, offsets, inv_size, out, c0, c1, n_groups):  # pragma: no cover
    """``out[b, v] = sum_s inv_size[s] * (sum_{i: group_b(i) = s} E[i, v])^2`` for v in [c0, c1).

    Parameters
    ----------
    E : float32 array, shape (n, V), C-contiguous
        Confound-residualised data.
    offsets : uint64 array, shape (n_sub, n, sub)
        ``(b * n_groups + group_b(i)) * CHUNK`` for permutation ``b`` of each sub-batch of
        ``sub`` permutations (sub-batches keep the accumulators in the L1/L2 cache).
    inv_size : float64 array, shape (n_groups,)
        ``1 / n_s``.
    out : float32 array, shape (n_sub * sub, V)
        Output rows (rows past the real batch are padding and ignored).
    c0, c1 : int
        Voxel range (multiples of CHUNK except for ``c1 = V``), so threads split the voxels.
    n_groups : int
    """
    n, V = E.shape
    n_sub, _, sub = offsets.shape
    cw = np.uint64(CHUNK)
    Vu = np.uint64(V)
    Ef = E.ravel()
    buf = np.zeros(n * CHUNK, np.float32)
    G = np.empty(sub * n_groups * CHUNK, np.float32)
    tot = np.empty(CHUNK, np.float32)
    sub_u = np.uint64(sub)
    S = np.uint64(n_groups)
    for start in range(np.uint64(c0), np.uint64(c1), cw):
        w = min(cw, np.uint64(c1) - start)
        for i in range(np.uint64(n)):
            src = i * Vu + start
            dst = i * cw
            for j in range(w):
                buf[dst + j] = Ef[src + j]
        for k in range(n_sub):
            off = offsets[k].ravel()
            G[:] = 0.0
            for i in range(np.uint64(n)):
                ib = i * cw
                li = i * sub_u
                for b in range(sub_u):
                    o = off[li + b]
                    for j in range(cw):
                        G[o + j] += buf[ib + j]
            for b in range(sub_u):
                tot[:] = 0.0
                for s in range(S):
                    f = np.float32(inv_size[s])
                    gs = (b * S + s) * cw
                    for j in range(cw):
                        x = G[gs + j]
                        tot[j] += f * x * x
                row = np.uint64(k) * sub_u + b
                for j in range(w):
                    out[row, start + j] = tot[j]


@njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
def freedman_lane_t(prod, group, ss_tot, sxx, df, two_sided, t_out, max_out, r0,
                    r1):  # pragma: no cover
    """t maps (into ``t_out`` when it has rows) and their maxima for permutations [r0, r1).

    ``prod[b, 0]`` is the numerator ``(P'x~)' E`` and ``prod[b, 1:]`` the dense part of
    ``(P'Q)' E`` (float32 products); ``group[b]`` the indicator part of the projection (no rows
    when there is none). ``rss = ss_tot - num^2 / sxx - sum(dense^2) - group`` in float64.
    """
    rows = prod.shape[1]
    V = prod.shape[2]
    keep = t_out.shape[0] > 0
    has_group = group.shape[0] > 0
    scale = sxx / df
    for b in range(r0, r1):
        top = -np.inf
        for v in range(V):
            num = np.float64(prod[b, 0, v])
            rss = ss_tot[v] - num * num / sxx
            for r in range(1, rows):
                d = np.float64(prod[b, r, v])
                rss -= d * d
            if has_group:
                rss -= group[b, v]
            t = num / np.sqrt(scale * max(rss, 1e-30))
            if keep:
                t_out[b, v] = t
            a = abs(t) if two_sided else t
            if a > top:
                top = a
        max_out[b] = top


@njit(nogil=True, cache=True)
def _find(parent, v):  # pragma: no cover
    """Root of ``v`` with path halving."""
    while parent[v] != v:
        parent[v] = parent[parent[v]]
        v = parent[v]
    return v


@njit(nogil=True, cache=True, boundscheck=False)
def tfce_max(x, steps, h_pow, neighbours, size_pow):  # pragma: no cover
    """Maximum over voxels of ``TFCE(v) = sum_{k: steps[k] <= x[v]} size_pow[e_k(v)] h_pow[k]``.

    ``e_k(v)`` is the size of the connected component of ``{x >= steps[k]}`` holding ``v``
    (components of ``neighbours``) and ``size_pow[e] = e^E``; ``steps`` are the equal
    thresholds of :func:`tfce_thresholds`. Voxels are added from the highest level down with
    a union-find; after each level every component adds ``size^E h_pow[k]`` to the running
    score of its best voxel. The maximum TFCE is reached at a voxel that is the highest of
    its component at its own top level (it shares every lower component and is in more of
    them), so only the best running score of each component is kept: a merge keeps the
    larger. Equals ``max(tfce)`` of the step-by-step definition (nilearn, fslmaths).
    """
    V = x.size
    n_steps = steps.size
    step = steps[0]
    level = np.empty(V, np.int32)
    count = np.zeros(n_steps + 2, np.int32)
    for v in range(V):
        xv = x[v]
        if not xv >= step:
            level[v] = 0
            continue
        k = min(int(xv / step), n_steps)  # number of steps <= xv, up to rounding
        while k < n_steps and steps[k] <= xv:
            k += 1
        while k > 0 and steps[k - 1] > xv:
            k -= 1
        level[v] = k
        count[k] += 1
    start = np.zeros(n_steps + 2, np.int32)
    for k in range(n_steps - 1, -1, -1):  # level k starts after every level above it
        start[k] = start[k + 1] + count[k + 1]
    order = np.empty(start[0], np.int32)
    for v in range(V):
        k = level[v]
        if k > 0:
            order[start[k]] = v
            start[k] += 1
    parent = np.full(V, -1, np.int32)  # -1: not added yet
    size = np.empty(V, np.int32)
    best = np.empty(V, np.float64)
    roots = np.empty(order.size, np.int32)
    n_roots = 0
    n_nb = neighbours.shape[1]
    pos = 0
    for k in range(n_steps, 0, -1):
        for _ in range(count[k]):
            v = order[pos]
            pos += 1
            parent[v] = v
            size[v] = 1
            best[v] = 0.0
            roots[n_roots] = v
            n_roots += 1
            rv = v
            for j in range(n_nb):
                u = neighbours[v, j]
                if u < 0 or parent[u] < 0:
                    continue
                ru = _find(parent, u)
                if ru == rv:
                    continue
                if size[ru] < size[rv]:
                    ru, rv = rv, ru
                parent[rv] = ru
                size[ru] += size[rv]
                if best[rv] > best[ru]:
                    best[ru] = best[rv]
                rv = ru
        h = h_pow[k - 1]
        kept = 0
        for r_i in range(n_roots):
            r = roots[r_i]
            if parent[r] == r:
                roots[kept] = r
                kept += 1
                best[r] += size_pow[size[r]] * h
        n_roots = kept
    top = 0.0
    for r_i in range(n_roots):
        if best[roots[r_i]] > top:
            top = best[roots[r_i]]
    return top


@njit(nogil=True, cache=True)
def cluster_max(x, threshold, neighbours):  # pragma: no cover
    """Largest size and largest mass ``sum(x - threshold)`` of the clusters of ``x > threshold``."""
    V = x.size
    parent = np.full(V, -1, np.int64)
    size = np.zeros(V, np.int64)
    mass = np.zeros(V, np.float64)
    for v in range(V):
        if x[v] > threshold:
            parent[v] = v
            size[v] = 1
            mass[v] = x[v] - threshold
    n_nb = neighbours.shape[1]
    for v in range(V):
        if parent[v] < 0:
            continue
        for j in range(n_nb):
            u = neighbours[v, j]
            if u < 0 or u > v or parent[u] < 0:
                continue
            ru = _find(parent, u)
            rv = _find(parent, v)
            if ru == rv:
                continue
            if size[ru] < size[rv]:
                ru, rv = rv, ru
            parent[rv] = ru
            size[ru] += size[rv]
            mass[ru] += mass[rv]
    return _root_maxima(parent, size, mass, V)


@njit(nogil=True, cache=True)
def tfce_thresholds(top, n_steps):  # pragma: no cover
    """``numpy.linspace(0, top, n_steps + 1)[1:]``, bit for bit (``k * (top / n_steps)``)."""
    steps = np.empty(n_steps, np.float64)
    step = top / n_steps
    for k in range(1, n_steps):
        steps[k - 1] = k * step
    steps[n_steps - 1] = top
    return steps


@njit(nogil=True, cache=True)
def null_maxima(T, two_sided, threshold, do_clusters, tfce_steps, E, H, neighbours,
                out_size, out_mass, out_tfce):  # pragma: no cover
    """Cluster and TFCE null maxima of each row of ``T`` (rows = permutations)."""
    size_pow = np.zeros(0)
    for b in range(T.shape[0]):
        t = T[b]
        if do_clusters:
            s, m = cluster_max(t, threshold, neighbours)
            if two_sided:
                s2, m2 = cluster_max(-t, threshold, neighbours)
                s = max(s, s2)
                m = max(m, m2)
            out_size[b] = s
            out_mass[b] = m
        if tfce_steps > 0:
            if size_pow.size == 0:
                size_pow = np.arange(t.size + 1).astype(np.float64) ** E
            top = np.max(np.abs(t)) if two_sided else np.max(t)
            if not top > 0:
                out_tfce[b] = 0.0
                continue
            steps = tfce_thresholds(top, tfce_steps)
            h_pow = steps**H
            best = tfce_max(t, steps, h_pow, neighbours, size_pow)
            if two_sided:
                best = max(best, tfce_max(-t, steps, h_pow, neighbours, size_pow))
            out_tfce[b] = best


@njit(nogil=True, cache=True)
def graph_cluster_max(x, threshold, ei, ej, n_nodes):  # pragma: no cover
    """Largest size (edges) and mass ``sum(x - threshold)`` of the connected components of
    the graph of the edges with ``x > threshold`` (edge ``e`` joins nodes ``ei[e]``,
    ``ej[e]``): the Network-Based Statistic's component null (:class:`msnet.nbs.EdgeGraph`),
    with a union-find over the nodes instead of labelling the graph."""
    parent = np.arange(n_nodes)
    size = np.zeros(n_nodes, np.int64)
    mass = np.zeros(n_nodes, np.float64)
    for e in range(x.size):
        if x[e] > threshold:
            a = _find(parent, ei[e])
            b = _find(parent, ej[e])
            if a != b:
                if size[a] < size[b]:
                    a, b = b, a
                parent[b] = a
                size[a] += size[b]
                mass[a] += mass[b]
            size[a] += 1
            mass[a] += x[e] - threshold
    return _root_maxima(parent, size, mass, n_nodes)


@njit(nogil=True, cache=True)
def graph_null_maxima(T, two_sided, threshold, ei, ej, n_nodes, out_size,
                      out_mass):  # pragma: no cover
    """:func:`graph_cluster_max` of each row of ``T`` (and of ``-T`` when two-sided, the
    larger of the two signs kept)."""
    for b in range(T.shape[0]):
        s, m = graph_cluster_max(T[b], threshold, ei, ej, n_nodes)
        if two_sided:
            s2, m2 = graph_cluster_max(-T[b], threshold, ei, ej, n_nodes)
            s = max(s, s2)
            m = max(m, m2)
        out_size[b] = s
        out_mass[b] = m
