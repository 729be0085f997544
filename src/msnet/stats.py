"""Shared statistics for the group, clinical and meta stages.

One place for the linear-model machinery every stage uses:

* :func:`build_design` – a design matrix from a subject table with the covariate policy
  (missing / constant / collinear covariates dropped and recorded; covariates centred within
  study; listwise exclusion of subjects with a missing value);
* :func:`ols` – vectorised ordinary least squares with a t contrast at every column of ``Y``
  (a voxel or a network metric);
* :func:`hedges_g` – two-group standardised mean difference and its variance;
* :func:`fdr_bh`, :func:`confidence_interval`;
* :func:`mixedlm` – a thin wrapper around statsmodels ``MixedLM`` (study random intercept);
* :func:`permuted_glm` – permutation inference (voxel max-t FWE, cluster-size and
  cluster-mass FWE, TFCE) with Freedman–Lane permutations, batched into matrix products;
* :func:`inference_maps`, :func:`cluster_table` – maps and cluster tables from its result.

Why our own permutation engine rather than :func:`nilearn.mass_univariate.permuted_ols`:
nilearn computes one permutation at a time in float64 (all 29 columns of a pooled design
with 25 study indicators) and labels the whole grid 2 x 100 times per permutation for TFCE.
The statistic here is exactly nilearn's (Freedman & Lane 1983: the tested regressor and the
orthonormalised confounds are permuted jointly against the confound-residualised data, which
is algebraically the same as permuting the residuals of the reduced model and refitting the
full model), but batches of permutations share one float32 matrix product, the study
indicators are summed by a compiled scatter-add instead of one product row each, and the
null maxima of cluster size/mass and TFCE come from compiled union-find passes
(:mod:`msnet._permkernels`). Measured side by side, one thread each, on the 4 mm brain
(29,398 voxels) by ``benchmarks/bench_permutation.py`` (two runs on a shared 2-core machine):
at N=2,410, 53–61 ms per permutation for voxel max-t against nilearn's 939–1,010 ms
(17–18x), 57–84 against 1,589–2,146 ms for cluster size and mass (26–28x), 64–76 against
3,734–6,608 ms for TFCE (58–87x: 5,000 permutations in 5.4–6.5 min instead of 5.2–9.2 h);
at N=1000, 12–16x, 32–70x and 73–99x. The unit tests check it against a brute-force
Freedman–Lane refit and against ``permuted_ols`` (observed t, TFCE and cluster maps equal;
null distributions within Monte-Carlo error).

Permutations can be restricted to exchangeability blocks (the group and clinical stages
permute within study by default, ``permute_within_study``: valid when residual variances
differ between sites, and cheaper, see :func:`permuted_glm`), which nilearn does not offer.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy import stats as sps

from msnet.errors import MsnetInputError

LOG = logging.getLogger(__name__)

INFERENCE_DEFAULTS = {
    "n_permutations": 5000,
    "cluster_forming_p": 0.001,
    "cluster_connectivity": 1,
    "tfce": False,
    "two_sided": True,
    "alpha": 0.05,
    "seed": 0,
    "n_jobs": 1,
    "permute_within_study": True,
}
"""Defaults of the voxelwise inference options shared by the group and clinical stages."""


def resolve_options(options: dict | None, defaults: dict, where: str) -> dict:
    """Merge ``options`` over ``defaults``; reject unknown keys.

    Parameters
    ----------
    options : dict or None
        User options (a config section).
    defaults : dict
        Allowed keys and their defaults.
    where : str
        Config section name for the error message.

    Returns
    -------
    dict
        The merged options.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise MsnetInputError(
            f"config section '{where}': unknown option(s) {', '.join(unknown)}. "
            f"Allowed: {', '.join(sorted(defaults))}."
        )
    return {**defaults, **options}


# --------------------------------------------------------------------------- design


@dataclass
class Design:
    """A design matrix built by :func:`build_design`.

    Attributes
    ----------
    X : numpy.ndarray, shape (n, p)
        Intercept, the tested terms, then the covariate columns (centred within study).
    columns : list of str
        Column names of ``X`` (``"intercept"`` first).
    index : pandas.Index
        Rows of the input table used, in the order of ``X``.
    studies : numpy.ndarray of str, shape (n,)
        Study of each row (a single value when no study column was given).
    covariates_used : list of str
        Covariates in the model.
    notes : dict
        Covariate -> why it was dropped or where it was not adjusted for.
    excluded : dict
        Row label -> reason, for rows dropped because of a missing value.
    problem : str or None
        Why the tested terms cannot be estimated (constant or collinear), else None.
    """

    X: np.ndarray
    columns: list
    index: pd.Index
    studies: np.ndarray
    covariates_used: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    excluded: dict = field(default_factory=dict)
    problem: str | None = None

    def col(self, name: str) -> int:
        """Return the column index of ``name``."""
        return self.columns.index(name)

    def with_study_dummies(self) -> tuple[np.ndarray, list]:
        """Return ``X`` with the intercept replaced by one indicator column per study."""
        levels = list(dict.fromkeys(self.studies))
        dummies = (self.studies[:, None] == np.asarray(levels)[None, :]).astype(float)
        X = np.column_stack([dummies, self.X[:, 1:]])
        return X, [f"study[{s}]" for s in levels] + self.columns[1:]


def _covariate_block(data: pd.DataFrame, name: str) -> pd.DataFrame | None:
    """Numeric columns for one covariate: itself if numeric, else k-1 indicators (NaN kept)."""
    if name not in data.columns:
        return None
    values = data[name]
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().sum() == values.notna().sum():
        return pd.DataFrame({name: numeric.astype(float)}, index=data.index)
    levels = sorted(values.dropna().astype(str).unique())
    block = pd.DataFrame(index=data.index)
    for level in levels[1:] or levels:  # one level: a constant column, dropped as constant
        block[f"{name}[{level}]"] = np.where(values.isna(), np.nan, (values == level) * 1.0)
    return block


def build_design(data: pd.DataFrame, terms, covariates=(), study_col: str | None = None,
                 min_residual_df: int = 0) -> Design:
    """Build an OLS/mixed-model design with the covariate policy used everywhere in msnet.

    Policy, applied per study (the whole table is one study when ``study_col`` is None):

    1. rows with a missing tested term are excluded (reason recorded);
    2. a covariate absent from the table or missing for every row of a study is not adjusted
       for in that study; rows with a missing value of a covariate that the study does have
       are excluded (listwise, reason recorded);
    3. a covariate constant within a study (after step 2) is not adjusted for in that study;
    4. covariates are centred within study and set to 0 in studies where they are not
       adjusted for (with study intercepts this adjusts for the covariate within the studies
       that have it; in a single study it simply drops it);
    5. a covariate that adds no rank to the design (collinear with the terms, e.g. sex when
       it coincides with group) is dropped;
    6. a covariate that would leave fewer than ``min_residual_df`` residual degrees of freedom
       is dropped (covariates are tried in the order given), so a tiny study still gives an
       (unadjusted) effect size instead of none: with n = 6 and three covariates, the
       adjusted t would rest on 1 degree of freedom.

    Every drop is recorded in :attr:`Design.notes`. Categorical covariates (e.g. ``sex`` with
    ``M``/``F``) get treatment coding with the alphabetically first level as reference
    (``sex[M]`` = 1 for men, 0 for women).

    Parameters
    ----------
    data : pandas.DataFrame
        One row per subject; tested terms must be numeric columns.
    terms : sequence of str
        Tested regressors (e.g. ``["group"]`` coded MS=1/HC=0, or a clinical variable).
    covariates : sequence of str
        Adjustment covariates (may be absent from ``data``).
    study_col : str, optional
        Column with the study of each row (pooled analyses).
    min_residual_df : int
        Minimum residual degrees of freedom a covariate may leave (rule 6); 0 disables it.

    Returns
    -------
    Design
    """
    keep = pd.Series(True, index=data.index)
    excluded = {}
    for term in terms:
        bad = keep & data[term].isna()
        excluded.update({i: f"missing {term}" for i in data.index[bad]})
        keep &= ~bad
    studies = (data[study_col].astype(str) if study_col
               else pd.Series("all", index=data.index))
    notes, blocks = {}, {}
    for cov in covariates:
        block = _covariate_block(data, cov)
        has = set() if block is None else set(
            studies[keep & block.notna().any(axis=1)].unique())
        if not has:
            notes[cov] = "not in the data" if block is None else "all values missing"
            continue
        bad = keep & studies.isin(has) & block.isna().any(axis=1)
        excluded.update({i: f"missing {cov}" for i in data.index[bad]})
        keep &= ~bad
        blocks[cov] = block
    studies = studies[keep]
    present = list(dict.fromkeys(studies))
    X = [np.ones(int(keep.sum()))] + [data.loc[keep, t].to_numpy(float) for t in terms]
    columns = ["intercept", *terms]
    base = _with_dummies(np.column_stack(X), studies.to_numpy())
    problem = None
    if np.linalg.matrix_rank(base) < base.shape[1]:
        problem = f"{', '.join(terms)} constant or collinear with the study intercepts"
    used = []
    for cov, block in blocks.items():
        centred, unadjusted = _centre_within(block[keep], studies)
        if len(unadjusted) == len(present):
            notes[cov] = "constant" if len(present) == 1 else "constant within every study"
            continue
        trial = np.column_stack([base, centred.to_numpy()])
        if np.linalg.matrix_rank(trial) < trial.shape[1]:
            notes[cov] = "collinear with the other terms"
            continue
        if trial.shape[0] - trial.shape[1] < min_residual_df:
            notes[cov] = (f"would leave {trial.shape[0] - trial.shape[1]} residual degrees of "
                          f"freedom < min_residual_df {min_residual_df}")
            continue
        if unadjusted:
            notes[cov] = f"not adjusted in study {', '.join(unadjusted)} (missing or constant)"
        base = trial
        used.append(cov)
        X.extend(centred.to_numpy().T)
        columns.extend(centred.columns)
    return Design(np.column_stack(X), columns, data.index[keep], studies.to_numpy(),
                  used, notes, excluded, problem)


def _with_dummies(X: np.ndarray, studies: np.ndarray) -> np.ndarray:
    """Replace the intercept (column 0) by study indicators (for rank checks)."""
    levels = list(dict.fromkeys(studies))
    dummies = (studies[:, None] == np.asarray(levels)[None, :]).astype(float)
    return np.column_stack([dummies, X[:, 1:]])


def _centre_within(block: pd.DataFrame, studies: pd.Series):
    """Centre each column within study; zero (and list) studies where it is constant."""
    out = block.copy()
    unadjusted = []
    for s in dict.fromkeys(studies):
        rows = (studies == s).to_numpy()
        sub = block.loc[rows]
        if sub.isna().all().all() or len(sub.drop_duplicates()) <= 1:
            out.loc[rows] = 0.0
            unadjusted.append(s)
        else:
            out.loc[rows] = (sub - sub.mean()).to_numpy()
    return out.astype(float), unadjusted


# --------------------------------------------------------------------------- OLS


@dataclass
class OLSResult:
    """Result of :func:`ols` for one contrast at every column of ``Y``.

    Attributes
    ----------
    beta : numpy.ndarray, shape (p, V)
        All coefficients.
    effect, se, t, p : numpy.ndarray, shape (V,)
        Contrast estimate, its standard error, t and two-sided p.
    sigma : numpy.ndarray, shape (V,)
        Residual standard deviation.
    df : int
        Residual degrees of freedom.
    """

    beta: np.ndarray
    effect: np.ndarray
    se: np.ndarray
    t: np.ndarray
    p: np.ndarray
    sigma: np.ndarray
    df: int


def ols(Y, X, contrast, chunk: int = 8192) -> OLSResult:
    """Fit ``Y = X b + e`` by ordinary least squares at every column and test ``contrast``.

    Vectorised over columns (voxels or metrics) and computed in float64 in chunks of
    ``chunk`` columns. Columns with zero residual variance get t = 0 and p = 1.

    Parameters
    ----------
    Y : array-like, shape (n,) or (n, V)
        Data.
    X : array-like, shape (n, p)
        Full-rank design.
    contrast : array-like, shape (p,)
        Contrast vector.
    chunk : int
        Columns processed at a time (memory).

    Returns
    -------
    OLSResult
    """
    X = np.asarray(X, float)
    Y = np.asarray(Y)
    Y = Y[:, None] if Y.ndim == 1 else Y
    c = np.asarray(contrast, float)
    n, p = X.shape
    rank = np.linalg.matrix_rank(X)
    if rank < p:
        raise ValueError(f"design is rank deficient (rank {rank} < {p} columns)")
    df = n - p
    if df < 1:
        raise ValueError(f"no residual degrees of freedom (n={n}, p={p})")
    pinv = np.linalg.pinv(X)
    c_var = float(c @ pinv @ pinv.T @ c)
    beta = np.empty((p, Y.shape[1]))
    rss = np.empty(Y.shape[1])
    for start in range(0, Y.shape[1], chunk):
        y = np.asarray(Y[:, start:start + chunk], float)
        b = pinv @ y
        r = y - X @ b
        beta[:, start:start + chunk] = b
        rss[start:start + chunk] = np.einsum("ij,ij->j", r, r)
    sigma = np.sqrt(rss / df)
    effect = c @ beta
    se = sigma * np.sqrt(c_var)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, effect / se, 0.0)
    pval = 2.0 * sps.t.sf(np.abs(t), df)
    return OLSResult(beta, effect, se, t, pval, sigma, df)


def confidence_interval(estimate, se, level: float = 0.95, df=None):
    """Return the (low, high) confidence interval: t quantile if ``df`` is given, else normal."""
    q = sps.t.ppf(0.5 + level / 2, df) if df is not None else sps.norm.ppf(0.5 + level / 2)
    estimate, se = np.asarray(estimate, float), np.asarray(se, float)
    return estimate - q * se, estimate + q * se


def hedges_g(d, n1, n2):
    """Return Hedges' g and its variance from Cohen's d of a two-group comparison.

    ``J = 1 - 3 / (4 (n1 + n2) - 9)`` (i.e. ``1 - 3/(4 df - 1)`` with ``df = n1 + n2 - 2``),
    ``g = J d`` and ``var(g) = J^2 (1/n1 + 1/n2 + d^2 / (2 (n1 + n2)))`` (Borenstein et al.
    2009, eqs. 4.18–4.24). These are the two-independent-groups formulas, not the one-sample
    ``t / sqrt(n)`` ones. Obtain ``d`` with :func:`d_from_t` (per study, ``d = t sqrt(1/n1 +
    1/n2)`` from the covariate-adjusted t) or as an adjusted difference over the residual SD.

    Parameters
    ----------
    d : float or array
        Cohen's d (group 1 minus group 2).
    n1, n2 : int
        Group sizes.

    Returns
    -------
    g, var_g : float or array
    """
    d = np.asarray(d, float)
    j = 1.0 - 3.0 / (4.0 * (n1 + n2) - 9.0)
    g = j * d
    var_g = j**2 * (1.0 / n1 + 1.0 / n2 + d**2 / (2.0 * (n1 + n2)))
    return g, var_g


def d_from_t(t, n1, n2):
    """Return Cohen's d from a two-group t: ``d = t sqrt(1/n1 + 1/n2)``.

    With covariates in the model this is ``(beta / sigma) sqrt(1 - R²)`` (``R²`` of the group
    indicator regressed on the covariates), i.e. it shrinks towards 0 when the groups differ
    in a covariate; :func:`g_from_beta` does not.
    """
    return np.asarray(t, float) * np.sqrt(1.0 / n1 + 1.0 / n2)


def hedges_j(df):
    """Exact small-sample correction ``J(m) = Γ(m/2) / (sqrt(m/2) Γ((m-1)/2))`` (Hedges 1981).

    ``J(m) E[1/σ̂] = 1/σ`` for ``σ̂²`` with ``m`` degrees of freedom, so ``J β̂ / σ̂`` is
    unbiased for ``β / σ``. ``1 - 3 / (4m - 1)`` approximates it (to 1e-5 at m = 20).
    NaN for ``m < 2``.
    """
    from scipy.special import gammaln

    m = np.asarray(df, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        j = np.exp(gammaln(m / 2) - 0.5 * np.log(m / 2) - gammaln((m - 1) / 2))
    return np.where(m >= 2, j, np.nan)


def g_from_beta(beta, sigma, c, df):
    """Standardised covariate-adjusted group difference: ``g = J β̂ / σ̂`` and its variance.

    ``β̂`` is the adjusted group difference, ``σ̂`` the residual SD with ``df = m`` degrees of
    freedom and ``c`` the contrast's element of ``(X'X)^-1`` (``var(β̂) = c σ²``; ``c = 1/n1 +
    1/n2`` without covariates, larger when the groups differ in a covariate). Because β̂ is
    normal and independent of ``σ̂² ~ σ² χ²_m / m``, with ``δ = β/σ`` and ``J`` of
    :func:`hedges_j`:

    * ``E[g] = δ`` (unbiased, whatever the covariate imbalance; this is the quantity the
      pooled mega-analysis estimates, so meta and mega agree in expectation);
    * ``var(g) = J² m / (m - 2) (c + δ²) - δ²`` (from ``E[1/σ̂²] = m / ((m - 2) σ²)``);
    * its unbiased estimator, returned here, replaces δ² by its unbiased estimate
      ``g² (m - 2) / (m J²) - c``: ``var(g) = c + (1 - (m - 2) / (m J²)) g²``
      (``≈ c + g² / (2m)``; metafor ``escalc(measure="SMD", vtype="UB")`` is the case
      without covariates). NaN for ``m < 3`` (the variance is infinite).

    Parameters
    ----------
    beta, sigma : float or array
        Adjusted difference and residual SD (``sigma <= 0`` gives NaN).
    c : float or array
        ``var(β̂) / σ²``.
    df : int or array
        Residual degrees of freedom of ``σ̂``.

    Returns
    -------
    d, g, var_g : float or array
        ``d = β̂ / σ̂`` (Cohen's d, uncorrected), Hedges' g and its variance.
    """
    beta, sigma = np.asarray(beta, float), np.asarray(sigma, float)
    m = np.asarray(df, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(sigma > 0, beta / np.where(sigma > 0, sigma, 1.0), np.nan)
        j = hedges_j(m)
        g = j * d
        var_g = np.where(m >= 3, c + (1.0 - (m - 2.0) / (m * j**2)) * g**2, np.nan)
    return d, g, var_g


def fdr_bh(p):
    """Return Benjamini–Hochberg q-values (adjusted p); NaN entries stay NaN.

    Uses :func:`scipy.stats.false_discovery_control` on the finite entries.
    """
    p = np.asarray(p, float)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = sps.false_discovery_control(np.clip(p[ok], 0.0, 1.0), method="bh")
    return q


def standardized_beta(beta, x, y, studies):
    """Return ``beta * SD_w(x) / SD_w(y)`` with SDs pooled within study (ordinary SD for one)."""
    x, y = _within(np.asarray(x, float), studies), _within(np.asarray(y, float), studies)
    ddof = len(set(studies))
    sx = np.sqrt(np.sum(x**2) / (len(x) - ddof))
    sy = np.sqrt(np.sum(y**2) / (len(y) - ddof))
    return beta * sx / sy if sy > 0 else np.nan


def _within(v: np.ndarray, studies) -> np.ndarray:
    """Subtract the study mean from each value."""
    s = pd.Series(v)
    return (s - s.groupby(np.asarray(studies)).transform("mean")).to_numpy()


# --------------------------------------------------------------------------- mixed model


MIXEDLM_OPTIMIZERS = (None, ("powell", "lbfgs"), ("nm", "lbfgs"))
"""Optimiser sequences tried in turn by :func:`mixedlm` until one converges (``None`` is
statsmodels' default bfgs -> lbfgs -> cg; powell then lbfgs is its documented fallback)."""


def _optimizer_name(method) -> str:
    return "bfgs/lbfgs/cg" if method is None else "/".join(method)


def mixedlm(y, X, groups, tested: int, level: float = 0.95) -> dict:
    """Fit a linear mixed model with a random intercept per group (statsmodels ``MixedLM``).

    REML fit. statsmodels' default gradient optimisers (bfgs, then lbfgs, then cg) sometimes
    stop short of the REML optimum (a flat likelihood near a small random-intercept variance)
    and flag ``converged=False``; the fit is then repeated with the other optimiser sequences
    of :data:`MIXEDLM_OPTIMIZERS` (Powell's derivative-free search, then lbfgs, reaches it)
    and the converged fit with the highest restricted log-likelihood is kept; ``note`` says
    which optimiser gave it. When none converges the highest-likelihood fit is returned with
    ``converged=False``. A fit that fails outright is reported (``converged=False`` and the
    message in ``note``) instead of raising, so one bad metric does not stop a stage.

    Parameters
    ----------
    y : array-like, shape (n,)
    X : array-like, shape (n, p)
        Fixed-effects design including the intercept (column 0).
    groups : array-like, shape (n,)
        Cluster labels (study).
    tested : int
        Column of ``X`` whose coefficient is reported.
    level : float
        Confidence level (normal-theory Wald interval, as statsmodels reports).

    Returns
    -------
    dict
        ``beta, se, z, p, ci_low, ci_high, intercept, scale`` (residual variance),
        ``tau2`` (random-intercept variance), ``converged``, ``optimizer`` (the sequence
        that gave the fit) and ``note`` (warnings of that fit; the optimisers that failed).
    """
    import statsmodels.api as sm

    out = dict.fromkeys(("beta", "se", "z", "p", "ci_low", "ci_high", "intercept", "scale",
                         "tau2"), np.nan)
    model = sm.MixedLM(np.asarray(y, float), np.asarray(X, float), groups=np.asarray(groups))
    fits, errors = [], []
    for method in MIXEDLM_OPTIMIZERS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fit = model.fit(reml=True, method=None if method is None else list(method))
            except (np.linalg.LinAlgError, ValueError) as exc:
                errors.append(f"{_optimizer_name(method)} failed: {exc}")
                continue
        fits.append((bool(fit.converged), float(fit.llf), method, fit, caught))
        if fit.converged:
            break
    if not fits:
        return {**out, "converged": False, "optimizer": "", "note": "fit failed: "
                + "; ".join(errors)}
    converged, _, method, fit, caught = max(fits, key=lambda f: (f[0], f[1]))
    fe = np.asarray(fit.fe_params)
    with warnings.catch_warnings(record=True) as caught_se:
        warnings.simplefilter("always")
        se = np.asarray(fit.bse_fe, float)
    tau2, scale = float(np.asarray(fit.cov_re)[0, 0]), float(fit.scale)
    gls_se = not np.isfinite(se[tested])
    if gls_se:
        # statsmodels inverts the full observed Hessian, which is singular when the random
        # intercept variance sits on the boundary (0): use the REML fixed-effect covariance
        # (X' V^-1 X)^-1 at the estimates instead (what lme4/nlme report).
        se = _gls_fixed_se(X, groups, tau2, scale)
    lo, hi = confidence_interval(fe[tested], se[tested], level)
    notes = sorted({str(w.message).split("\n")[0] for w in [*caught, *caught_se]
                    if not str(w.message).startswith("Retrying MixedLM")
                    and not (converged and str(w.message).startswith(_SM_INTERMEDIATE))
                    and not (gls_se and "invalid value" in str(w.message))})
    if gls_se:
        notes.append("SE from (X'V^-1X)^-1 (Hessian singular at the boundary)")
    failed = [_optimizer_name(f[2]) for f in fits if not f[0]] + errors
    if failed and converged:
        notes.insert(0, f"converged with {_optimizer_name(method)} after "
                        f"{', '.join(failed)} did not")
    elif not converged:
        notes.insert(0, "REML did not converge with any optimiser ("
                        f"{', '.join(failed)}); highest-likelihood estimate kept")
    return {
        "beta": fe[tested], "se": se[tested], "z": fe[tested] / se[tested],
        "p": float(2 * sps.norm.sf(abs(fe[tested] / se[tested]))),
        "ci_low": float(lo), "ci_high": float(hi), "intercept": fe[0],
        "scale": scale, "tau2": tau2,
        "converged": converged, "optimizer": _optimizer_name(method), "note": "; ".join(notes),
    }


_SM_INTERMEDIATE = ("Maximum Likelihood optimization failed to converge",
                    "MixedLM optimization failed")
"""statsmodels warnings about an optimiser of a sequence that a later one recovered from
(dropped from ``note`` when the kept fit converged)."""


def _gls_fixed_se(X, groups, tau2: float, scale: float) -> np.ndarray:
    """SEs of the fixed effects of a random-intercept model: ``sqrt(diag((X' V^-1 X)^-1))``
    with ``V = scale I + tau2 Z Z'`` (Sherman-Morrison per group)."""
    X = np.asarray(X, float)
    _, idx = np.unique(np.asarray(groups), return_inverse=True)
    counts = np.bincount(idx)
    shrink = (tau2 / (scale + tau2 * counts))[idx]
    sums = np.stack([np.bincount(idx, weights=col, minlength=counts.size) for col in X.T], 1)
    vinv_x = (X - shrink[:, None] * sums[idx]) / scale
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.diag(np.linalg.pinv(X.T @ vinv_x)))


def fit_pooled(y, design: Design, term: str, level: float = 0.95) -> dict:
    """Pooled (mega-analysis) fit of ``term``: MixedLM with a random intercept per study.

    With a single study the random intercept is not estimable and OLS is used instead
    (``method`` says which; ``z`` then holds the t statistic and the CI uses the t quantile).

    Returns
    -------
    dict
        As :func:`mixedlm` plus ``method``.
    """
    k = design.col(term)
    if len(set(design.studies)) >= 2:
        return {**mixedlm(y, design.X, design.studies, k, level), "method": "MixedLM"}
    c = np.eye(design.X.shape[1])[k]
    r = ols(y, design.X, c)
    lo, hi = confidence_interval(r.effect[0], r.se[0], level, r.df)
    return {"beta": r.effect[0], "se": r.se[0], "z": r.t[0], "p": r.p[0], "ci_low": float(lo),
            "ci_high": float(hi), "intercept": r.beta[0, 0], "scale": float(r.sigma[0] ** 2),
            "tau2": np.nan, "converged": True, "optimizer": "", "note": "one study: OLS",
            "method": "OLS"}


def partial_regression(y, X, k: int):
    """Return (x residual, y residual) of column ``k`` and ``y`` on the other columns of ``X``.

    By the Frisch–Waugh–Lovell theorem the slope of ``y_res`` on ``x_res`` equals the OLS
    coefficient of column ``k`` in the full model (the added-variable plot).
    """
    X = np.asarray(X, float)
    others = np.delete(X, k, axis=1)

    def resid(v):
        return v - others @ np.linalg.lstsq(others, v, rcond=None)[0]

    return resid(X[:, k]), resid(np.asarray(y, float))


# --------------------------------------------------------------------------- permutation


@dataclass
class ClusterResult:
    """Observed supra-threshold clusters and their cluster-size and cluster-mass FWE p-values.

    Attributes
    ----------
    threshold_t : float
        Cluster-forming |t| threshold.
    labels : numpy.ndarray of int, shape (V,)
        Cluster number of each voxel (1 = largest), 0 outside clusters.
    sizes, signs, p_fwe : numpy.ndarray, shape (n_clusters,)
        Size (voxels), sign (+1/-1) and cluster-size FWE p of each cluster.
    h0_max_size : numpy.ndarray, shape (n_perm,)
        Null distribution of the maximum cluster size.
    masses, p_fwe_mass : numpy.ndarray, shape (n_clusters,), optional
        Mass ``sum(|t| - threshold_t)`` over the cluster and its cluster-mass FWE p (as
        nilearn ``permuted_ols``'s ``mass``).
    h0_max_mass : numpy.ndarray, shape (n_perm,), optional
        Null distribution of the maximum cluster mass.
    """

    threshold_t: float
    labels: np.ndarray
    sizes: np.ndarray
    signs: np.ndarray
    p_fwe: np.ndarray
    h0_max_size: np.ndarray
    masses: np.ndarray | None = None
    p_fwe_mass: np.ndarray | None = None
    h0_max_mass: np.ndarray | None = None


@dataclass
class PermutationResult:
    """Result of :func:`permuted_glm` (arrays over the V voxels unless said otherwise).

    Attributes
    ----------
    t, p : numpy.ndarray
        Observed t and parametric p (two-sided, or upper tail when one-sided).
    effect, sigma : numpy.ndarray
        Coefficient of the tested regressor and residual SD.
    df : int
        Residual degrees of freedom.
    n_perm : int
        Number of permutations.
    p_fwe : numpy.ndarray
        Voxel-level max-t FWE p (NaN when ``n_perm`` is 0).
    h0_max_t : numpy.ndarray, shape (n_perm,)
        Null distribution of the maximum (|)t(|).
    clusters : ClusterResult or None
    tfce, p_tfce_fwe, h0_max_tfce : numpy.ndarray or None
        Observed TFCE, its FWE p, and the null maximum |TFCE|.
    """

    t: np.ndarray
    p: np.ndarray
    effect: np.ndarray
    sigma: np.ndarray
    df: int
    n_perm: int
    p_fwe: np.ndarray
    h0_max_t: np.ndarray
    clusters: ClusterResult | None = None
    tfce: np.ndarray | None = None
    p_tfce_fwe: np.ndarray | None = None
    h0_max_tfce: np.ndarray | None = None


class VoxelGrid:
    """Connected components and TFCE of maps given over the voxels of a 3-D mask.

    Parameters
    ----------
    mask : numpy.ndarray of bool, shape (X, Y, Z)
        Voxels of the 1-D maps, in C order.
    connectivity : int
        1 (faces, 6 neighbours, nilearn's choice), 2 (edges, 18) or 3 (corners, 26).
    """

    def __init__(self, mask, connectivity: int = 1):
        mask = np.asarray(mask, bool)
        box = ndimage.find_objects(mask.astype(np.int8))[0]
        self.mask = mask[box]
        self.structure = ndimage.generate_binary_structure(3, connectivity)
        self._vol = np.zeros(self.mask.shape, bool)
        self._neighbours = None

    @property
    def neighbours(self) -> np.ndarray:
        """``(V, k)`` indices of each voxel's in-mask neighbours (-1 outside the mask)."""
        if self._neighbours is None:
            offsets = np.argwhere(self.structure) - 1
            offsets = offsets[np.any(offsets != 0, axis=1)]
            index = np.full(np.array(self.mask.shape) + 2, -1, np.int32)
            index[1:-1, 1:-1, 1:-1][self.mask] = np.arange(int(self.mask.sum()))
            coords = np.argwhere(self.mask) + 1
            self._neighbours = np.ascontiguousarray(
                np.stack([index[tuple((coords + o).T)] for o in offsets], axis=1))
        return self._neighbours

    def components(self, supra) -> tuple[np.ndarray, int]:
        """Label connected supra-threshold voxels; return (labels over voxels, count)."""
        self._vol[self.mask] = supra
        labels, n = ndimage.label(self._vol, self.structure)
        return labels[self.mask], n

    def clusters(self, t, threshold: float, two_sided: bool):
        """Return (labels, sizes, signs): positive clusters (t > thr) then negative ones."""
        labels = np.zeros(t.shape, np.int64)
        sizes, signs = [], []
        for sign in (1, -1) if two_sided else (1,):
            lab, n = self.components(sign * t > threshold)
            if n:
                labels[lab > 0] = lab[lab > 0] + len(sizes)
                sizes.extend(np.bincount(lab, minlength=n + 1)[1:])
                signs.extend([sign] * n)
        return labels, np.asarray(sizes, np.int64), np.asarray(signs, np.int64)

    def max_cluster_size(self, t, threshold: float, two_sided: bool) -> int:
        """Return the largest cluster size (either sign when two-sided)."""
        return int(self.null_maxima(np.asarray(t, float)[None], two_sided, threshold)[0][0])

    def null_maxima(self, T, two_sided: bool, threshold: float | None = None,
                    tfce: bool = False, E: float = 0.5, H: float = 2.0, n_steps: int = 100):
        """Largest cluster size and mass and largest |TFCE| of each row of ``T``.

        The same quantities as :meth:`clusters` and ``abs(tfce(t)).max()`` (equal to
        floating-point rounding), computed by compiled union-find passes
        (:mod:`msnet._permkernels`) instead of labelling the grid at every TFCE step: only the
        maximum TFCE is needed for the FWE null, and it is reached at the peak of a component.

        Parameters
        ----------
        T : numpy.ndarray, shape (B, V)
            Maps (rows).
        two_sided : bool
        threshold : float, optional
            Cluster-forming threshold (strict ``>``); None skips clusters.
        tfce : bool
            Also the maximum |TFCE| (``E``, ``H``, ``n_steps`` as :meth:`tfce`).

        Returns
        -------
        max_size : numpy.ndarray of int, shape (B,)
        max_mass, max_tfce : numpy.ndarray, shape (B,)
        """
        from msnet import _permkernels as kern

        T = np.ascontiguousarray(T, dtype=float)
        out = (np.zeros(len(T), np.int64), np.zeros(len(T)), np.zeros(len(T)))
        kern.null_maxima(T, bool(two_sided), -1.0 if threshold is None else float(threshold),
                         threshold is not None, int(n_steps) if tfce else 0, float(E),
                         float(H), self.neighbours, *out)
        return out

    def tfce(self, t, two_sided: bool, E: float = 0.5, H: float = 2.0, n_steps: int = 100):
        """Threshold-free cluster enhancement of a t map (as nilearn/fslmaths compute it).

        ``TFCE(v) = sum_h e(h)^E h^H`` over ``n_steps`` equal thresholds from ``max|t|/n_steps``
        to ``max|t|`` (no ``dh`` factor, as fslmaths and nilearn); negative values are enhanced
        separately and keep their sign when ``two_sided``. Written here because nilearn's
        implementation is private and works on 4-D images only. This is the whole map, step by
        step (nilearn's order of operations, so the observed map is nilearn's to rounding); the
        permutation null only needs the maximum, which :meth:`null_maxima` computes far faster.
        """
        out = np.zeros(t.shape, float)
        top = np.nanmax(np.abs(t)) if two_sided else np.nanmax(t)
        if not top > 0:
            return out
        steps = np.linspace(0.0, top, n_steps + 1)[1:]
        for sign in (1, -1) if two_sided else (1,):
            x = sign * t
            for h in steps:
                supra = x >= h
                if not supra.any():
                    break
                lab, n = self.components(supra)
                size = np.bincount(lab, minlength=n + 1).astype(float)
                size[0] = 0.0
                out += sign * size[lab] ** E * h**H
        return out


def draw_permutations(rng, n_perm: int, n: int, blocks=None) -> np.ndarray:
    """Return ``(n_perm, n)`` random permutations of ``range(n)``, within ``blocks`` if given."""
    if blocks is None:
        return rng.permuted(np.tile(np.arange(n), (n_perm, 1)), axis=1)
    codes = np.unique(np.asarray(blocks), return_inverse=True)[1]
    keys = rng.random((n_perm, n))
    order = np.lexsort((keys, np.broadcast_to(codes, (n_perm, n))), axis=-1)
    perm = np.empty_like(order)
    perm[:, np.argsort(codes, kind="stable")] = order
    return perm


def _orthonormal_basis(Z: np.ndarray, tol: float | None = None) -> np.ndarray:
    """Orthonormal basis of the column space of ``Z`` (SVD, rank-revealing).

    Singular values below ``tol`` (default: ``max(s) * max(Z.shape) * eps``) are dropped.
    """
    if Z is None or Z.size == 0:
        return np.zeros((0 if Z is None else Z.shape[0], 0))
    U, s, _ = np.linalg.svd(Z, full_matrices=False)
    tol = s.max() * max(Z.shape) * np.finfo(float).eps if tol is None else tol
    return U[:, s > tol]


GROUP_SUMS_MIN = 6
"""Fewest permuted indicator groups summed by the scatter-add; fewer stay dense product rows
(a few rows cost less than one pass over the data; not benchmarked, results are the same)."""


def _in_span(Q: np.ndarray, B: np.ndarray) -> bool:
    """Whether every column of ``B`` lies in the column space of the orthonormal ``Q``."""
    return bool(np.allclose(B - Q @ (Q.T @ B), 0.0, atol=1e-8))


def _indicator_partition(Z: np.ndarray, Q: np.ndarray, blocks) -> np.ndarray | None:
    """Group codes of a partition of the subjects whose indicators lie in the confound space.

    The exchangeability blocks when their indicators are confounds; otherwise disjoint 0/1
    confound columns (study dummies; smallest first, so a sex dummy that overlaps them is
    left out) completed by the remaining subjects when the intercept is in the confound
    space (an intercept alone gives one group). None when there is no such partition.
    """
    n = Q.shape[0]
    if blocks is not None:
        codes = np.unique(np.asarray(blocks), return_inverse=True)[1].ravel()
        if _in_span(Q, np.eye(codes.max() + 1)[codes]):
            return codes
    Z = np.asarray(Z, float).reshape(n, -1)
    binary = [c.astype(bool) for c in Z.T if c.any() and np.all((c == 0) | (c == 1))]
    covered = np.zeros(n, bool)
    groups = []
    for member in sorted(binary, key=np.sum):
        if not (member & covered).any():
            groups.append(member)
            covered |= member
    if not covered.all():
        if not _in_span(Q, np.ones((n, 1))):
            return None
        groups.append(~covered)
    return np.argmax(np.column_stack(groups), axis=1)


def _null_design(Z: np.ndarray, Q: np.ndarray, blocks):
    """Split the confound space for the permutation loop into dense and indicator parts.

    ``||(P'Q)' E||^2``, the part of the permuted projection that each permutation must
    recompute, is the same for any orthonormal basis of the confound space. With a partition
    ``B`` of the subjects among the confounds (:func:`_indicator_partition`), the basis is
    taken as the normalised indicators plus ``Qc``, a basis of the rest: the indicator part is
    ``sum_s (sum of E over the subjects the permutation puts in group s)^2 / n_s``, a
    scatter-add (:func:`msnet._permkernels.group_projection`), and it is 0 when the
    permutations keep every subject in its group (an intercept under any permutation; study
    indicators under within-study permutations: E sums to 0 within each study).

    Returns
    -------
    Qc : numpy.ndarray, shape (n, qc)
        Dense part of the basis (permuted and multiplied with E).
    codes : numpy.ndarray of int or None
        Group of each subject when the indicator part must be computed, else None.
    """
    codes = _indicator_partition(Z, Q, blocks)
    if codes is None:
        return Q, None
    n_groups = int(codes.max()) + 1
    invariant = n_groups == 1
    if blocks is not None and not invariant:
        block = np.unique(np.asarray(blocks), return_inverse=True)[1].ravel()
        invariant = all(np.unique(codes[block == b]).size == 1 for b in np.unique(block))
    if not invariant and n_groups < GROUP_SUMS_MIN:
        if not _in_span(Q, np.ones((Q.shape[0], 1))):
            return Q, None
        codes, n_groups, invariant = np.zeros_like(codes), 1, True
    Qb = np.eye(n_groups)[codes]
    Qb /= np.sqrt(Qb.sum(axis=0))
    Qc = _orthonormal_basis(Q - Qb @ (Qb.T @ Q), tol=1e-8)
    return Qc, None if invariant else codes


class _NullT:
    """Freedman–Lane t maps for batches of permutations (see :func:`permuted_glm`).

    One float32 product ``(B (1 + qc), n) @ (n, V)`` gives the numerators and the dense part
    of the permuted projection; the study-indicator part, when the permutations move subjects
    between studies, is a scatter-add over the subjects (compiled, on ``n_jobs`` threads).
    """

    SUB = 8
    """Permutations whose group sums are accumulated together (cache-sized accumulators)."""

    def __init__(self, E, xt, Qc, codes, ss_tot, sxx: float, df: int, pool, n_jobs: int):
        self.E32 = np.ascontiguousarray(E, dtype=np.float32)
        self.A = np.ascontiguousarray(np.column_stack([xt, Qc]), dtype=np.float32)
        self.codes = codes
        self.ss_tot, self.sxx, self.df = np.ascontiguousarray(ss_tot, float), sxx, df
        self.pool, self.n_jobs = pool, n_jobs
        from msnet import _permkernels as kern

        self.kern = kern
        if codes is not None:
            counts = np.bincount(codes)
            self.n_groups = counts.size
            self.inv_size = 1.0 / counts.astype(float)

    @property
    def rows(self) -> int:
        """Rows of the matrix product per permutation."""
        return self.A.shape[1]

    def __call__(self, idx: np.ndarray, two_sided: bool, maps: bool):
        """Null maxima (B,) of the t maps of permutations ``idx`` (B, n), and the maps
        (B, V) float64 when ``maps`` (for clusters and TFCE), else None."""
        b, n = idx.shape
        V = self.E32.shape[1]
        prod = (self.A[idx].transpose(0, 2, 1).reshape(b * self.rows, n) @ self.E32)
        prod = prod.reshape(b, self.rows, V)
        group = (self._group_projection(idx) if self.codes is not None
                 else np.zeros((0, V), np.float32))
        t = np.empty((b if maps else 0, V))
        top = np.empty(b)
        parts = np.linspace(0, b, min(self.n_jobs, b) + 1).astype(int)
        _map(self.pool, lambda k: self.kern.freedman_lane_t(
            prod, group, self.ss_tot, self.sxx, self.df, two_sided, t, top, parts[k],
            parts[k + 1]), range(parts.size - 1))
        return top, (t if maps else None)

    def _group_projection(self, idx: np.ndarray) -> np.ndarray:
        """``sum_s (sum_{i: codes[idx[i]] = s} E_i)^2 / n_s`` per permutation and voxel."""
        b, n = idx.shape
        V = self.E32.shape[1]
        sub = self.SUB
        n_sub = -(-b // sub)
        labels = np.zeros((n_sub * sub, n), np.uint64)
        labels[:b] = self.codes[idx]
        labels = labels.reshape(n_sub, sub, n).transpose(0, 2, 1)
        offsets = np.ascontiguousarray(
            (labels + np.arange(sub, dtype=np.uint64) * np.uint64(self.n_groups))
            * np.uint64(self.kern.CHUNK))
        out = np.empty((n_sub * sub, V), np.float32)
        chunks = -(-V // self.kern.CHUNK)
        edges = [min(V, self.kern.CHUNK * (chunks * k // self.n_jobs))
                 for k in range(self.n_jobs + 1)]

        def run(k):
            self.kern.group_projection(self.E32, offsets, self.inv_size, out, edges[k],
                                       edges[k + 1], self.n_groups)

        _map(self.pool, run, range(self.n_jobs))
        return out[:b]


def _map(pool, fn, items) -> list:
    """``[fn(x) for x in items]`` on the thread pool when there is one."""
    return list(pool.map(fn, items)) if pool is not None else [fn(x) for x in items]


def cluster_threshold(cluster_forming_p: float, df: int, two_sided: bool) -> float:
    """Return the t threshold of a cluster-forming p (two-sided: ``p/2`` in each tail)."""
    return float(sps.t.isf(cluster_forming_p / 2 if two_sided else cluster_forming_p, df))


def _null_p(observed, h0) -> np.ndarray:
    """Return ``(1 + #{h0 >= observed}) / (1 + n_perm)`` (the original counts as one)."""
    h0 = np.sort(np.asarray(h0))
    count = h0.size - np.searchsorted(h0, observed, side="left")
    return (1.0 + count) / (1.0 + h0.size)


def permuted_glm(Y, tested, confounds, *, n_perm: int = 5000, seed=0, two_sided: bool = True,
                 mask=None, cluster_forming_p: float | None = None, connectivity: int = 1,
                 tfce: bool = False, blocks=None, n_jobs: int = 1,
                 batch_bytes: int = 2**28, graph=None,
                 cluster_threshold_t: float | None = None) -> PermutationResult:
    """Permutation inference for one regressor of a mass-univariate GLM (Freedman–Lane).

    Model ``Y = x b + Z c + e`` at every voxel. With ``Q`` an orthonormal basis of ``Z``,
    ``x~ = (I - QQ')x`` and ``E = (I - QQ')Y``, a permutation ``P`` gives the Freedman–Lane
    statistic of the refitted full model on ``Y* = QQ'Y + P E``::

        num = (P'x~)' E,   rss = ||E||^2 - ||(P'Q)' E||^2 - num^2 / x~'x~,
        t = num / sqrt(x~'x~ * rss / (n - rank(Z) - 1))

    (identical to nilearn ``permuted_ols``, which permutes ``x~`` and ``Q`` jointly). A batch
    of B permutations costs one ``(B (q+1), n) @ (n, V)`` product in float32, where the study
    indicators among the confounds do not count in ``q``: their part of ``||(P'Q)' E||^2`` is
    a sum of E over the subjects each permutation puts in each study (a compiled scatter-add
    whose cost does not grow with the number of studies), and it is 0 under within-study
    permutations. Voxel-level FWE uses the maximum |t| (or max t when one-sided) over voxels
    per permutation; cluster-level FWE the maximum cluster size and mass (clusters of
    t > thr and of t < -thr formed separately, the null maximum taken over both signs); TFCE
    the maximum |TFCE|. The null cluster and TFCE maxima come from compiled union-find passes
    (:meth:`VoxelGrid.null_maxima`), not from labelling the grid at every TFCE step. p-values
    count the original labelling: ``(1 + #{null >= observed}) / (1 + n_perm)``.

    Parameters
    ----------
    Y : array-like, shape (n, V)
        Data (subjects x voxels).
    tested : array-like, shape (n,)
        Tested regressor.
    confounds : array-like, shape (n, q)
        Nuisance regressors, including the intercept or study indicators (not added here).
    n_perm : int
        Number of permutations (0: parametric results only).
    seed : int or numpy.random.Generator
        Seed of ``numpy.random.default_rng``.
    two_sided : bool
        Two-sided test on |t| (default); otherwise the upper tail only (flip ``tested`` for
        the lower tail).
    mask : array-like of bool, shape (X, Y, Z), optional
        Grid of the V voxels (C order); needed for cluster inference and TFCE.
    cluster_forming_p : float, optional
        Cluster-forming parametric p (two-sided when ``two_sided``); None skips clusters.
    connectivity : int
        Cluster connectivity, 1 (6-neighbour, nilearn's), 2 (18) or 3 (26).
    tfce : bool
        Also compute TFCE and its FWE p.
    blocks : array-like, shape (n,), optional
        Exchangeability blocks; subjects are only permuted within their block (restricted
        exchangeability for heteroscedastic sites). When the block indicators are among the
        confounds (study blocks with study indicators) their part of the projection is
        constant and skipped.
    n_jobs : int
        Threads: BLAS threads of the matrix products, and threads of the compiled
        scatter-add, cluster and TFCE passes.
    batch_bytes : int
        Memory budget of one batch of permutations.
    graph : object, optional
        What forms the clusters instead of the voxel grid of ``mask``: any object with the
        :class:`VoxelGrid` methods ``clusters(t, threshold, two_sided)`` and
        ``null_maxima(T, two_sided, threshold)`` over the V columns of ``Y``. The
        Network-Based Statistic passes the graph of the matrix edges
        (:class:`msnet.nbs.EdgeGraph`: components of supra-threshold edges that share a node).
    cluster_threshold_t : float, optional
        Cluster-forming threshold on t itself (on |t| when two-sided) instead of
        ``cluster_forming_p`` (the NBS primary threshold).

    Returns
    -------
    PermutationResult
    """
    from threadpoolctl import threadpool_limits

    Y = np.asarray(Y)
    n, V = Y.shape
    x = np.asarray(tested, float)
    Z = np.asarray(confounds, float)
    Q = _orthonormal_basis(Z)
    q = Q.shape[1]
    df = n - q - 1
    if df < 1:
        raise ValueError(f"no residual degrees of freedom (n={n}, rank of confounds {q})")
    xt = x - Q @ (Q.T @ x)
    sxx = float(xt @ xt)
    if sxx <= 1e-12 * max(1.0, float(x @ x)):
        raise ValueError("tested regressor is collinear with the confounds")
    E = np.asarray(Y, float)
    E = E - Q @ (Q.T @ E)
    ss_tot = np.einsum("ij,ij->j", E, E)
    num0 = xt @ E
    rss0 = np.maximum(ss_tot - num0**2 / sxx, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = np.where(rss0 > 0, num0 / np.sqrt(sxx * rss0 / df), 0.0)
    p0 = 2 * sps.t.sf(np.abs(t0), df) if two_sided else sps.t.sf(t0, df)
    res = PermutationResult(t=t0, p=p0, effect=num0 / sxx, sigma=np.sqrt(rss0 / df), df=df,
                            n_perm=int(n_perm), p_fwe=np.full(V, np.nan),
                            h0_max_t=np.zeros(0))
    grid = graph if graph is not None else (
        VoxelGrid(mask, connectivity) if mask is not None else None)
    if (cluster_forming_p is not None or cluster_threshold_t is not None or tfce) \
            and grid is None:
        raise ValueError("cluster inference and TFCE need the voxel grid (mask)")
    thr = (float(cluster_threshold_t) if cluster_threshold_t is not None
           else cluster_threshold(cluster_forming_p, df, two_sided) if cluster_forming_p
           else None)
    if tfce:
        res.tfce = grid.tfce(t0, two_sided)
    if n_perm <= 0:
        return res

    rng = np.random.default_rng(seed)
    h0_t, h0_size, h0_mass, h0_tfce = (np.empty(n_perm) for _ in range(4))
    Qc, codes = _null_design(Z, Q, blocks)
    del Y
    n_jobs = max(1, int(n_jobs))
    pool = None
    if n_jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(n_jobs)
    null_t = _NullT(E, xt, Qc, codes, ss_tot, sxx, df, pool, n_jobs)
    del E
    batch = int(np.clip(batch_bytes // (8 * (null_t.rows + 2) * V), 1, n_perm))
    done = 0
    from msnet.logs import Progress

    progress = Progress(LOG, f"permutations ({V} voxels, n = {n})", n_perm)
    try:
        with threadpool_limits(limits=n_jobs, user_api="blas"):
            while done < n_perm:
                b = min(batch, n_perm - done)
                h0_t[done:done + b], t = null_t(draw_permutations(rng, b, n, blocks),
                                                two_sided, thr is not None or tfce)
                if thr is not None or tfce:
                    parts = np.array_split(np.arange(b), min(n_jobs, b))
                    found = _map(pool, lambda rows: grid.null_maxima(
                        t[rows], two_sided, thr, tfce), parts)
                    for rows, (size, mass, top) in zip(parts, found):
                        h0_size[done + rows], h0_mass[done + rows] = size, mass
                        h0_tfce[done + rows] = top
                done += b
                progress.update(done)
    finally:
        if pool is not None:
            pool.shutdown()
    res.h0_max_t = h0_t
    res.p_fwe = _null_p(np.abs(t0) if two_sided else t0, h0_t)
    if thr is not None:
        res.clusters = _observed_clusters(grid, t0, thr, two_sided, h0_size, h0_mass)
    if tfce:
        res.h0_max_tfce = h0_tfce
        res.p_tfce_fwe = _null_p(np.abs(res.tfce), h0_tfce)
    return res


def _observed_clusters(grid: VoxelGrid, t, thr: float, two_sided: bool, h0,
                       h0_mass=None) -> ClusterResult:
    """Label the observed clusters (largest first) and attach their FWE p-values."""
    labels, sizes, signs = grid.clusters(t, thr, two_sided)
    order = np.argsort(-sizes, kind="stable")
    relabel = np.zeros(sizes.size + 1, np.int64)
    relabel[order + 1] = np.arange(1, sizes.size + 1)
    labels = relabel[labels]
    masses = np.bincount(labels, np.abs(t) - thr, minlength=sizes.size + 1)[1:]
    return ClusterResult(thr, labels, sizes[order], signs[order], _null_p(sizes[order], h0),
                         h0, masses, None if h0_mass is None else _null_p(masses, h0_mass),
                         h0_mass)


# --------------------------------------------------------------------------- outputs


def signed_logp(p, sign):
    """Return ``sign * -log10(p)`` (0 where p is NaN)."""
    p = np.asarray(p, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.sign(sign) * -np.log10(p)
    return np.where(np.isfinite(p), out, 0.0)


def inference_maps(res: PermutationResult) -> dict:
    """Return the 1-D result maps of :func:`permuted_glm` under their output names.

    Keys: ``t``; ``fdrq`` (Benjamini–Hochberg q of the parametric p over the voxels);
    ``logpfwe`` (voxel max-t FWE p as ``sign(t) * -log10 p``); ``logpcfwe`` (each cluster
    voxel gets its cluster-size FWE p as ``sign * -log10 p``, 0 outside clusters);
    ``tfce`` and ``logptfcefwe`` when TFCE was run. Signed -log10 p maps show direction;
    ``|value| > -log10(alpha)`` is significant.
    """
    maps = {"t": res.t, "fdrq": fdr_bh(res.p)}
    if res.n_perm > 0:
        maps["logpfwe"] = signed_logp(res.p_fwe, res.t)
    if res.clusters is not None:
        c = res.clusters
        per_cluster = np.r_[0.0, signed_logp(c.p_fwe, c.signs)]
        maps["logpcfwe"] = per_cluster[c.labels]
    if res.tfce is not None:
        maps["tfce"] = res.tfce
        if res.p_tfce_fwe is not None:
            maps["logptfcefwe"] = signed_logp(res.p_tfce_fwe, res.tfce)
    return maps


def inference_map_names(opts: dict) -> list:
    """Names of the maps :func:`inference_maps` returns for the given inference options."""
    perm = int(opts["n_permutations"]) > 0
    names = ["t", "fdrq"] + ["logpfwe"] * perm
    names += ["logpcfwe"] * (perm and bool(opts["cluster_forming_p"]))
    names += ["tfce"] * bool(opts["tfce"]) + ["logptfcefwe"] * (perm and bool(opts["tfce"]))
    return names


def cluster_columns(effect_name: str = "g") -> list:
    """Columns of :func:`cluster_table` (``peak_{effect_name}`` for the effect)."""
    return [c if c != "peak_effect" else f"peak_{effect_name}" for c in CLUSTER_COLUMNS]


CLUSTER_COLUMNS = ["cluster_id", "direction", "size_vox", "size_mm3", "peak_x", "peak_y",
                   "peak_z", "peak_t", "peak_effect", "peak_p_fwe", "cluster_p_fwe",
                   "significant", "label"]


def cluster_table(res: PermutationResult, mask_img, effect=None, effect_name: str = "g",
                  alpha: float = 0.05, directions=("positive", "negative")) -> pd.DataFrame:
    """Tabulate the observed supra-threshold clusters of :func:`permuted_glm`.

    Parameters
    ----------
    res : PermutationResult
        Result with clusters (``cluster_forming_p`` given).
    mask_img : nibabel.Nifti1Image
        The 3-D mask of the voxels (for MNI coordinates and voxel volume).
    effect : numpy.ndarray, shape (V,), optional
        Effect-size map reported at the peak (default: the regression coefficient).
    effect_name : str
        Name of the effect column (``peak_{effect_name}``).
    alpha : float
        Level of the ``significant`` flag (cluster-size FWE p < alpha).
    directions : tuple of str
        Names of positive and negative clusters (e.g. ``("MS>HC", "MS<HC")``).

    Returns
    -------
    pandas.DataFrame
        One row per cluster (largest first): ``cluster_id, direction, size_vox, size_mm3,
        peak_x, peak_y, peak_z`` (MNI mm of the voxel with the largest |t|), ``peak_t,
        peak_{effect_name}, peak_p_fwe`` (voxel-level), ``cluster_p_fwe, significant,
        label`` (Harvard-Oxford cortical label of the peak,
        :func:`msnet.atlas.harvard_oxford_label`).
    """
    from msnet.atlas import harvard_oxford_label, mask_coordinates

    columns = cluster_columns(effect_name)
    c = res.clusters
    if c is None or c.sizes.size == 0:
        return pd.DataFrame(columns=columns)
    effect = res.effect if effect is None else effect
    coords = mask_coordinates(mask_img)
    voxel_mm3 = round(float(abs(np.linalg.det(mask_img.affine[:3, :3]))), 6)
    rows = []
    for k, (size, sign, p) in enumerate(zip(c.sizes, c.signs, c.p_fwe), start=1):
        members = np.flatnonzero(c.labels == k)
        peak = members[np.argmax(np.abs(res.t[members]))]
        xyz = coords[peak]
        rows.append([k, directions[0] if sign > 0 else directions[1], int(size),
                     size * voxel_mm3, *np.round(xyz, 2), res.t[peak], effect[peak],
                     res.p_fwe[peak], p, bool(p < alpha), harvard_oxford_label(xyz)])
    return pd.DataFrame(rows, columns=columns)
