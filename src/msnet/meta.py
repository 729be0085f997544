"""Random-effects meta-analysis of per-study MS-vs-HC effects (DESIGN stage 5).

What this module does
---------------------
* Network level: random-effects meta-analysis of the per-study Hedges g of every metric
  (REML by default, DerSimonian-Laird as an option), with Knapp-Hartung (t, the default) or
  Wald-type (z) inference, 95% prediction interval, Cochran's Q, I², H², τ² and its Q-profile CI;
  leave-one-study-out table; Egger's regression test; mixed-effects meta-regression on
  study-level moderators with permutation p-values.
* Voxelwise: the same model at every voxel of a network mask, sign-flip permutation FWE,
  FDR, I² and τ² maps, cluster tables, and voxelwise meta-regression with permutation FWE.
* Meta (two-stage) versus mega (pooled one-stage) comparison.

Conventions follow metafor's ``rma.uni`` defaults, so results can be checked against it:

* τ² by REML (τ² >= 0) or DL; β by WLS with weights ``1 / (v_i + τ²)``; inference
  ``test="z"`` unless ``knapp_hartung=True`` (metafor ``test="knha"``: SE scaled by
  ``sqrt(Σ w r² / (k - p))``, t with ``k - p`` df, no truncation). The stage default
  (``meta.knapp_hartung: true``, and the defaults of :func:`meta_analysis`,
  :func:`leave_one_out` and :func:`meta_regression`) is Knapp-Hartung: with about 10
  studies the z test rejects a true null too often once τ² > 0 (it treats the estimated τ²
  as known; 0.07-0.08 at α = 0.05 in the unit test's simulations, against 0.05 under
  Knapp-Hartung; IntHout et al. 2014). :func:`fit_rma` keeps metafor's ``test="z"`` default.
  When the weighted residuals are all zero (identical effects) the Knapp-Hartung factor is
  0 and would give SE 0 and p 0: such columns fall back to the z test (``kh_fallback``,
  ``test`` = ``z`` and a warning in :func:`meta_analysis`).
* I² = 100 τ² / (τ² + s²) with the "typical" within-study variance
  s² = (k - p) / tr(P) (P evaluated at τ² = 0), H² = (τ² + s²) / s²; so I² depends on the
  τ² estimator, as in metafor (Higgins' (Q - df)/Q equals it for DL only). Fixed-effect models
  report Higgins' I² = max(0, (Q - df) / Q) and H² = Q / df, again as metafor does.
* Prediction interval: metafor's ``predict``: ``μ ± c sqrt(τ² + SE²)`` with c the normal
  quantile (or the t quantile with k - p df under Knapp-Hartung).
* τ² CI: Q-profile (metafor ``confint``), I² CI derived from its bounds.
* Egger: the classic test (metafor ``regtest(model="lm", predictor="sei")``): weighted least
  squares of g on its standard error with weights 1/var(g) and a free dispersion parameter,
  which is algebraically Egger's OLS of g/se on 1/se; the coefficient of se is Egger's bias
  (the standardised regression's intercept), t test with k - 2 df; the WLS intercept is the
  limit estimate (g as se → 0).
* Meta-regression permutation p (metafor ``permutest``): the moderator values are permuted
  across studies (equivalently the (g, var g) rows across design rows) and the model refitted;
  p for a coefficient is the share of permutations with ``|stat| >= |stat_obs|`` (and with
  ``QM >= QM_obs`` for the omnibus test). All k! permutations are enumerated when
  k! <= n_permutations (exact p); otherwise p = (1 + #{extreme}) / (1 + n_permutations).
  No permutation p is given for the intercept (permuting moderators does not test it).

Why a meta-analysis engine of our own (:func:`fit_rma`) instead of PyMARE, statsmodels or
NiMARE: one vectorised implementation serves the network tables, every voxel, and every
permutation refit, so all of them are computed identically and fast (permutation refits run
the same steps per voxel in compiled code, :mod:`msnet._metakernels`: at the demo's size,
25 studies x 10k voxels, ``benchmarks/bench_meta.py --voxels 10000 --permutations 100``
printed 7.9 ms CPU per sign-flip permutation and 11.7 ms per meta-regression permutation,
7.5x and 7.9x faster than the numpy batches before them, against 465 ms for one PyMARE REML
fit); REML is solved by safeguarded Newton iterations to a tight convergence criterion
(PyMARE runs a bounded scalar search, and NiMARE's image route is slower still:
``benchmarks/bench_meta.py`` prints both ratios); and the libraries lack pieces this stage needs (metafor's τ²-dependent
I²/H², prediction intervals, R² of meta-regressions, τ² Q-profile CIs with I² bounds,
permutation tests with a seed, masked missing studies per voxel). NiMARE's IBMA estimators
have no voxelwise meta-regression and no sign-flip FWE for random-effects models. The unit
tests check this engine against metafor's published BCG-trial results, PyMARE (REML, DL,
Knapp-Hartung, Q-profile CI), statsmodels ``combine_effects`` (DL) and NiMARE's
``DerSimonianLaird`` and ``VarianceBasedLikelihood`` (REML) maps
(``benchmarks/bench_meta.py`` times it against them). Cluster tables, FDR and signed
-log10 p maps reuse :mod:`msnet.stats`, so they match the group stage's.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from msnet import stats as msstats
from msnet.errors import MsnetInputError
from msnet.derivatives import save_map, write_table
from msnet.io.plan import map_name, space_of
from msnet.io.atomic import write_json

LOGGER = logging.getLogger(__name__)

METHODS = ("REML", "DL")
"""τ² estimators offered in the config (``FE`` is used internally when k < min_studies)."""

MODERATORS = ("age", "pctfemale", "duration", "edss", "t2lv")
"""Study-level moderators computed by :func:`study_moderators` (see there for definitions)."""

DEFAULT_OPTIONS = {
    "method": "REML",
    "knapp_hartung": True,
    "n_permutations": 1000,
    "alpha": 0.05,
    "cluster_threshold": 0.001,
    "cluster_connectivity": 1,
    "min_studies": 3,
    "seed": 0,
    "moderators": ["age", "duration", "edss", "t2lv"],
}
"""Defaults of the ``meta`` config section (see :func:`resolve_options`)."""

_KH_ZERO = 1e-12
"""A Knapp-Hartung factor ``Σ w r² / (k - p)`` at or below this counts as 0 (identical
effects: r is rounding error); under the model it is about F(k - p, ∞)-distributed."""
_REML_TOL = 1e-10
_REML_MAX_ITER = 200
_CHUNK_ELEMENTS = 2**17
"""Permutation batches are sized so that one (studies x columns) array holds about this
many float64 values (1 MB, at least one permutation): the refits are memory-bound and run
several times faster when their arrays stay in CPU cache; it also bounds memory."""


# --------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------
def resolve_options(options: dict | None = None) -> dict:
    """Merge ``options`` over :data:`DEFAULT_OPTIONS` and validate every value.

    Parameters
    ----------
    options : dict or None
        The ``meta`` config section. Keys: ``method`` (``"REML"``/``"DL"``),
        ``knapp_hartung`` (bool), ``n_permutations`` (int >= 0; 0 disables permutation
        inference), ``alpha`` (0 < alpha < 1; CIs and PIs are 100(1 - alpha)%),
        ``cluster_threshold`` (two-sided voxelwise p that forms clusters, 0 < p < 1),
        ``cluster_connectivity`` (1 faces, 2 edges, 3 corners; as the group stage),
        ``min_studies`` (int >= 2; fewer studies -> fixed-effect model with a warning),
        ``seed`` (int >= 0), ``moderators`` (subset of :data:`MODERATORS`).

    Returns
    -------
    dict
        Complete, validated options.

    Raises
    ------
    MsnetInputError
        For an unknown key or a value of the wrong type or out of range.
    """
    opts = msstats.resolve_options(options, DEFAULT_OPTIONS, "meta")
    opts["method"] = str(opts["method"]).upper()
    checks = [
        ("method", opts["method"] in METHODS, f"one of {list(METHODS)}"),
        ("knapp_hartung", isinstance(opts["knapp_hartung"], bool), "true or false"),
        ("n_permutations", _is_int(opts["n_permutations"]) and opts["n_permutations"] >= 0,
         "an integer >= 0"),
        ("alpha", _is_real(opts["alpha"]) and 0 < opts["alpha"] < 1, "a number in (0, 1)"),
        ("cluster_threshold",
         _is_real(opts["cluster_threshold"]) and 0 < opts["cluster_threshold"] < 1,
         "a number in (0, 1)"),
        ("cluster_connectivity", opts["cluster_connectivity"] in (1, 2, 3), "1, 2 or 3"),
        ("min_studies", _is_int(opts["min_studies"]) and opts["min_studies"] >= 2,
         "an integer >= 2"),
        ("seed", _is_int(opts["seed"]) and opts["seed"] >= 0, "an integer >= 0"),
        ("moderators",
         isinstance(opts["moderators"], (list, tuple))
         and all(m in MODERATORS for m in opts["moderators"]),
         f"a list drawn from {list(MODERATORS)}"),
    ]
    for key, ok, allowed in checks:
        if not ok:
            raise MsnetInputError(
                f"config section 'meta': option '{key}' = {opts[key]!r} is invalid; use {allowed}."
            )
    opts["moderators"] = list(opts["moderators"])
    return opts


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value) -> bool:
    real = (int, float, np.integer, np.floating)
    return isinstance(value, real) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RMAFit:
    """Result of :func:`fit_rma` for m parallel data sets (columns).

    Arrays are indexed ``[coefficient, column]`` (``p x m``), ``[column]`` (``m``) or
    ``[study, column]`` (``k x m``). Columns that cannot be estimated (fewer valid studies
    than coefficients, or a singular design) hold NaN.
    """

    beta: np.ndarray
    se: np.ndarray
    stat: np.ndarray
    pval: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    cov: np.ndarray
    tau2: np.ndarray
    k: np.ndarray
    df: np.ndarray
    df_test: np.ndarray
    qe: np.ndarray
    qe_p: np.ndarray
    qm: np.ndarray
    qm_p: np.ndarray
    i2: np.ndarray
    h2: np.ndarray
    s2: np.ndarray
    weights: np.ndarray
    fixed: np.ndarray
    converged: np.ndarray
    method: str
    knapp_hartung: bool
    alpha: float
    kh_fallback: np.ndarray


def fit_rma(y, v, X=None, method="REML", knapp_hartung=False, alpha=0.05, min_studies=None):
    """Fit random-effects meta-(regression) models to many data sets at once.

    Each column of ``y``/``v`` is one data set (a voxel, a permutation, a leave-one-out
    subset); the design ``X`` is shared. A study with a non-finite effect, or a non-finite
    or non-positive variance, in a column is left out of that column only (its weight is
    zero and ``k`` counts the rest).

    Parameters
    ----------
    y, v : array_like, shape (k,) or (k, m)
        Effect sizes and their sampling variances (``v`` broadcasts against ``y``).
    X : array_like, shape (k, p), optional
        Design matrix; default an intercept. Column 0 is taken to be the intercept when
        forming the omnibus moderator test ``QM`` (coefficients 1..p-1).
    method : {"REML", "DL", "FE"}
        τ² estimator; ``"FE"`` fixes τ² = 0 (inverse-variance fixed-effect model).
    knapp_hartung : bool
        Knapp-Hartung SEs and t(k - p) inference (random-effects columns only). Columns whose
        weighted residual sum of squares is 0 (all effects identical, or on the regression
        line) keep the z test (``kh_fallback``; a ``RuntimeWarning`` says how many).
    alpha : float
        CIs are 100(1 - alpha)%.
    min_studies : int, optional
        Columns with fewer valid studies are fitted as fixed-effect models (``fixed`` is
        True); the default ``p + 1`` only requires one residual degree of freedom.

    Returns
    -------
    RMAFit

    Notes
    -----
    REML: safeguarded Newton/Fisher-scoring iterations on the restricted likelihood from
    the DL estimate (score ``(y'PPy - tr P) / 2``, ``P = W - W X (X'WX)^-1 X'W``, τ² >= 0),
    iterated until ``|Δτ²| < 1e-10 max(1, τ²)`` (at most 200 iterations; ``converged``
    flags the rest); see :func:`_reml_tau2`.
    DL: ``τ² = max(0, (Q_E - (k - p)) / tr P_FE)``.
    """
    core = _fit_core(y, v, X, method, knapp_hartung, min_studies)
    beta, cov, df_test, ok = core["beta"], core["cov"], core["df_test"], core["ok"]
    n_fallback = int(np.sum(core["kh_fallback"] & ok))
    if n_fallback:
        warnings.warn(
            f"Knapp-Hartung: the weighted residuals are all zero in {n_fallback} of "
            f"{ok.size} model(s) (identical effects, or all on the regression line), which "
            "would give SE 0 and p 0; the z "
            "test is used there instead.", RuntimeWarning, stacklevel=2)
    tau2, qe, df, s2, fixed = core["tau2"], core["qe"], core["df"], core["s2"], core["fixed"]
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(np.diagonal(cov, axis1=1, axis2=2)).T
        stat = beta / se
        pval = _two_sided_p(stat, df_test)
        crit = stats.t.ppf(1.0 - alpha / 2.0, df_test)
        qm, qm_p = _omnibus(beta, cov, df_test)
        i2 = np.where(fixed, 100.0 * np.maximum(0.0, (qe - df) / qe), 100.0 * tau2 / (tau2 + s2))
        h2 = np.where(fixed, qe / df, (tau2 + s2) / s2)
        qe_p = stats.chi2.sf(qe, df)
    arrays = dict(
        beta=beta, se=se, stat=stat, pval=pval, ci_low=beta - crit * se,
        ci_high=beta + crit * se, tau2=tau2, qe=qe, qe_p=qe_p, qm=qm, qm_p=qm_p, i2=i2,
        h2=h2, s2=s2,
    )
    for key, arr in arrays.items():
        arr = np.array(arr, dtype=float)
        arr[..., ~ok] = np.nan
        arrays[key] = arr
    return RMAFit(
        **arrays, cov=cov, k=core["k"], df=df, df_test=df_test, weights=core["weights"],
        fixed=fixed, converged=core["converged"], method=method.upper(),
        knapp_hartung=knapp_hartung, alpha=alpha, kh_fallback=core["kh_fallback"],
    )


def _fit_core(y, v, X, method, knapp_hartung, min_studies):
    """Estimate τ², β and cov(β) per column; the part permutation refits need.

    Returns a dict with ``beta`` (p, m), ``cov`` (m, p, p; NaN where not estimable),
    ``df_test`` (m; inf for z), ``tau2``, ``k``, ``df`` (k - p), ``qe``, ``s2``, ``fixed``,
    ``converged``, ``ok`` (estimable), ``weights`` (k, m) and ``kh_fallback`` (m; z test
    kept because the Knapp-Hartung factor is 0).
    """
    y = np.asarray(y, dtype=float)
    y = y[:, None] if y.ndim == 1 else y
    v = np.asarray(v, dtype=float)
    v = np.broadcast_to(v[:, None] if v.ndim == 1 else v, y.shape)
    n_studies, m = y.shape
    X = np.ones((n_studies, 1)) if X is None else np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] != n_studies:
        raise MsnetInputError(
            f"meta-regression design has shape {X.shape}; expected ({n_studies}, p)."
        )
    p = X.shape[1]
    method = method.upper()
    if method not in (*METHODS, "FE"):
        raise MsnetInputError(f"unknown meta-analysis method {method!r}; use REML, DL or FE.")
    min_studies = p + 1 if min_studies is None else max(int(min_studies), p + 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        valid = np.isfinite(y) & np.isfinite(v) & (v > 0)
        y0 = np.where(valid, y, 0.0)
        v0 = np.where(valid, v, np.inf)
        k = valid.sum(axis=0)
        df = k - p
        w_fe = 1.0 / v0
        beta_fe, ainv_fe, ok = _wls(y0, w_fe, X)
        ok &= k >= p
        qe = np.einsum("km,km->m", w_fe, (y0 - X @ beta_fe) ** 2)
        tr_p_fe = np.sum(w_fe, axis=0) - _trace_ab(ainv_fe, _gram(X, w_fe * w_fe))
        s2 = df / tr_p_fe
        fixed = (k < min_studies) | (method == "FE")
        tau2 = np.maximum(0.0, (qe - df) / tr_p_fe)
        tau2 = np.where(fixed | ~ok, 0.0, tau2)
        converged = np.ones(m, dtype=bool)
        if method == "REML":
            act = ok & ~fixed
            tau2[act], converged[act] = _reml_tau2(y0[:, act], v0[:, act], X, tau2[act])
        w = 1.0 / (v0 + tau2)
        beta, cov, ok_re = _wls(y0, w, X)
        ok &= ok_re
        df_test = np.full(m, np.inf)
        kh_fallback = np.zeros(m, dtype=bool)
        if knapp_hartung:
            use_kh = ~fixed & (df >= 1)
            q_kh = np.einsum("km,km->m", w, (y0 - X @ beta) ** 2) / np.maximum(df, 1)
            kh_fallback = use_kh & np.isfinite(q_kh) & (q_kh <= _KH_ZERO)
            use_kh &= ~kh_fallback
            cov[use_kh] *= q_kh[use_kh, None, None]
            df_test = np.where(use_kh, df, np.inf)
    cov[~ok] = np.nan
    return {"beta": beta, "cov": cov, "df_test": df_test, "tau2": tau2, "k": k, "df": df,
            "qe": qe, "s2": s2, "fixed": fixed, "converged": converged, "ok": ok,
            "weights": np.where(valid, w, 0.0), "kh_fallback": kh_fallback}


def _two_sided_p(stat, df):
    """Two-sided p of z (``df`` inf) or t statistics."""
    a = np.abs(stat)
    if np.all(np.isinf(df)):
        return 2.0 * stats.norm.sf(a)
    return 2.0 * stats.t.sf(a, df)


def _gram(X, w):
    """Return ``X' diag(w_m) X`` for every column m, shape (m, p, p)."""
    p = X.shape[1]
    if p == 1 and np.all(X == 1.0):
        return w.sum(axis=0).reshape(-1, 1, 1)
    outer = (X[:, :, None] * X[:, None, :]).reshape(X.shape[0], p * p)
    return (w.T @ outer).reshape(w.shape[1], p, p)


def _trace_ab(a, b):
    """Return tr(A_m B_m) for stacks of p x p matrices (A, B symmetric)."""
    return np.einsum("mpq,mpq->m", a, b)


def _wls(y, w, X):
    """Weighted least squares per column: β (p, m), (X'WX)^-1 (m, p, p), estimable (m,)."""
    ainv, ok = _batched_inverse(_gram(X, w))
    if X.shape[1] == 1 and np.all(X == 1.0):
        return (w * y).sum(axis=0)[None] * ainv[:, 0, 0], ainv, ok
    beta = np.einsum("mpq,mq->pm", ainv, (w * y).T @ X)
    return beta, ainv, ok


def _batched_inverse(a):
    """Invert a stack of small SPD matrices; near-singular ones become NaN (``ok`` False).

    Singularity is judged by ``det(A) / prod(diag A)`` (1 for an orthogonal design, 0 for
    collinear columns), which is scale-free. p <= 2 (every voxelwise model) is inverted in
    closed form, which is far faster than LAPACK on millions of tiny matrices.
    """
    p = a.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        if p == 1:
            ok = a[:, 0, 0] > 0
            return np.where(ok[:, None, None], 1.0 / a, np.nan), ok
        diag = np.prod(np.diagonal(a, axis1=1, axis2=2), axis=1)
        ok = np.all(np.isfinite(a), axis=(1, 2)) & (diag > 0)
        if p == 2:
            det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
            ok &= det / diag > 1e-12
            ainv = np.stack([a[:, 1, 1], -a[:, 0, 1], -a[:, 1, 0], a[:, 0, 0]], axis=1)
            ainv = ainv.reshape(-1, 2, 2) / det[:, None, None]
        else:
            ok[ok] = np.linalg.det(a[ok]) / diag[ok] > 1e-12
            ainv = np.linalg.inv(np.where(ok[:, None, None], a, np.eye(p)))
    ainv[~ok] = np.nan
    return ainv, ok


def _reml_score(y, v, X, tau2):
    """Return REML derivative terms per column for the current τ².

    ``num = y'PPy - tr P`` (twice the score), ``fisher = tr(PP)`` (twice the expected
    information) and ``observed = 2 y'PPPy - tr(PP)`` (twice the observed information),
    with ``P = W - W X A^-1 X'W`` and ``A = X'WX``, from the identities
    ``tr P = Σw - tr(A^-1 X'W²X)``,
    ``tr PP = Σw² - 2 tr(A^-1 X'W³X) + tr((A^-1 X'W²X)²)`` and
    ``y'PPPy = Σ w (Py)² - b' A^-1 b`` with ``b = X'W Py``; no k x k matrix is formed.
    """
    w = 1.0 / (v + tau2)
    w2 = w * w
    if X.shape[1] == 1 and np.all(X == 1.0):
        a = w.sum(axis=0)
        py = w * y
        py -= w * (py.sum(axis=0) / a)
        s_w2 = w2.sum(axis=0)
        tr_p = a - s_w2 / a
        tr_pp = s_w2 - 2.0 * np.einsum("km,km->m", w2, w) / a + (s_w2 / a) ** 2
        wpy = w * py
        ypppy = np.einsum("km,km->m", wpy, py) - wpy.sum(axis=0) ** 2 / a
    else:
        beta, ainv, _ = _wls(y, w, X)
        py = w * (y - X @ beta)
        c2 = np.matmul(ainv, _gram(X, w2))
        tr_p = w.sum(axis=0) - np.einsum("mpp->m", c2)
        tr_pp = (w2.sum(axis=0) - 2.0 * _trace_ab(ainv, _gram(X, w2 * w))
                 + np.einsum("mpq,mqp->m", c2, c2))
        wpy = w * py
        b = wpy.T @ X
        ypppy = np.einsum("km,km->m", wpy, py) - np.einsum("mp,mpq,mq->m", b, ainv, b)
    return np.einsum("km,km->m", py, py) - tr_p, tr_pp, 2.0 * ypppy - tr_pp


def _reml_tau2(y, v, X, tau2):
    """REML τ² per column by safeguarded Newton iterations (see :func:`fit_rma`).

    Newton steps use the observed information where it is positive and the Fisher
    (expected) information otherwise; plain Fisher scoring converges only linearly and
    can oscillate for dozens of iterations. A bracket ``[lo, hi]`` around the root of the
    score is kept per column (the score is positive below the estimate and negative above
    it) and a step leaving it is replaced by bisection. A column whose score is negative
    at τ² = 0 has its estimate on the boundary.
    """
    tau2 = tau2.copy()
    lo, hi = np.zeros_like(tau2), np.full_like(tau2, np.inf)
    zero_tried = np.zeros(tau2.shape, dtype=bool)
    converged = np.zeros(tau2.shape, dtype=bool)
    for _ in range(_REML_MAX_ITER):
        act = np.flatnonzero(~converged)
        if act.size == 0:
            break
        t = tau2[act]
        num, fisher, observed = _reml_score(y[:, act], v[:, act], X, t)
        zero_tried[act] |= t == 0
        up = num > 0
        lo[act] = np.where(up, t, lo[act])
        hi[act] = np.where(up, hi[act], t)
        new = t + num / np.where(observed > 0, observed, fisher)
        new = np.where(np.isfinite(new), new, t)
        outside = ~((new > lo[act]) & (new < hi[act]))
        to_zero = (new <= 0) & (lo[act] == 0) & ~zero_tried[act]
        new = np.where(outside & np.isfinite(hi[act]), 0.5 * (lo[act] + hi[act]), new)
        new = np.where(to_zero, 0.0, np.maximum(0.0, new))
        tol = _REML_TOL * np.maximum(1.0, new)
        done = (np.abs(new - t) < tol) | ((t == 0) & ~up) | (hi[act] - lo[act] < tol)
        tau2[act] = np.where((t == 0) & ~up, 0.0, new)
        converged[act] = done
    return tau2, converged


def _omnibus(beta, cov, df_test):
    """Wald test of coefficients 1..p-1 (QM, chi² with p-1 df; F(p-1, df) under K-H)."""
    p, m = beta.shape
    if p < 2:
        return np.full(m, np.nan), np.full(m, np.nan)
    b = beta[1:].T
    sub = cov[:, 1:, 1:]
    ok = np.all(np.isfinite(sub), axis=(1, 2))
    qm = np.full(m, np.nan)
    qm[ok] = np.einsum("mp,mp->m", b[ok], np.linalg.solve(sub[ok], b[ok][..., None])[..., 0])
    q = p - 1
    qm_p = np.where(np.isinf(df_test), stats.chi2.sf(qm, q), stats.f.sf(qm / q, q, df_test))
    return np.where(np.isinf(df_test), qm, qm / q), qm_p


# --------------------------------------------------------------------------------------
# network level: one pooled effect
# --------------------------------------------------------------------------------------
def tau2_qprofile_ci(y, v, X=None, alpha=0.05):
    """Q-profile confidence interval for τ² (metafor ``confint(rma)``'s default).

    Solves ``Q(τ²) = Σ w_i(τ²) (y_i - x_i'β(τ²))²`` equal to the upper and lower
    ``alpha/2`` quantiles of χ²(k - p); a bound is 0 when ``Q(0)`` already lies below it.

    Returns
    -------
    (float, float)
        Lower and upper bound (NaN with fewer than p + 1 studies).
    """
    from scipy.optimize import brentq

    y, v = np.asarray(y, float), np.asarray(v, float)
    X = np.ones((y.size, 1)) if X is None else np.asarray(X, float)
    df = y.size - X.shape[1]
    if df < 1:
        return np.nan, np.nan

    def gen_q(t2):
        w = 1.0 / (v + t2)
        beta = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (w * y))
        return float(np.sum(w * (y - X @ beta) ** 2))

    bounds = []
    for target in (stats.chi2.isf(alpha / 2, df), stats.chi2.ppf(alpha / 2, df)):
        if gen_q(0.0) <= target:
            bounds.append(0.0)
            continue
        hi = max(1.0, 10.0 * np.var(y))
        while gen_q(hi) > target:
            hi *= 10.0
        bounds.append(brentq(lambda t: gen_q(t) - target, 0.0, hi, xtol=1e-12, rtol=1e-12))
    return bounds[0], bounds[1]


def meta_analysis(g, var_g, method="REML", knapp_hartung=True, alpha=0.05, min_studies=3):
    """Pool one set of study effects with a random-effects model.

    Parameters
    ----------
    g, var_g : array_like, shape (k,)
        Valid study effects and variances (see :func:`collect_effects` for exclusions).
    method : {"REML", "DL"}
        τ² estimator. With fewer than ``min_studies`` studies the fixed-effect (inverse
        variance) model is fitted instead and ``warning`` says so.
    knapp_hartung : bool
        Knapp-Hartung adjustment (t with k - 1 df, also for the prediction interval); the
        default. When all effects are identical the z test is used (``test`` = ``z``,
        ``warning`` says why).
    alpha : float
        Level of the CI and PI (100(1 - alpha)%).
    min_studies : int
        Minimum number of studies for estimating τ².

    Returns
    -------
    dict
        One row of the networks table: ``model`` (random/fixed), ``method``, ``test``
        (z/knha), ``k``, ``g``, ``se``, ``ci_low``, ``ci_high``, ``stat``, ``df``, ``p``,
        ``pi_low``, ``pi_high``, ``tau2``, ``tau2_ci_low``, ``tau2_ci_high``, ``tau``,
        ``i2``, ``i2_ci_low``, ``i2_ci_high``, ``h2``, ``q``, ``q_df``, ``q_p``,
        ``converged``, ``warning``.
    """
    g, var_g = np.asarray(g, float), np.asarray(var_g, float)
    k = g.size
    row = {"model": "none", "method": method, "test": "knha" if knapp_hartung else "z", "k": k}
    if k == 0:
        return {**row, "warning": "no study with a valid effect size"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # said in the row's warning instead
        fit = fit_rma(g, var_g, None, method, knapp_hartung, alpha, min_studies)
    fixed = bool(fit.fixed[0])
    warning = ""
    if fixed:
        warning = (
            f"k={k} < min_studies={min_studies}: fixed-effect (inverse-variance) model, "
            "tau2 not estimated"
        )
    elif not fit.converged[0]:
        warning = "REML did not converge"
    if fit.kh_fallback[0]:
        row["test"] = "z"
        warning = "; ".join(filter(None, [warning, (
            "all effects identical: the Knapp-Hartung residual variance is 0 (SE 0, p 0), "
            "z test used instead")]))
    crit = stats.t.ppf(1 - alpha / 2, fit.df_test[0])
    half_pi = crit * np.sqrt(fit.tau2[0] + fit.se[0, 0] ** 2)
    t2_lo, t2_hi = (np.nan, np.nan) if fixed else tau2_qprofile_ci(g, var_g, alpha=alpha)
    s2 = fit.s2[0]
    return {
        **row,
        "model": "fixed" if fixed else "random",
        "method": "FE" if fixed else method,
        "g": fit.beta[0, 0],
        "se": fit.se[0, 0],
        "ci_low": fit.ci_low[0, 0],
        "ci_high": fit.ci_high[0, 0],
        "stat": fit.stat[0, 0],
        "df": fit.df_test[0] if np.isfinite(fit.df_test[0]) else np.nan,
        "p": fit.pval[0, 0],
        "pi_low": fit.beta[0, 0] - half_pi,
        "pi_high": fit.beta[0, 0] + half_pi,
        "tau2": fit.tau2[0],
        "tau2_ci_low": t2_lo,
        "tau2_ci_high": t2_hi,
        "tau": np.sqrt(fit.tau2[0]),
        "i2": fit.i2[0],
        "i2_ci_low": 100 * t2_lo / (t2_lo + s2),
        "i2_ci_high": 100 * t2_hi / (t2_hi + s2),
        "h2": fit.h2[0],
        "q": fit.qe[0],
        "q_df": int(fit.df[0]),
        "q_p": fit.qe_p[0],
        "converged": bool(fit.converged[0]),
        "warning": warning,
    }


def leave_one_out(studies, g, var_g, method="REML", knapp_hartung=True, alpha=0.05,
                  min_studies=3) -> pd.DataFrame:
    """Leave-one-study-out sensitivity analysis (metafor ``leave1out``).

    Returns
    -------
    pandas.DataFrame
        One row per omitted study: ``study_omitted``, ``k``, ``g``, ``se``, ``ci_low``,
        ``ci_high``, ``stat``, ``p``, ``tau2``, ``i2``, ``h2``, ``q``, ``q_p``, ``model``.
    """
    g, var_g = np.asarray(g, float), np.asarray(var_g, float)
    k = g.size
    if k < 2:
        return pd.DataFrame()
    y = np.tile(g[:, None], (1, k))
    y[np.arange(k), np.arange(k)] = np.nan
    fit = fit_rma(y, var_g, None, method, knapp_hartung, alpha, min_studies)
    return pd.DataFrame({
        "study_omitted": list(studies), "k": fit.k, "g": fit.beta[0], "se": fit.se[0],
        "ci_low": fit.ci_low[0], "ci_high": fit.ci_high[0], "stat": fit.stat[0],
        "p": fit.pval[0], "tau2": fit.tau2, "i2": fit.i2, "h2": fit.h2, "q": fit.qe,
        "q_p": fit.qe_p, "model": np.where(fit.fixed, "fixed", "random"),
    })


def egger_test(g, var_g) -> dict:
    """Egger's regression test for small-study effects (classic form, see module notes).

    Fits ``g = b0 + b1 * se`` by weighted least squares with weights ``1 / var_g`` and a
    free residual dispersion (statsmodels WLS) -- identical to Egger's OLS of ``g / se`` on
    ``1 / se`` -- and tests ``b1`` (the asymmetry, Egger's intercept) with t(k - 2).

    Returns
    -------
    dict
        ``k``, ``bias``, ``bias_se``, ``t``, ``df``, ``p``, ``limit_estimate``,
        ``limit_se``, ``warning`` (fewer than 3 studies or equal standard errors: NaN;
        fewer than 10 studies: low power).
    """
    g, var_g = np.asarray(g, float), np.asarray(var_g, float)
    k = g.size
    out = {"k": k, "test": "Egger (WLS g ~ se, weights 1/var_g)"}
    if k < 3:
        return {**out, "warning": f"k={k} < 3: Egger's test needs at least 3 studies"}
    se = np.sqrt(var_g)
    if np.ptp(se) <= 1e-8 * se.max():
        return {**out, "warning": "all studies have the same standard error: Egger's test "
                                  "is undefined"}
    import statsmodels.api as sm

    fit = sm.WLS(g, sm.add_constant(se, has_constant="add"), weights=1.0 / var_g).fit()
    return {
        **out,
        "bias": fit.params[1], "bias_se": fit.bse[1], "t": fit.tvalues[1],
        "df": int(fit.df_resid), "p": fit.pvalues[1],
        "limit_estimate": fit.params[0], "limit_se": fit.bse[0],
        "warning": "" if k >= 10 else f"k={k} < 10: Egger's test has little power",
    }


# --------------------------------------------------------------------------------------
# meta-regression and permutations
# --------------------------------------------------------------------------------------
def permutation_orders(k, n_permutations, rng):
    """Return row orders for a permutation test and whether they are exhaustive.

    All k! orders (identity included) when k! <= ``n_permutations``; otherwise
    ``n_permutations`` random orders drawn from ``rng``.
    """
    if math.factorial(k) <= n_permutations:
        return np.array(list(itertools.permutations(range(k)))), True
    return rng.permuted(np.tile(np.arange(k), (n_permutations, 1)), axis=1), False


def sign_flips(k, n_permutations, rng):
    """Return ±1 sign patterns (n, k) and whether they are all 2^k patterns."""
    if 2**k <= n_permutations:
        grid = np.array(list(itertools.product((1.0, -1.0), repeat=k)))
        return grid, True
    return rng.choice(np.array([-1.0, 1.0]), size=(n_permutations, k)), False


def permutation_p(null, observed, exact):
    """Permutation p-value of ``observed`` against a null sample (larger = more extreme).

    ``null`` has shape (n,) or (n, ...) broadcasting against ``observed``. Exact tests
    (enumerated null including the identity) return the share of null values at least as
    extreme; Monte Carlo tests return (1 + count) / (1 + n).
    """
    null, observed = np.asarray(null, float), np.asarray(observed, float)
    tol = 1e-10 * np.maximum(1.0, np.abs(observed))
    count = np.sum(null >= observed - tol, axis=0)
    n = null.shape[0]
    p = count / n if exact else (1.0 + count) / (1.0 + n)
    return np.where(np.isfinite(observed), p, np.nan)


def meta_regression(g, var_g, moderators: pd.DataFrame, method="REML", knapp_hartung=True,
                    alpha=0.05, n_permutations=1000, rng=None, min_studies=3) -> pd.DataFrame:
    """Mixed-effects meta-regression of study effects on study-level moderators.

    Parameters
    ----------
    g, var_g : array_like, shape (k,)
        Valid study effects and variances.
    moderators : pandas.DataFrame, shape (k, q)
        Moderator values (rows aligned with ``g``; complete, non-constant columns).
    method, knapp_hartung, alpha, min_studies
        As in :func:`meta_analysis`; a model needs ``max(min_studies, q + 2)`` studies.
    n_permutations : int
        Permutations for ``p_perm`` and ``qm_p_perm`` (0: not computed). The rows of all
        moderators are permuted together (metafor ``permutest``).
    rng : numpy.random.Generator
        Source of the permutations.

    Returns
    -------
    pandas.DataFrame
        One row per coefficient: ``moderator`` (``intercept`` or the moderator name),
        ``k``, ``beta``, ``se``, ``ci_low``, ``ci_high``, ``stat`` (z, or t under
        Knapp-Hartung), ``df``, ``test`` (``knha``, or ``z``: Knapp-Hartung off, or its
        residual variance 0), ``p``, ``p_perm``, then model-level ``qm`` (chi², or F under
        Knapp-Hartung), ``qm_df``, ``qm_p``, ``qm_p_perm``, ``tau2`` (residual),
        ``tau2_null`` (intercept-only model on the same studies), ``r2`` (% of τ²
        explained, metafor's ``max(0, 100 (τ²_null - τ²) / τ²_null)``, NaN if τ²_null = 0),
        ``qe``, ``qe_df``, ``qe_p``, ``i2`` (residual), ``n_permutations``,
        ``permutation`` (exact / monte-carlo), ``converged``.
    """
    g, var_g = np.asarray(g, float), np.asarray(var_g, float)
    names = list(moderators.columns)
    k, q = g.size, len(names)
    X = np.column_stack([np.ones(k), moderators.to_numpy(float)])
    fit = fit_rma(g, var_g, X, method, knapp_hartung, alpha, min_studies)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # only the model's own fit warns
        null = fit_rma(g, var_g, None, method, knapp_hartung, alpha, min_studies)
    tau2, tau2_0 = fit.tau2[0], null.tau2[0]
    r2 = max(0.0, 100.0 * (tau2_0 - tau2) / tau2_0) if tau2_0 > 0 else np.nan
    p_perm = np.full(q + 1, np.nan)
    qm_p_perm, exact, n_done = np.nan, False, 0
    if n_permutations > 0:
        rng = np.random.default_rng(0) if rng is None else rng
        orders, exact = permutation_orders(k, n_permutations, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            perm = fit_rma(g[orders.T], var_g[orders.T], X, method, knapp_hartung, alpha,
                           min_studies)
        p_perm[1:] = permutation_p(np.abs(perm.stat[1:]).T, np.abs(fit.stat[1:, 0]), exact)
        qm_p_perm = float(permutation_p(perm.qm, fit.qm[0], exact))
        n_done = orders.shape[0]
    df_test = fit.df_test[0]
    return pd.DataFrame({
        "moderator": ["intercept", *names], "k": k, "beta": fit.beta[:, 0],
        "se": fit.se[:, 0], "ci_low": fit.ci_low[:, 0], "ci_high": fit.ci_high[:, 0],
        "stat": fit.stat[:, 0], "df": df_test if np.isfinite(df_test) else np.nan,
        "test": "knha" if np.isfinite(df_test) else "z", "p": fit.pval[:, 0], "p_perm": p_perm, "qm": fit.qm[0], "qm_df": q,
        "qm_p": fit.qm_p[0], "qm_p_perm": qm_p_perm, "tau2": tau2, "tau2_null": tau2_0,
        "r2": r2, "qe": fit.qe[0], "qe_df": int(fit.df[0]), "qe_p": fit.qe_p[0],
        "i2": fit.i2[0], "n_permutations": n_done,
        "permutation": ("exact" if exact else "monte-carlo") if n_done else "none",
        "converged": bool(fit.converged[0] and null.converged[0]),
    })


def _usable_moderators(mods: pd.DataFrame, names, min_k):
    """Split moderator names into usable ones and (name, reason) for the others."""
    usable, skipped = [], []
    for name in names:
        col = mods[name] if name in mods else pd.Series(dtype=float)
        col = col.dropna()
        if len(col) < min_k:
            reason = f"moderator '{name}' available for {len(col)} studies (< {min_k})"
            skipped.append((name, reason))
        elif col.nunique() < 2:
            skipped.append((name, f"moderator '{name}' is constant across studies"))
        else:
            usable.append(name)
    return usable, skipped


def _stable_rng(seed, *keys):
    """Return a generator seeded by ``seed`` and a stable hash of ``keys``, so each analysis
    gets its own reproducible stream whatever else runs and in which order."""
    digest = zlib.crc32("|".join(map(str, keys)).encode())
    return np.random.default_rng([int(seed), digest])


def metaregression_table(studies, g, var_g, mods: pd.DataFrame, metric, opts) -> pd.DataFrame:
    """Run one-moderator-at-a-time and joint meta-regressions for one metric.

    Studies without a value for a model's moderators are left out of that model; models
    with fewer than ``max(min_studies, q + 2)`` studies, or with a constant moderator, are
    reported as a row with NaN estimates and the reason in ``warning``.
    """
    mods = mods.reindex(list(studies))
    g, var_g = np.asarray(g, float), np.asarray(var_g, float)
    min_k = opts["min_studies"]
    usable, skipped = _usable_moderators(mods, opts["moderators"], max(min_k, 3))
    models = [(f"single:{m}", [m]) for m in usable]
    if len(usable) > 1:
        models.append(("joint", usable))
    tables = []
    for model, names in models:
        sub = mods[names]
        keep = sub.notna().all(axis=1).to_numpy()
        need = max(min_k, len(names) + 2)
        if keep.sum() < need:
            tables.append(pd.DataFrame({
                "model": [model], "moderator": [",".join(names)], "k": [int(keep.sum())],
                "warning": [f"k={int(keep.sum())} < {need} studies with complete moderators"],
            }))
            continue
        rng = _stable_rng(opts["seed"], "metareg", metric, model)
        tab = meta_regression(
            g[keep], var_g[keep], sub[keep], opts["method"], opts["knapp_hartung"],
            opts["alpha"], opts["n_permutations"], rng, min_k,
        )
        tab.insert(0, "model", model)
        notes = [] if tab["converged"].all() else ["REML did not converge"]
        if opts["knapp_hartung"] and (tab["test"] == "z").any():
            notes.append("Knapp-Hartung residual variance is 0 (effects on the regression "
                         "line): z test used instead")
        tab["warning"] = "; ".join(notes)
        tables.append(tab)
    for name, reason in skipped:
        LOGGER.info("%s: %s", metric, reason)
        tables.append(pd.DataFrame({"model": [f"single:{name}"], "moderator": [name],
                                    "warning": [reason]}))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


# --------------------------------------------------------------------------------------
# inputs: moderators and per-study tables
# --------------------------------------------------------------------------------------
def study_moderators(participants_tsvs: dict, included: dict | None = None) -> pd.DataFrame:
    """Compute study-level moderators from BIDS participants tables.

    Parameters
    ----------
    participants_tsvs : dict
        Study id -> path of its ``participants.tsv``.
    included : dict, optional
        Study id -> participant ids to use (e.g. those passing QC); default all rows.

    Returns
    -------
    pandas.DataFrame
        One row per study: ``study``, ``n_ms``, ``n_hc``, ``age`` (mean age in years of the
        whole sample, MS and HC), ``pctfemale`` (% female, whole sample, among known sex),
        ``duration`` (mean disease duration in years, MS only), ``edss`` (mean EDSS, MS
        only), ``t2lv`` (mean T2 lesion volume in ml, MS only; NaN when the column is
        absent or empty). Whole-sample age and sex describe the compared groups, which the
        group stage matches on; clinical variables exist for MS only. ``n/a`` is missing.

    Raises
    ------
    MsnetInputError
        If a table cannot be read or lacks ``participant_id`` or ``group``.
    """
    rows = []
    for study, path in participants_tsvs.items():
        try:
            table = pd.read_csv(path, sep="\t", na_values=["n/a"], dtype={"participant_id": str})
        except (OSError, pd.errors.ParserError) as err:
            raise MsnetInputError(f"{path}: cannot read participants table of study "
                                  f"'{study}' ({err}).") from err
        missing = {"participant_id", "group"} - set(table.columns)
        if missing:
            raise MsnetInputError(
                f"{path}: participants table of study '{study}' lacks column(s) "
                f"{sorted(missing)}; add them (BIDS participants.tsv)."
            )
        if included is not None and study in included:
            table = table[table["participant_id"].isin(set(included[study]))]
        ms = table[table["group"] == "MS"]
        sex = table["sex"].dropna() if "sex" in table else pd.Series(dtype=str)
        rows.append({
            "study": study,
            "n_ms": len(ms),
            "n_hc": int((table["group"] == "HC").sum()),
            "age": _mean(table, "age"),
            "pctfemale": 100.0 * float((sex == "F").mean()) if len(sex) else np.nan,
            "duration": _mean(ms, "disease_duration"),
            "edss": _mean(ms, "edss"),
            "t2lv": _mean(ms, "t2lv"),
        })
    return pd.DataFrame(rows, columns=["study", "n_ms", "n_hc", *MODERATORS])


def _mean(table, column):
    if column not in table:
        return np.nan
    values = pd.to_numeric(table[column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else np.nan


def _moderator_frame(moderators, studies) -> pd.DataFrame:
    """Normalise ``moderators`` (DataFrame, TSV path, participants dict or None)."""
    if moderators is None:
        frame = pd.DataFrame({"study": list(studies)})
    elif isinstance(moderators, dict):
        frame = study_moderators(moderators)
    elif isinstance(moderators, pd.DataFrame):
        frame = moderators.copy()
    else:
        frame = pd.read_csv(moderators, sep="\t", na_values=["n/a"], dtype={"study": str})
        if "study" not in frame:
            raise MsnetInputError(f"{moderators}: moderators table needs a 'study' column.")
    for name in MODERATORS:
        if name not in frame:
            frame[name] = np.nan
    frame["study"] = frame["study"].astype(str)
    return frame.set_index("study")


_EFFECT_COLUMNS = ("metric", "g", "var_g")


def _standard_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Map the group stage's column names onto the ones used here.

    ``network`` comes from ``network`` or, in :mod:`msnet.group` tables, from ``network_a``
    and ``network_b`` (``DMN`` within a network, ``DMN-SMN`` between two); the CI of g from
    ``g_ci_low``/``g_ci_high`` (group stage) or ``ci_low``/``ci_high``.
    """
    table = table.copy()
    if "network" not in table and {"network_a", "network_b"} <= set(table.columns):
        a, b = table["network_a"].astype(str), table["network_b"].astype(str)
        table["network"] = a.where(a == b, a + "-" + b)
    for col in ("ci_low", "ci_high"):
        if f"g_{col}" in table:
            table[col] = table[f"g_{col}"]
    return table


def collect_effects(study_tables: dict) -> pd.DataFrame:
    """Read the per-study network tables into one long table with exclusion reasons.

    Parameters
    ----------
    study_tables : dict
        Study id -> path of ``study-{id}_desc-MSvsHC_networks.tsv`` (columns at least
        ``metric``, ``g``, ``var_g``; optional ``network`` or ``network_a``/``network_b``,
        ``n_ms``, ``n_hc``, ``g_ci_low``/``g_ci_high`` (or ``ci_low``/``ci_high``), and the
        group stage's ``status``/``reason``).

    Returns
    -------
    pandas.DataFrame
        One row per (metric, study): ``metric``, ``network``, ``study``, ``g``, ``var_g``,
        ``n_ms``, ``n_hc``, ``ci_low``, ``ci_high``, ``included`` and ``exclusion_reason``
        (metric missing from the study's table; excluded at the group stage, with its
        reason; g not finite; var_g zero, negative or not finite).

    Raises
    ------
    MsnetInputError
        For an unreadable table, missing columns or a duplicated metric.
    """
    frames = []
    for study, path in study_tables.items():
        try:
            table = pd.read_csv(path, sep="\t", na_values=["n/a"])
        except (OSError, pd.errors.ParserError) as err:
            raise MsnetInputError(f"{path}: cannot read the network table of study "
                                  f"'{study}' ({err}).") from err
        missing = set(_EFFECT_COLUMNS) - set(table.columns)
        if missing:
            raise MsnetInputError(f"{path}: network table of study '{study}' lacks column(s) "
                                  f"{sorted(missing)}; it must come from the group stage.")
        dup = table["metric"][table["metric"].duplicated()].tolist()
        if dup:
            raise MsnetInputError(f"{path}: metric(s) {dup} appear more than once; keep one "
                                  "row per metric.")
        frames.append(_standard_columns(table).assign(study=str(study), present=True))
    if not frames:
        raise MsnetInputError("meta-analysis: no per-study network tables were given.")
    long = pd.concat(frames, ignore_index=True)
    for col in ("network", "n_ms", "n_hc", "ci_low", "ci_high", "status", "reason"):
        if col not in long:
            long[col] = np.nan
    metrics = long.drop_duplicates("metric")[["metric", "network"]]
    grid = metrics.merge(pd.DataFrame({"study": [str(s) for s in study_tables]}), how="cross")
    long = grid.merge(long.drop(columns="network"), on=["metric", "study"], how="left")
    g = pd.to_numeric(long["g"], errors="coerce").to_numpy(float)
    v = pd.to_numeric(long["var_g"], errors="coerce").to_numpy(float)
    group_excluded = (long["status"] == "excluded").to_numpy()
    group_reason = "excluded at the group stage: " + long["reason"].fillna("").astype(str)
    reason = np.select(
        [long["present"].isna().to_numpy(), group_excluded, ~np.isfinite(g),
         ~(np.isfinite(v) & (v > 0))],
        ["metric missing from the study table", group_reason,
         "g is not finite (no per-study statistics)", "var_g is zero, negative or not finite"],
        default="",
    )
    long["g"], long["var_g"] = g, v
    long["included"] = reason == ""
    long["exclusion_reason"] = reason
    cols = ["metric", "network", "study", "g", "var_g", "n_ms", "n_hc", "ci_low", "ci_high",
            "included", "exclusion_reason"]
    return long[cols]


# --------------------------------------------------------------------------------------
# file level: network tables
# --------------------------------------------------------------------------------------
NETWORK_COLUMNS = [
    "metric", "network", "model", "method", "test", "k", "k_excluded", "n_ms", "n_hc", "g",
    "se", "ci_low", "ci_high", "stat", "df", "p", "pi_low", "pi_high", "tau2", "tau2_ci_low",
    "tau2_ci_high", "tau", "i2", "i2_ci_low", "i2_ci_high", "h2", "q", "q_df", "q_p",
    "converged", "warning", "excluded",
]
"""Columns of ``meta_desc-networks_stats.tsv`` (see :func:`meta_analysis`)."""

LOO_COLUMNS = ["metric", "network", "study_omitted", "model", "k", "g", "se", "ci_low",
               "ci_high", "stat", "p", "tau2", "i2", "h2", "q", "q_p"]
"""Columns of ``meta_desc-loo_stats.tsv`` (see :func:`leave_one_out`)."""

EGGER_COLUMNS = ["metric", "network", "test", "k", "bias", "bias_se", "t", "df", "p",
                 "limit_estimate", "limit_se", "warning"]
"""Columns of ``meta_desc-egger_stats.tsv`` (see :func:`egger_test`)."""

METAREG_COLUMNS = [
    "metric", "network", "model", "moderator", "k", "beta", "se", "ci_low", "ci_high", "stat",
    "df", "test", "p", "p_perm", "q_fdr", "qm", "qm_df", "qm_p", "qm_p_perm", "tau2", "tau2_null", "r2",
    "qe", "qe_df", "qe_p", "i2", "n_permutations", "permutation", "converged", "warning",
]
"""Columns of ``meta_desc-metaregression_stats.tsv`` (see :func:`meta_regression`;
``q_fdr``: :func:`metaregression_fdr`)."""


def metaregression_fdr(table: pd.DataFrame) -> np.ndarray:
    """Benjamini-Hochberg q of every moderator coefficient of a meta-regression table.

    One family per model type (single-moderator models; joint models) and kind of metric
    (``within_*``; ``between_*``: the families of the group and clinical stages), so each
    family spans the metrics x moderators tested together (for the within-network metrics:
    networks x moderators). The p corrected is the permutation p (``p_perm``) where it was
    computed, otherwise the parametric ``p``. Intercepts and models that could not be fitted
    get NaN.

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of ``meta_desc-metaregression_stats.tsv`` (``metric, model, moderator, p``,
        optional ``p_perm``).

    Returns
    -------
    numpy.ndarray
        q per row, aligned with ``table``.
    """
    q = np.full(len(table), np.nan)
    if table is None or table.empty or "p" not in table:
        return q
    p = pd.to_numeric(table["p"], errors="coerce").to_numpy(float)
    if "p_perm" in table:
        perm = pd.to_numeric(table["p_perm"], errors="coerce").to_numpy(float)
        p = np.where(np.isfinite(perm), perm, p)
    slope = (table["moderator"].astype(str) != "intercept").to_numpy()
    model = np.where(table["model"].astype(str) == "joint", "joint", "single")
    kind = table["metric"].astype(str).str.split("_").str[0].to_numpy()
    for fam in set(zip(model[slope], kind[slope])):
        rows = slope & (model == fam[0]) & (kind == fam[1])
        q[rows] = msstats.fdr_bh(p[rows])
    return q

FOREST_COLUMNS = ["metric", "network", "study", "included", "exclusion_reason", "g", "var_g",
                  "se", "ci_low", "ci_high", "weight", "weight_fixed", "n_ms", "n_hc"]
"""Columns of ``meta_desc-forest_data.tsv`` (per-study data for forest and funnel plots;
``weight``/``weight_fixed``: % weight in the random/fixed-effect model, 0 if excluded)."""


def meta_networks(study_tables: dict, moderators, out_dir, options: dict | None = None) -> dict:
    """Network-level meta-analysis of every metric in the per-study tables (Snakemake rule).

    Parameters
    ----------
    study_tables : dict
        Study id -> per-study network table (see :func:`collect_effects`).
    moderators : dict, str, Path, pandas.DataFrame or None
        Study id -> participants.tsv (moderators computed by :func:`study_moderators`),
        or a moderators TSV/DataFrame with a ``study`` column, or None (no meta-regression).
    out_dir : str or Path
        Output folder (``results/meta``).
    options : dict, optional
        The ``meta`` config section (:func:`resolve_options`).

    Returns
    -------
    dict
        Output name -> path: ``networks``, ``loo``, ``egger``, ``metaregression``,
        ``moderators``, ``forest`` (``meta_desc-{name}_stats.tsv``,
        ``meta_desc-studies_moderators.tsv``, ``meta_desc-forest_data.tsv``).
    """
    opts = resolve_options(options)
    out_dir = Path(out_dir)
    effects = collect_effects(study_tables)
    mods = _moderator_frame(moderators, study_tables)
    if moderators is not None:
        min_k = max(opts["min_studies"], 3)
        for _, reason in _usable_moderators(mods, opts["moderators"], min_k)[1]:
            LOGGER.warning("no meta-regression on this moderator: %s", reason)
    fit_kw = {k: opts[k] for k in ("method", "knapp_hartung", "alpha", "min_studies")}
    main, loo, egger, metareg, forest = [], [], [], [], []
    from msnet.logs import Collapsed

    repeated = Collapsed(LOGGER, "metrics")  # one line per study exclusion, not per metric
    for metric, sub in effects.groupby("metric", sort=False):
        network = sub["network"].iloc[0]
        dropped = sub[~sub["included"]]
        for row in dropped.itertuples():
            repeated.add(f"study {row.study} excluded: {row.exclusion_reason}", metric)
        ok = sub[sub["included"]]
        g, v = ok["g"].to_numpy(float), ok["var_g"].to_numpy(float)
        res = meta_analysis(g, v, **fit_kw)
        if res["warning"]:
            repeated.add(res["warning"], metric)
        excluded = "; ".join(f"{r.study}: {r.exclusion_reason}" for r in dropped.itertuples())
        main.append({"metric": metric, "network": network, **res,
                     "n_ms": ok["n_ms"].sum(min_count=1), "n_hc": ok["n_hc"].sum(min_count=1),
                     "k_excluded": len(dropped), "excluded": excluded})
        forest.append(_forest_rows(sub, res, opts))
        keys = {"metric": metric, "network": network}
        if len(ok) >= 3:
            loo.append(leave_one_out(ok["study"], g, v, **fit_kw).assign(**keys))
        egger.append({**keys, **egger_test(g, v)})
        if len(ok) and moderators is not None:
            tab = metaregression_table(ok["study"], g, v, mods, metric, opts)
            if len(tab):
                metareg.append(tab.assign(**keys))
    repeated.flush()
    paths = {
        "networks": out_dir / "meta_desc-networks_stats.tsv",
        "loo": out_dir / "meta_desc-loo_stats.tsv",
        "egger": out_dir / "meta_desc-egger_stats.tsv",
        "metaregression": out_dir / "meta_desc-metaregression_stats.tsv",
        "moderators": out_dir / "meta_desc-studies_moderators.tsv",
        "forest": out_dir / "meta_desc-forest_data.tsv",
    }
    tables = {
        "networks": _columns(pd.DataFrame(main), NETWORK_COLUMNS),
        "loo": _columns(_concat(loo), LOO_COLUMNS),
        "egger": _columns(pd.DataFrame(egger), EGGER_COLUMNS),
        "metaregression": _with_fdr(_columns(_concat(metareg), METAREG_COLUMNS)),
        "moderators": mods.reindex([str(s) for s in study_tables])
        .rename_axis("study").reset_index(),
        "forest": pd.concat(forest, ignore_index=True),
    }
    for name, table in tables.items():
        write_table(table, paths[name])
    return paths


def _concat(frames):
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _columns(df, columns):
    """Return ``df`` with exactly ``columns`` (missing ones empty), integer counts as Int64."""
    df = df.reindex(columns=columns)
    for col in set(columns) & {"k", "k_excluded", "q_df", "qe_df", "qm_df", "n_permutations"}:
        df[col] = pd.to_numeric(df[col]).round().astype("Int64")
    return df


def _with_fdr(metareg: pd.DataFrame) -> pd.DataFrame:
    metareg["q_fdr"] = metaregression_fdr(metareg)
    return metareg


def _forest_rows(sub, res, opts):
    """Per-study forest/funnel data: g, its CI, SE and % weights in the pooled model."""
    z = stats.norm.ppf(1 - opts["alpha"] / 2)
    out = sub.copy()
    se = np.sqrt(out["var_g"].where(out["included"]))
    out["se"] = se
    out["ci_low"] = out["ci_low"].fillna(out["g"] - z * se)
    out["ci_high"] = out["ci_high"].fillna(out["g"] + z * se)
    tau2 = res.get("tau2", np.nan)
    inc = out["included"].to_numpy()
    w_re = np.where(inc, 1.0 / (out["var_g"] + (tau2 if np.isfinite(tau2) else 0.0)), 0.0)
    w_fe = np.where(inc, 1.0 / out["var_g"], 0.0)
    out["weight"] = 100 * w_re / w_re.sum() if w_re.sum() > 0 else 0.0
    out["weight_fixed"] = 100 * w_fe / w_fe.sum() if w_fe.sum() > 0 else 0.0
    return out[FOREST_COLUMNS]


# --------------------------------------------------------------------------------------
# voxelwise
# --------------------------------------------------------------------------------------
def _permuted_stats(make_block, n_perm, n_vox, n_studies, per=None):
    """Yield ``(perm_slice, t, df)``, each of shape (n in slice, n_vox).

    ``make_block(perm_slice, vox_slice)`` returns the statistics (z, or t under
    Knapp-Hartung) and their test df (inf for z) of those permutations at those voxels.
    Numpy blocks hold about ``_CHUNK_ELEMENTS / n_studies`` columns (several permutations
    of a small mask, or part of one permutation of a large mask); ``per`` fixes the
    permutations per block instead (all voxels at once: the compiled refits).
    """
    from msnet.logs import Progress

    cols = max(1, _CHUNK_ELEMENTS // n_studies)
    width = n_vox if per else min(n_vox, cols)
    per = per or max(1, cols // n_vox)
    progress = Progress(LOGGER, f"permutations ({n_vox} voxels, {n_studies} studies)", n_perm)
    for p0 in range(0, n_perm, per):
        ps = slice(p0, min(n_perm, p0 + per))
        t = np.empty((ps.stop - ps.start, n_vox))
        df = np.empty_like(t)
        for v0 in range(0, n_vox, width):
            vs = slice(v0, min(n_vox, v0 + width))
            t[:, vs], df[:, vs] = make_block(ps, vs)
        yield ps, t, df
        progress.update(ps.stop)


def _pooled_t(Y, V, X, opts, min_studies):
    """Statistic (z, or t under Knapp-Hartung) of the last coefficient and its test df
    (inf for z) for many data sets, each of shape (m,)."""
    core = _fit_core(Y, V, X, opts["method"], opts["knapp_hartung"], min_studies)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = core["beta"][-1] / np.sqrt(core["cov"][:, -1, -1])
    return stat, core["df_test"]


def _pooled_stat(Y, V, X, opts, min_studies):
    """z maps (of the last coefficient) for many data sets, shape (m,)."""
    return as_z(*_pooled_t(Y, V, X, opts, min_studies))


def as_z(stat, df):
    """Convert t statistics to z with the same two-sided p (identity where ``df`` is inf).

    Voxels can differ in the number of contributing studies, hence in df under
    Knapp-Hartung; z-equivalents put them on one scale for maps and max-statistics (as
    NiMARE's z maps do).
    """
    stat = np.asarray(stat, float)
    df = np.broadcast_to(df, stat.shape)
    if np.all(np.isinf(df)):
        return stat
    with np.errstate(invalid="ignore"):
        z = np.sign(stat) * stats.norm.isf(stats.t.sf(np.abs(stat), df))
    return np.where(np.isinf(df), stat, z)


_COMPILED = True
"""Permutation refits use the compiled kernels of :mod:`msnet._metakernels` where they
apply (intercept-only models and one-moderator meta-regressions); False (or numba missing)
falls back to :func:`_fit_core` on permutation batches. Both give the same statistics
(``tests/unit/test_meta.py``)."""
_KERNEL_BLOCK = 2**18
"""Statistics per block of compiled permutation refits (permutations x voxels): two
float64 arrays of 2 MB."""


def _compiled_block(k, n_vox, X, opts):
    """Return ``make_block(rows, signs)`` -> ``(ps, vs) -> (t, df)`` running
    :func:`msnet._metakernels.perm_stats`, or None where it does not apply."""
    if not _COMPILED:
        return None
    p = 1 if X is None else X.shape[1]
    if p == 1 and X is not None and not np.all(X == 1.0):
        return None
    if p == 2 and not np.all(X[:, 0] == 1.0) or p > 2:
        return None
    try:
        from msnet import _metakernels as kern
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    x = np.zeros(k) if p == 1 else np.ascontiguousarray(X[:, 1], dtype=float)
    method = {"REML": kern.REML, "DL": kern.DL, "FE": kern.FE}[opts["method"].upper()]

    def factory(Y, V, rows, signs, min_studies):
        Yt = np.ascontiguousarray(np.asarray(Y, float).T)
        Vt = np.ascontiguousarray(np.asarray(V, float).T)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        signs = np.ascontiguousarray(signs, dtype=float)
        min_k = max(int(min_studies), p + 1)

        def block(ps, vs):
            t = np.empty((ps.stop - ps.start, n_vox))
            df = np.empty_like(t)
            kern.perm_stats(Yt, Vt, x, rows[ps], signs[ps], p, method,
                            bool(opts["knapp_hartung"]), min_k, t, df)
            return t[:, vs], df[:, vs]

        return block

    return factory


def _max_abs_z(t, df):
    """Row-wise ``max |as_z(t, df)|`` over finite values (0 for none), as
    ``_nanmax_abs(as_z(t, df))`` but converting one value per row and distinct df: |z| is
    increasing in |t| at a given df. Rows where that value is not finite (the t tail
    underflows) are converted in full."""
    a = np.abs(t)
    a = np.where(np.isfinite(a), a, -1.0)
    best = np.zeros(t.shape[0])
    redo = np.zeros(t.shape[0], dtype=bool)
    for d in np.unique(df):
        top = np.where(df == d, a, -1.0).max(axis=1)
        has = top >= 0
        z = np.abs(as_z(top[has], d))
        best[has] = np.maximum(best[has], np.where(np.isfinite(z), z, 0.0))
        redo[np.flatnonzero(has)[~np.isfinite(z)]] = True
    for row in np.flatnonzero(redo):
        best[row] = _nanmax_abs(as_z(t[row], df[row])[None])[0]
    return best


def _supra_z(t, df, z_threshold):
    """``nan_to_num(as_z(t, df))`` where it can exceed ``z_threshold`` in absolute value, 0
    elsewhere (|z| <= |t|: the t distribution's tails are heavier), for cluster sizes."""
    z = np.zeros(t.shape)
    cand = np.abs(t) > z_threshold * (1.0 - 1e-6)
    z[cand] = np.nan_to_num(as_z(t[cand], df[cand]))
    return z


def sign_flip_null(Y, V, opts, rng, grid=None, z_threshold=None):
    """Sign-flipping permutation null of the pooled random-effects statistic.

    Each permutation multiplies every study's whole effect map by +1 or -1 (variances
    unchanged) and refits the model at every voxel. Valid when, under H0 (no MS effect),
    each study's effect is distributed symmetrically about zero (including its random
    between-study deviation) and studies are independent; spatial dependence within a
    study is kept because one sign applies to its whole map. All 2^k sign patterns are
    used when 2^k <= n_permutations (exact test). The refits run in compiled code
    (:mod:`msnet._metakernels`) and only the maximum (and the supra-threshold part of each
    map, for clusters) is converted to z.

    Parameters
    ----------
    Y, V : numpy.ndarray, shape (k, n_voxels)
        Study effect and variance maps over the mask (NaN = study missing at a voxel).
    opts : dict
        Resolved options (method, knapp_hartung, alpha, n_permutations, min_studies).
    rng : numpy.random.Generator
    grid : msnet.stats.VoxelGrid, optional
        With ``z_threshold``: also record the largest cluster of each permutation.
    z_threshold : float, optional
        Cluster-forming threshold on |z|.

    Returns
    -------
    max_stat : numpy.ndarray, shape (n,)
        Maximum |z| over voxels per permutation.
    max_cluster : numpy.ndarray, shape (n,)
        Largest supra-threshold cluster (voxels, either sign) per permutation (0 if not asked).
    exact : bool
    """
    k, n_vox = Y.shape
    signs, exact = sign_flips(k, opts["n_permutations"], rng)
    n = signs.shape[0]
    max_stat, max_cluster = np.zeros(n), np.zeros(n)
    factory = _compiled_block(k, n_vox, None, opts)
    if factory is not None:
        block = factory(Y, V, np.broadcast_to(np.arange(k), (n, k)), signs,
                        opts["min_studies"])
        per = max(1, _KERNEL_BLOCK // n_vox)
    else:
        per = None

        def block(ps, vs):
            n_p = ps.stop - ps.start
            flipped = (signs[ps, :, None] * Y[None, :, vs]).transpose(1, 0, 2).reshape(k, -1)
            t, df = _pooled_t(flipped, np.tile(V[:, vs], (1, n_p)), None, opts,
                              opts["min_studies"])
            return t.reshape(n_p, -1), df.reshape(n_p, -1)

    for ps, t, df in _permuted_stats(block, n, n_vox, k, per):
        max_stat[ps] = _max_abs_z(t, df)
        if grid is not None and z_threshold is not None:
            max_cluster[ps] = grid.null_maxima(_supra_z(t, df, z_threshold), True,
                                               z_threshold)[0]
    return max_stat, max_cluster, exact


def moderator_permutation_null(Y, V, X, opts, rng):
    """Permutation null (max |stat| of the last coefficient) for a voxelwise meta-regression.

    The rows of (Y, V) -- whole study maps -- are permuted against the design, i.e. the
    moderator values are shuffled across studies (exact when k! <= n_permutations). With
    the design ``(1, x)`` the refits run in compiled code (:mod:`msnet._metakernels`).
    """
    k, n_vox = Y.shape
    orders, exact = permutation_orders(k, opts["n_permutations"], rng)
    n = orders.shape[0]
    max_stat = np.zeros(n)
    min_k = max(opts["min_studies"], X.shape[1] + 1)
    factory = _compiled_block(k, n_vox, X, opts)
    if factory is not None:
        block = factory(Y, V, orders, np.ones((n, k)), min_k)
        per = max(1, _KERNEL_BLOCK // n_vox)
    else:
        per = None

        def block(ps, vs):
            idx = orders[ps]
            Yp = Y[:, vs][idx].transpose(1, 0, 2).reshape(k, -1)
            Vp = V[:, vs][idx].transpose(1, 0, 2).reshape(k, -1)
            t, df = _pooled_t(Yp, Vp, X, opts, min_k)
            return t.reshape(idx.shape[0], -1), df.reshape(idx.shape[0], -1)

    for ps, t, df in _permuted_stats(block, n, n_vox, k, per):
        max_stat[ps] = _max_abs_z(t, df)
    return max_stat, exact


def _nanmax_abs(stat):
    """Row-wise max of |stat| ignoring NaN (0 for an all-NaN row)."""
    a = np.abs(stat)
    return np.max(np.where(np.isfinite(a), a, 0.0), axis=1)


def voxelwise_meta(Y, V, opts, grid=None, network=""):
    """Voxelwise random-effects meta-analysis with sign-flip FWE over the mask.

    Parameters
    ----------
    Y, V : numpy.ndarray, shape (k, n_voxels)
        Per-study g and var(g) over the mask (NaN: study missing at that voxel).
    opts : dict
        Resolved options.
    grid : msnet.stats.VoxelGrid, optional
        Grid of the mask the voxels come from (needed for clusters).
    network : str
        Used to derive this network's permutation stream from ``seed``.

    Returns
    -------
    dict
        Arrays over the mask: ``g``, ``se``, ``z`` (z, or the z-equivalent of t under
        Knapp-Hartung, see :func:`as_z`), ``p``, ``p_fwe``, ``fdr_q``, ``i2``, ``tau2``,
        ``k``, ``fixed``;
        plus ``clusters`` (:class:`msnet.stats.ClusterResult`, or None without ``grid``),
        ``exact`` (bool), ``n_permutations``, ``z_threshold`` and ``converged`` (count of
        REML-converged voxels).
    """
    fit = fit_rma(Y, V, None, opts["method"], opts["knapp_hartung"], opts["alpha"],
                  opts["min_studies"])
    out = {"g": fit.beta[0], "se": fit.se[0], "z": as_z(fit.stat[0], fit.df_test),
           "p": fit.pval[0], "i2": fit.i2, "tau2": fit.tau2, "k": fit.k,
           "fixed": fit.fixed & (fit.k > 0), "converged": int(fit.converged.sum())}
    out["fdr_q"] = msstats.fdr_bh(out["p"])
    z_thr = float(stats.norm.isf(opts["cluster_threshold"] / 2))
    out["z_threshold"] = z_thr
    out["p_fwe"] = np.full(fit.k.shape, np.nan)
    max_cluster, out["exact"], out["n_permutations"] = np.zeros(0), False, 0
    if opts["n_permutations"] > 0 and Y.shape[0] >= 2:
        rng = _stable_rng(opts["seed"], "signflip", network)
        max_stat, max_cluster, exact = sign_flip_null(Y, V, opts, rng, grid, z_thr)
        out["p_fwe"] = permutation_p(max_stat[:, None], np.abs(out["z"]), exact)
        out.update(exact=exact, n_permutations=len(max_stat))
    out["clusters"] = None if grid is None else _clusters(grid, out["z"], z_thr, max_cluster,
                                                          out["exact"])
    return out


def _clusters(grid, z, z_threshold, null, exact):
    """Observed clusters (largest first) with cluster-extent FWE p from ``null``."""
    labels, sizes, signs = grid.clusters(np.nan_to_num(z), z_threshold, True)
    order = np.argsort(-sizes, kind="stable")
    relabel = np.zeros(sizes.size + 1, np.int64)
    relabel[order + 1] = np.arange(1, sizes.size + 1)
    p = (permutation_p(null[:, None], sizes[order], exact) if null.size
         else np.full(sizes.size, np.nan))
    return msstats.ClusterResult(z_threshold, relabel[labels], sizes[order], signs[order],
                                 np.atleast_1d(p), null)


def voxelwise_metaregression(Y, V, values, opts, network="", name=""):
    """Voxelwise mixed-effects meta-regression on one moderator.

    NiMARE's IBMA estimators fit intercept-only models over images (no moderators), so
    this is written here on :func:`fit_rma`. Studies missing the moderator are dropped.

    Returns
    -------
    dict
        Arrays over the mask ``beta`` (slope), ``z`` (its z, or the z-equivalent of t under
        Knapp-Hartung), ``p_fwe`` (max-|z| permutation FWE, moderators permuted across
        studies), and
        ``k``, ``exact``, ``n_permutations``.
    """
    values = np.asarray(values, float)
    keep = np.isfinite(values)
    Y, V, x = Y[keep], V[keep], values[keep]
    X = np.column_stack([np.ones(x.size), x])
    fit = fit_rma(Y, V, X, opts["method"], opts["knapp_hartung"], opts["alpha"],
                  max(opts["min_studies"], 3))
    out = {"beta": fit.beta[1], "z": as_z(fit.stat[1], fit.df_test), "k": int(keep.sum()),
           "p_fwe": np.full(Y.shape[1], np.nan), "exact": False, "n_permutations": 0}
    if opts["n_permutations"] > 0:
        rng = _stable_rng(opts["seed"], "metareg-voxel", network, name)
        max_stat, exact = moderator_permutation_null(Y, V, X, opts, rng)
        out.update(p_fwe=permutation_p(max_stat[:, None], np.abs(out["z"]), exact),
                   exact=exact, n_permutations=len(max_stat))
    return out


def cluster_table(res: dict, mask_img, alpha=0.05, network="") -> pd.DataFrame:
    """Cluster table of a :func:`voxelwise_meta` result via :func:`msnet.stats.cluster_table`.

    The group stage's cluster columns (:func:`msnet.stats.cluster_table`) with the
    statistic named for what it is: ``peak_zstat`` is the pooled z at the peak (the group
    stage's ``peak_t`` holds a t; ``peak_z`` is the peak's MNI z coordinate); the effect
    column is ``peak_g``, the pooled g at the peak; ``direction`` ``MS>HC``/``MS<HC``;
    ``peak_p_fwe`` sign-flip voxel FWE; ``cluster_p_fwe`` sign-flip cluster-extent FWE;
    Harvard-Oxford ``label``; preceded by ``network``.
    """
    perm = msstats.PermutationResult(
        t=res["z"], p=res["p"], effect=res["g"], sigma=res["se"], df=0,
        n_perm=res["n_permutations"], p_fwe=res["p_fwe"], h0_max_t=np.zeros(0),
        clusters=res["clusters"],
    )
    table = msstats.cluster_table(perm, mask_img, res["g"], "g", alpha, ("MS>HC", "MS<HC"))
    table = table.rename(columns={"peak_t": "peak_zstat"})
    table.insert(0, "network", network)
    return table


def _load_maps(paths: dict, mask_img, kind):
    """Load 3-D maps onto the mask grid, shape (k, n_voxels) float64; check the grid."""
    import nibabel as nib

    mask = np.asarray(mask_img.dataobj).astype(bool)
    out = np.empty((len(paths), int(mask.sum())))
    for i, (study, path) in enumerate(paths.items()):
        try:
            img = nib.load(str(path))
        except (OSError, nib.filebasedimages.ImageFileError) as err:
            raise MsnetInputError(
                f"{path}: cannot read the {kind} map of study '{study}' ({err})."
            ) from err
        if img.shape[:3] != mask.shape or not np.allclose(img.affine, mask_img.affine, atol=1e-3):
            raise MsnetInputError(
                f"{path}: {kind} map of study '{study}' has shape {img.shape} / affine different "
                f"from the network mask {mask.shape}; write all maps on the analysis grid."
            )
        out[i] = np.asarray(img.dataobj, dtype=np.float64).reshape(mask.shape)[mask]
    return out


def _unmask(values, mask, fill=0.0):
    vol = np.full(mask.shape, fill, dtype=np.float32)
    vol[mask] = np.where(np.isfinite(values), values, fill)
    return vol


def meta_voxelwise(g_maps: dict, varg_maps: dict, mask, network, moderators, out_dir,
                   options: dict | None = None) -> dict:
    """Voxelwise meta-analysis and meta-regression of one network (Snakemake rule).

    Parameters
    ----------
    g_maps, varg_maps : dict
        Study id -> ``study-{id}_network-{net}_space-{space}_stat-g_map.nii.gz`` /
        ``..._stat-varg_map``. The outputs take their ``space-`` from these names.
    mask : str or Path
        ``results/group/masks/network-{net}_space-{space}_mask.nii.gz``.
    network : str
        Network name (output entity).
    moderators : dict, str, Path, pandas.DataFrame or None
        As in :func:`meta_networks` (typically its ``meta_desc-studies_moderators.tsv``);
        None: no voxelwise meta-regression.
    out_dir : str or Path
        Output folder (``results/meta``).
    options : dict, optional
        The ``meta`` config section.

    Returns
    -------
    dict
        Output name -> path. Maps
        ``meta_network-{net}_space-{space}_stat-{g,z,logpfwe,fdrq,i2,tau2}_map``
        (``z``: pooled z, the z-equivalent of t under Knapp-Hartung; ``logpfwe``: signed
        ``sign(z) * -log10`` sign-flip FWE p, as the group stage's ``logpfwe``; ``i2`` in %),
        ``meta_network-{net}_mod-{name}_space-{space}_stat-{beta,z,logpperm}_map`` for every configured
        moderator (slope, its z, signed -log10 of the max-|z| permutation FWE p; all 0, with
        the reason in the JSON, when the moderator cannot be used), the cluster table
        ``meta_network-{net}_clusters.tsv`` (:func:`cluster_table`) and
        ``meta_network-{net}_desc-voxelwise_info.json`` (studies used/excluded with reasons,
        options, permutation details). Outside the mask and where nothing could be estimated
        maps hold 0 (``fdrq``: 1). Paths are keyed by the ``stat-`` value (``mod-{name}_{stat}``
        for moderator maps); entity values are alphanumeric, as BIDS parsers need.

    Raises
    ------
    MsnetInputError
        Unreadable maps, maps off the mask grid, or mismatched study sets.
    """
    import nibabel as nib

    opts = resolve_options(options)
    out_dir = Path(out_dir)
    if set(g_maps) != set(varg_maps):
        raise MsnetInputError(
            f"network {network}: g maps and var(g) maps name different studies "
            f"({sorted(set(g_maps) ^ set(varg_maps))}); give both maps for every study."
        )
    studies = [str(s) for s in g_maps]
    mask_img = nib.load(str(mask))
    mask3d = np.asarray(mask_img.dataobj).astype(bool)
    if not mask3d.any():
        raise MsnetInputError(f"{mask}: the mask of network {network} is empty; rebuild the "
                              "network masks (group stage).")
    Y = _load_maps(g_maps, mask_img, "g")
    V = _load_maps({s: varg_maps[s] for s in g_maps}, mask_img, "var(g)")
    usable = np.any(np.isfinite(Y) & np.isfinite(V) & (V > 0), axis=1)
    excluded = {s: "no voxel with finite g and positive finite var(g)" for s, u in
                zip(studies, usable) if not u}
    for study, reason in excluded.items():
        LOGGER.warning("network %s: study %s excluded: %s", network, study, reason)
    Y, V = Y[usable], V[usable]
    kept = [s for s, u in zip(studies, usable) if u]
    if len(kept) < 2:
        LOGGER.warning("network %s: %d usable studies; maps hold %s and there is no "
                       "permutation inference", network, len(kept),
                       "that study's g" if kept else "zeros")
    grid = msstats.VoxelGrid(mask3d, opts["cluster_connectivity"])
    res = voxelwise_meta(Y, V, opts, grid, network)
    n_fixed = int(res["fixed"].sum())
    if n_fixed:
        LOGGER.warning("network %s: %d voxels have < %d studies: fixed-effect model there",
                       network, n_fixed, opts["min_studies"])
    n_bad = int(mask3d.sum()) - res["converged"]
    if n_bad:
        LOGGER.warning("network %s: REML did not converge at %d voxels", network, n_bad)
    n_perm = res["n_permutations"]
    min_p = (2.0 / n_perm if res["exact"] else 1.0 / (n_perm + 1)) if n_perm else np.nan
    if min_p > opts["alpha"]:
        LOGGER.warning("network %s: with %d studies and %d permutations the smallest possible "
                       "FWE p is %.3g > alpha = %g", network, len(kept), n_perm, min_p,
                       opts["alpha"])
    stem = f"meta_network-{network}"
    space = space_of([g_maps, varg_maps])
    paths = {}
    maps = {"g": res["g"], "z": res["z"], "logpfwe": msstats.signed_logp(res["p_fwe"], res["z"]),
            "i2": res["i2"], "tau2": res["tau2"]}
    for name, values in maps.items():
        paths[name] = out_dir / map_name(stem, name, space)
        _save_map(values, mask3d, mask_img, paths[name])
    paths["fdrq"] = out_dir / map_name(stem, "fdrq", space)
    _save_map(res["fdr_q"], mask3d, mask_img, paths["fdrq"], fill=1.0)
    clusters = cluster_table(res, mask_img, opts["alpha"], network)
    paths["clusters"] = out_dir / f"{stem}_clusters.tsv"
    write_table(clusters, paths["clusters"])
    mods = _moderator_frame(moderators, kept).reindex(kept)
    mod_info = {}
    zeros = np.zeros(Y.shape[1])
    for name in opts["moderators"]:
        values = mods[name].to_numpy(float)
        reason = ("no moderators given" if moderators is None
                  else _moderator_problem(values, opts["min_studies"]))
        if reason:
            LOGGER.warning("network %s: no voxelwise meta-regression on %s (maps are 0): %s",
                           network, name, reason)
            reg = {"beta": zeros, "z": zeros, "logp": zeros}
            mod_info[name] = {"skipped": reason}
        else:
            reg = voxelwise_metaregression(Y, V, values, opts, network, name)
            reg["logp"] = msstats.signed_logp(reg["p_fwe"], reg["z"])
            mod_info[name] = {
                "k": reg["k"], "n_permutations": reg["n_permutations"],
                "exact": bool(reg["exact"]),
                "min_p_fwe": float(np.nanmin(reg["p_fwe"])) if reg["n_permutations"] else None,
            }
        for stat_name, key in (("beta", "beta"), ("z", "z"), ("logpperm", "logp")):
            path = out_dir / map_name(f"{stem}_mod-{name}", stat_name, space)
            _save_map(reg[key], mask3d, mask_img, path)
            paths[f"mod-{name}_{stat_name}"] = path
    info = {
        "network": network, "studies": kept, "excluded": excluded, "options": opts,
        "n_voxels": int(mask3d.sum()), "n_voxels_fixed_effect": n_fixed,
        "n_voxels_reml_not_converged": n_bad, "n_permutations": n_perm,
        "exact_permutation": bool(res["exact"]),
        "smallest_possible_p_fwe": None if np.isnan(min_p) else min_p,
        "cluster_forming_z": res["z_threshold"], "n_clusters": len(clusters),
        "moderators": mod_info,
        "fwe": "sign-flip max-|stat| (studies independent, effects symmetric about 0 under H0)",
    }
    paths["info"] = out_dir / f"{stem}_desc-voxelwise_info.json"
    write_json(info, paths["info"])
    return paths


def _moderator_problem(values, min_studies):
    """Reason a moderator cannot be used voxelwise, or '' if it can."""
    finite = values[np.isfinite(values)]
    need = max(min_studies, 3)
    if finite.size < need:
        return f"available for {finite.size} studies (< {need})"
    if np.unique(finite).size < 2:
        return "constant across studies"
    return ""


def _save_map(values, mask, mask_img, path, fill=0.0):
    import nibabel as nib

    img = nib.Nifti1Image(_unmask(values, mask, fill), mask_img.affine)
    img.header.set_xyzt_units("mm")
    save_map(img, path)


# --------------------------------------------------------------------------------------
# meta versus mega
# --------------------------------------------------------------------------------------
def meta_vs_mega(meta_table, mega_table, out_path, alpha=0.05,
                 combat_table=None) -> pd.DataFrame:
    """Put the two-stage meta-analysis next to the pooled mega-analysis, per metric.

    Both sides are compared on the Hedges g scale: the mega-analysis ``g`` (with
    ``g_ci_low``/``g_ci_high``, as :mod:`msnet.group` writes it) is preferred; a table
    without ``g`` may give ``estimate`` with ``ci_low``/``ci_high``. With the group stage's
    default ``effect_size: beta`` both are ``J β / σ_res`` (covariate-adjusted difference over
    the residual SD), so they estimate the same quantity; with ``effect_size: t`` the
    per-study g shrink by ``sqrt(1 - R²)`` when the groups differ in a covariate.

    Parameters
    ----------
    meta_table : str, Path or pandas.DataFrame
        ``meta_desc-networks_stats.tsv``.
    mega_table : str, Path or pandas.DataFrame
        ``pooled_desc-MSvsHC_networks.tsv`` (``metric``, ``g`` or ``estimate``, CI, ``p``;
        optional ``n_studies``).
    out_path : str or Path
        Output TSV (suggested ``results/meta/meta_desc-metavsmega_stats.tsv``).
    alpha : float
        Significance level of ``both_significant``.
    combat_table : str, Path or pandas.DataFrame, optional
        The mega-analysis on ComBat-harmonised data
        (``pooled_harmonize-combat_desc-MSvsHC_networks.tsv``, :mod:`msnet.harmonize`); adds
        its columns with the prefix ``combat_`` and ``combat_difference`` (ComBat-mega - mega).

    Returns
    -------
    pandas.DataFrame
        ``metric``, ``network``, ``meta_k``, ``meta_model``, ``meta_g``, ``meta_ci_low``,
        ``meta_ci_high``, ``meta_p``, ``meta_i2``, ``meta_tau2``, ``mega_n_studies``,
        ``mega_g``, ``mega_ci_low``, ``mega_ci_high``, ``mega_p``, ``difference``
        (meta - mega), ``same_direction``, ``both_significant`` (p < alpha in both); with
        ``combat_table`` also ``combat_n_studies``, ``combat_g``, ``combat_ci_low``,
        ``combat_ci_high``, ``combat_p``, ``combat_difference``.
    """
    meta = _read_table(meta_table, "meta-analysis")
    mega = _standard_columns(_read_table(mega_table, "mega-analysis"))
    if "g" not in mega and "estimate" in mega:
        mega = mega.rename(columns={"estimate": "g"})
    for name, table in (("meta-analysis", meta), ("mega-analysis", mega)):
        missing = sorted({"metric", "g", "p"} - set(table.columns))
        if missing:
            raise MsnetInputError(f"{name} table lacks column(s) {missing}.")
    mega = mega.reindex(columns=["metric", "n_studies", "g", "ci_low", "ci_high", "p"])
    meta = meta.reindex(columns=["metric", "network", "k", "model", "g", "ci_low", "ci_high",
                                 "p", "i2", "tau2"])
    left = meta.rename(columns={c: f"meta_{c}" for c in meta.columns[2:]})
    right = mega.rename(columns={c: f"mega_{c}" for c in mega.columns[1:]})
    table = left.merge(right, on="metric", how="outer")
    table["difference"] = table["meta_g"] - table["mega_g"]
    table["same_direction"] = np.sign(table["meta_g"]) == np.sign(table["mega_g"])
    table["both_significant"] = (table["meta_p"] < alpha) & (table["mega_p"] < alpha)
    if combat_table is not None:
        combat = _standard_columns(_read_table(combat_table, "ComBat mega-analysis"))
        if "g" not in combat and "estimate" in combat:
            combat = combat.rename(columns={"estimate": "g"})
        missing = sorted({"metric", "g", "p"} - set(combat.columns))
        if missing:
            raise MsnetInputError(f"ComBat mega-analysis table lacks column(s) {missing}.")
        combat = combat.reindex(columns=["metric", "n_studies", "g", "ci_low", "ci_high", "p"])
        table = table.merge(combat.rename(columns={c: f"combat_{c}" for c in combat.columns[1:]}),
                            on="metric", how="left")
        table["combat_difference"] = table["combat_g"] - table["mega_g"]
    write_table(table, out_path)
    return table


def _read_table(table, what):
    if isinstance(table, pd.DataFrame):
        return table.copy()
    try:
        return pd.read_csv(table, sep="\t", na_values=["n/a"])
    except (OSError, pd.errors.ParserError) as err:
        raise MsnetInputError(f"{table}: cannot read the {what} table ({err}).") from err
