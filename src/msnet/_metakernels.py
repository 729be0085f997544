"""Compiled permutation refits of the voxelwise meta-analysis (numba; private).

Imported lazily by :mod:`msnet.meta` the first time a voxelwise permutation null is computed
(:func:`msnet.meta.sign_flip_null`, :func:`msnet.meta.moderator_permutation_null`), so the
stages that never permute do not pay numba's import and cache load.

Why compiled code: a permutation refit is the whole random-effects fit of every voxel
(DerSimonian-Laird start, safeguarded REML Newton iterations, weighted least squares,
Knapp-Hartung) on k ~ 25 numbers per voxel. Vectorised over voxels in numpy
(:func:`msnet.meta._fit_core`) each of its ~40 array operations per Newton iteration makes a
(k x columns) temporary, gathers the still-active columns and passes over memory again, for
a few floating-point operations per element; here one voxel's k values stay in registers /
L1 cache for every permutation of a block and nothing is allocated per column.

:func:`perm_stats` repeats, column by column and operation by operation, what
:func:`msnet.meta._fit_core` computes (same start, same Newton/bisection safeguards, same
stopping rule ``|Δτ²| < 1e-10 max(1, τ²)``, sums accumulated in the same study order), so
the intercept-only model (the sign-flip null) agrees with it bit for bit; for
meta-regressions numpy forms ``X'WX`` by a BLAS matrix product whose summation order
differs, so the statistics agree to rounding (``tests/unit/test_meta.py`` checks both).
"""

from __future__ import annotations

import numpy as np
from numba import njit

REML, DL, FE = 0, 1, 2
"""Method codes of :func:`perm_stats`."""

_REML_TOL = 1e-10
_REML_MAX_ITER = 200
_KH_ZERO = 1e-12


@njit(inline="always")
def _npmax(a, b):  # pragma: no cover
    """``numpy.maximum(a, b)`` for scalars (NaN in ``b`` propagates; ``a`` wins ties)."""
    return a if (a >= b or a != a) else b


@njit(inline="always")
def _weights(v, w0, k, tau2, w):  # pragma: no cover
    """``w = 1 / (v + tau2)``; at ``tau2`` = 0 that is ``w0`` (= 1 / v) bit for bit."""
    if tau2 == 0:
        for i in range(k):
            w[i] = w0[i]
    else:
        for i in range(k):
            w[i] = 1.0 / (v[i] + tau2)


@njit(inline="always")
def _score1(y, w, k):  # pragma: no cover
    """REML terms ``(num, fisher, observed)`` of the intercept-only model at the weights
    ``w`` (see :func:`msnet.meta._reml_score`), in its operation order."""
    a = 0.0
    s_py = 0.0
    for i in range(k):
        a += w[i]
        s_py += w[i] * y[i]
    mean = s_py / a
    s_w2 = 0.0
    s_w3 = 0.0
    s_pp = 0.0
    s_wpypy = 0.0
    s_wpy = 0.0
    for i in range(k):
        wi = w[i]
        w2 = wi * wi
        s_w2 += w2
        s_w3 += w2 * wi
        py = wi * y[i] - wi * mean
        wpy = wi * py
        s_pp += py * py
        s_wpypy += wpy * py
        s_wpy += wpy
    tr_p = a - s_w2 / a
    r = s_w2 / a
    tr_pp = s_w2 - 2.0 * s_w3 / a + r * r
    ypppy = s_wpypy - s_wpy * s_wpy / a
    return s_pp - tr_p, tr_pp, 2.0 * ypppy - tr_pp


@njit(inline="always")
def _inv2(a00, a01, a10, a11):  # pragma: no cover
    """Closed-form 2 x 2 inverse as :func:`msnet.meta._batched_inverse` (NaN if singular)."""
    diag = a00 * a11
    det = a00 * a11 - a01 * a10
    ok = (np.isfinite(a00) and np.isfinite(a01) and np.isfinite(a10) and np.isfinite(a11)
          and diag > 0 and det / diag > 1e-12)
    if not ok:
        return np.nan, np.nan, np.nan, np.nan, False
    return a11 / det, -a01 / det, -a10 / det, a00 / det, True


@njit(inline="always")
def _wls2(y, w, x, k):  # pragma: no cover
    """β and (X'WX)^-1 of the model ``1 + x`` (see :func:`msnet.meta._wls`)."""
    g00 = 0.0
    g01 = 0.0
    g11 = 0.0
    b0 = 0.0
    b1 = 0.0
    for i in range(k):
        wi = w[i]
        g00 += wi
        g01 += wi * x[i]
        g11 += wi * (x[i] * x[i])
        wy = wi * y[i]
        b0 += wy
        b1 += wy * x[i]
    i00, i01, i10, i11, ok = _inv2(g00, g01, g01, g11)
    return i00 * b0 + i01 * b1, i10 * b0 + i11 * b1, i00, i01, i10, i11, ok


@njit(inline="always")
def _score2(y, x, k, w, w2):  # pragma: no cover
    """REML terms ``(num, fisher, observed)`` of the model ``1 + x`` at the weights ``w``
    (general branch of :func:`msnet.meta._reml_score`)."""
    for i in range(k):
        w2[i] = w[i] * w[i]
    beta0, beta1, i00, i01, i10, i11, _ = _wls2(y, w, x, k)
    s_w = 0.0
    s_w2 = 0.0
    h00 = 0.0
    h01 = 0.0
    h11 = 0.0
    c00 = 0.0
    c01 = 0.0
    c11 = 0.0
    s_pp = 0.0
    s_wpypy = 0.0
    b0 = 0.0
    b1 = 0.0
    for i in range(k):
        xi = x[i]
        xx = xi * xi
        s_w += w[i]
        s_w2 += w2[i]
        h00 += w2[i]
        h01 += w2[i] * xi
        h11 += w2[i] * xx
        w3 = w2[i] * w[i]
        c00 += w3
        c01 += w3 * xi
        c11 += w3 * xx
        py = w[i] * (y[i] - (beta0 + xi * beta1))
        wpy = w[i] * py
        s_pp += py * py
        s_wpypy += wpy * py
        b0 += wpy
        b1 += wpy * xi
    # c2 = A^-1 H (H = X'W²X)
    q00 = i00 * h00 + i01 * h01
    q01 = i00 * h01 + i01 * h11
    q10 = i10 * h00 + i11 * h01
    q11 = i10 * h01 + i11 * h11
    tr_p = s_w - (q00 + q11)
    tr_ac = i00 * c00 + i01 * c01 + i10 * c01 + i11 * c11
    tr_pp = s_w2 - 2.0 * tr_ac + (q00 * q00 + q01 * q10 + q10 * q01 + q11 * q11)
    bab = b0 * (i00 * b0 + i01 * b1) + b1 * (i10 * b0 + i11 * b1)
    ypppy = s_wpypy - bab
    return s_pp - tr_p, tr_pp, 2.0 * ypppy - tr_pp


@njit(inline="always")
def _reml_step(t, num, fisher, observed, lo, hi, zero_tried):  # pragma: no cover
    """One safeguarded Newton step of :func:`msnet.meta._reml_tau2` for one column.

    Returns ``(tau2, lo, hi, zero_tried, done)``.
    """
    if t == 0:
        zero_tried = True
    up = num > 0
    if up:
        lo = t
    else:
        hi = t
    new = t + num / (observed if observed > 0 else fisher)
    if not np.isfinite(new):
        new = t
    outside = not (new > lo and new < hi)
    to_zero = new <= 0 and lo == 0 and not zero_tried
    if outside and np.isfinite(hi):
        new = 0.5 * (lo + hi)
    new = 0.0 if to_zero else _npmax(0.0, new)
    tol = _REML_TOL * _npmax(1.0, new)
    boundary = t == 0 and not up
    done = abs(new - t) < tol or boundary or (hi - lo < tol)
    return (0.0 if boundary else new), lo, hi, zero_tried, done


@njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
def perm_stats(Yt, Vt, x, rows, signs, p, method, knha, min_studies, t_out,
               df_out):  # pragma: no cover
    """Statistic of the last coefficient and its test df for every permutation and voxel.

    Column (b, j) is study ``i`` -> effect ``signs[b, i] * Yt[j, rows[b, i]]`` and variance
    ``Vt[j, rows[b, i]]`` against the design row ``(1, x[i])`` (``p`` = 2) or ``1``
    (``p`` = 1). Writes ``t_out[b, j]`` (z, or t under Knapp-Hartung; NaN where not
    estimable) and ``df_out[b, j]`` (``inf`` for z), as :func:`msnet.meta._fit_core` and
    :func:`msnet.meta._pooled_stat` (before the z conversion) compute them.

    Parameters
    ----------
    Yt, Vt : float64 arrays, shape (n_voxels, k), C-contiguous
        Effects and variances (NaN: study missing at a voxel).
    x : float64 array, shape (k,)
        Moderator (ignored when ``p`` = 1).
    rows : int64 array, shape (B, k)
    signs : float64 array, shape (B, k)
    p : int
        1 (intercept only) or 2 (intercept and ``x``).
    method : int
        :data:`REML`, :data:`DL` or :data:`FE`.
    knha : bool
        Knapp-Hartung.
    min_studies : int
        Already ``max(min_studies, p + 1)``.
    t_out, df_out : float64 arrays, shape (B, n_voxels)
    """
    n_vox, k = Yt.shape
    n_b = rows.shape[0]
    y = np.empty(k)
    v = np.empty(k)
    w0 = np.empty(k)
    w = np.empty(k)
    w2 = np.empty(k)
    inv_v = np.empty(k)
    for j in range(n_vox):
        for i in range(k):
            inv_v[i] = 1.0 / Vt[j, i]
        for b in range(n_b):
            kk = 0
            for i in range(k):
                r = rows[b, i]
                yi = signs[b, i] * Yt[j, r]
                vi = Vt[j, r]
                if np.isfinite(yi) and np.isfinite(vi) and vi > 0:
                    y[i] = yi
                    v[i] = vi
                    w0[i] = inv_v[r]
                    kk += 1
                else:
                    y[i] = 0.0
                    v[i] = np.inf
                    w0[i] = 0.0
            df = kk - p
            # fixed-effect fit (weights w0 = 1 / v): DL start and Q_E
            if p == 1:
                a = 0.0
                s_wy = 0.0
                for i in range(k):
                    a += w0[i]
                    s_wy += w0[i] * y[i]
                ok = a > 0
                ainv = 1.0 / a if ok else np.nan
                beta_fe = s_wy * ainv
                s_w2 = 0.0
                qe = 0.0
                for i in range(k):
                    s_w2 += w0[i] * w0[i]
                    d = y[i] - beta_fe
                    qe += w0[i] * (d * d)
                tr_p_fe = a - ainv * s_w2
                b0_fe = 0.0
            else:
                b0_fe, beta_fe, i00, i01, i10, ainv, ok = _wls2(y, w0, x, k)
                a = 0.0
                h00 = 0.0
                h01 = 0.0
                h11 = 0.0
                qe = 0.0
                for i in range(k):
                    wi = w0[i]
                    ww = wi * wi
                    a += wi
                    h00 += ww
                    h01 += ww * x[i]
                    h11 += ww * (x[i] * x[i])
                    d = y[i] - (b0_fe + x[i] * beta_fe)
                    qe += wi * (d * d)
                tr_p_fe = a - (i00 * h00 + i01 * h01 + i10 * h01 + ainv * h11)
            ok_fe = ok
            ok = ok and kk >= p
            fixed = kk < min_studies or method == FE
            tau2 = _npmax(0.0, (qe - df) / tr_p_fe)
            if fixed or not ok:
                tau2 = 0.0
            if method == REML and ok and not fixed:
                lo = 0.0
                hi = np.inf
                zero_tried = False
                for _ in range(_REML_MAX_ITER):
                    _weights(v, w0, k, tau2, w)
                    if p == 1:
                        num, fisher, observed = _score1(y, w, k)
                    else:
                        num, fisher, observed = _score2(y, x, k, w, w2)
                    tau2, lo, hi, zero_tried, done = _reml_step(
                        tau2, num, fisher, observed, lo, hi, zero_tried)
                    if done:
                        break
            # random-effects fit; at tau2 = 0 it is the fixed-effect fit above
            if tau2 == 0:
                beta, var, ok_re, q_kh = beta_fe, ainv, ok_fe, qe
            elif p == 1:
                _weights(v, w0, k, tau2, w)
                a = 0.0
                s_wy = 0.0
                for i in range(k):
                    a += w[i]
                    s_wy += w[i] * y[i]
                ok_re = a > 0
                var = 1.0 / a if ok_re else np.nan
                beta = s_wy * var
                q_kh = 0.0
                for i in range(k):
                    d = y[i] - beta
                    q_kh += w[i] * (d * d)
            else:
                _weights(v, w0, k, tau2, w)
                b0, beta, i00, i01, i10, var, ok_re = _wls2(y, w, x, k)
                q_kh = 0.0
                for i in range(k):
                    d = y[i] - (b0 + x[i] * beta)
                    q_kh += w[i] * (d * d)
            ok = ok and ok_re
            df_test = np.inf
            if knha and not fixed and df >= 1:
                q_kh = q_kh / max(df, 1)
                if not (np.isfinite(q_kh) and q_kh <= _KH_ZERO):
                    var = var * q_kh
                    df_test = float(df)
            if not ok:
                var = np.nan
            t_out[b, j] = beta / np.sqrt(var)
            df_out[b, j] = df_test
