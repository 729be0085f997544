"""QC-FC: does head motion still drive connectivity after denoising, and do MS and HC move
differently? Motion benchmarks of several denoising strategies on the same subjects.

MS patients move more than controls, so an MS-vs-HC difference in functional connectivity (FC)
that tracks motion is an artefact. Following Ciric et al. (2017, NeuroImage 154:174-187) and
Parkes et al. (2018, NeuroImage 171:415-436), for each denoising strategy of ``qcfc.strategies``
and the main analysis's own (the ``denoise`` section), msnet computes across subjects:

* QC-FC: for every edge of the Seitzman-300 matrix (Fisher z), the partial correlation of
  the edge with the subject's mean framewise displacement (FD), controlling for the
  covariates (``qcfc.covariates``, default age, sex and group) and the study (pooled across
  studies with one indicator per study but the first, so QC-FC is the within-study
  association of motion and FC and a difference between scanners in both is not counted);
* the % of edges with a significant QC-FC at p < ``alpha`` uncorrected and after
  Benjamini-Hochberg FDR at ``alpha``, and the median |QC-FC| (with what a null gives,
  ``null_median_abs_r``: the |r| whose t has p = 0.5 at the same degrees of freedom);
* distance dependence: Spearman's rho of the QC-FC with the Euclidean distance between the
  ROI centres (Power et al. 2012's short-distance motion artefact gives rho < 0);
* the loss of temporal degrees of freedom (tDOF: confound regressors + censored volumes,
  as Parkes et al. count it; the band-pass filter and dummy volumes, the same for every
  strategy, are not counted), mean and SD over subjects, in volumes and in % of the
  post-dummy volumes;
* the MS-vs-HC difference in mean FD: Welch's t test, the Mann-Whitney U test (both on the
  pooled subjects) and an OLS of mean FD on group with study indicators (the within-study
  difference, what the pooled group models compare).

The subjects are those the main analysis includes (QC decision of the subject stage); a
subject whose data one strategy cannot clean (e.g. every volume censored) is left out of that
strategy only (``n`` per strategy). Edges that are not finite in every subject of a strategy
(an ROI without voxels) are left out of its statistics (``n_edges``).

**Acceptability.** The report calls the main strategy's QC-FC acceptable when at most
``qcfc.max_pct_fdr`` % (default 5) of the edges have an FDR-significant QC-FC. This threshold is
msnet's choice, not a published standard: Ciric et al. and Parkes et al. rank strategies by the
% of significant edges and the median |QC-FC| without fixing a cut-off; well-performing
strategies in their data left a few % of edges or fewer.

**No re-reading of the BOLD.** The subject stage reads each BOLD once, keeps the ROI means of
the smoothed, uncleaned data (:class:`msnet.denoise.RunSignals`) and cleans those with each
strategy (:func:`msnet.denoise.clean_signals`): cleaning is one linear operator applied to
every voxel alike, so it commutes with the ROI mean (where that holds exactly and where only to
rounding: :func:`msnet.denoise.clean_signals`). Each subject's edges and tDOF per strategy go
to one ``.npz`` (:func:`write_subject_edges`).

Why not an existing tool: XCP-D computes QC-FC for the one strategy it ran; nilearn has the
confound strategies but no QC-FC; re-running a masker per strategy re-reads the BOLD each time
(``benchmarks/bench_qcfc.py`` measures both routes).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from msnet.errors import MsnetInputError
from msnet.plotting import (FS, FS_SMALL, FS_TITLE, _GROUP_COLORS, _new_figure, _no_data, _num,
                            _strip_box, _styled, _table, fmt_p, save_figure)

LOG = logging.getLogger(__name__)

MAIN = "main"
"""Name of the main analysis's strategy (the ``denoise`` section) unless a listed strategy
has the same options, whose name it then takes."""

STRATEGY_KEYS = ("strategy", "motion", "wm_csf", "global_signal", "compcor", "n_compcor",
                 "scrub", "fd_threshold", "std_dvars_threshold", "detrend", "high_pass",
                 "low_pass", "standardize_confounds")
"""Denoise options a strategy may set (the temporal cleaning). Smoothing and the runs used
are shared: every strategy cleans the same ROI signals."""

DEFAULT_STRATEGIES = (
    {"name": "simple", "strategy": "simple"},
    {"name": "scrubbing", "strategy": "scrubbing"},
    {"name": "compcor", "strategy": "compcor"},
    {"name": "gsr", "strategy": "custom", "global_signal": "basic", "scrub": None},
)
"""nilearn's simple, scrubbing and compcor presets, and the main options with global signal
regression and without censoring."""

DEFAULT_OPTIONS = {
    "enabled": True,
    "strategies": [dict(s) for s in DEFAULT_STRATEGIES],
    "covariates": ["age", "sex", "group"],
    "alpha": 0.05,
    "max_pct_fdr": 5.0,
}
"""Defaults of the ``qcfc`` config section."""

COVARIATES = ("age", "sex", "group")
"""Covariates QC-FC can control for (participants.tsv; sex: F = 0, M = 1; group: HC = 0,
MS = 1)."""

N_ROIS = 300


# --------------------------------------------------------------------------- options


def resolve_options(options: dict | None) -> dict:
    """The ``qcfc`` section with defaults filled and every value checked.

    Raises
    ------
    MsnetInputError
        Unknown key or bad value, naming ``qcfc.<key>``.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise MsnetInputError(f"qcfc: unknown key(s) {unknown}; known: {sorted(DEFAULT_OPTIONS)}.")
    opts = {**DEFAULT_OPTIONS, **options}
    if not isinstance(opts["enabled"], bool):
        raise MsnetInputError(f"qcfc.enabled must be true or false, got {opts['enabled']!r}.")
    alpha = opts["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 0.5:
        raise MsnetInputError(f"qcfc.alpha must be a number in (0, 0.5), got {alpha!r}.")
    limit = opts["max_pct_fdr"]
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 <= limit <= 100:
        raise MsnetInputError(f"qcfc.max_pct_fdr must be a percentage in [0, 100], got {limit!r}.")
    covs = opts["covariates"]
    if not isinstance(covs, (list, tuple)) or any(c not in COVARIATES for c in covs):
        raise MsnetInputError(f"qcfc.covariates must be a list of {list(COVARIATES)}, got {covs!r}.")
    if not isinstance(opts["strategies"], (list, tuple)):
        raise MsnetInputError("qcfc.strategies must be a list of strategies, each a mapping "
                              f"with a name and denoise options; got {opts['strategies']!r}.")
    return opts


def resolve_strategies(qcfc_options: dict | None, denoise_options: dict | None) -> dict:
    """Name -> resolved denoise options of every strategy, the main analysis's first.

    Each listed strategy is the ``denoise`` section with the strategy's keys
    (:data:`STRATEGY_KEYS`) replaced. The main analysis's strategy is named :data:`MAIN`,
    or, when a listed strategy resolves to the same options, that strategy's name (and it
    is not listed twice). When the main analysis uses ``ica_aroma`` (fMRIPrep's AROMA-cleaned
    BOLD, not the ``desc-preproc`` BOLD the other strategies clean), QC-FC covers the main
    strategy only.

    Parameters
    ----------
    qcfc_options : dict or None
        The ``qcfc`` config section.
    denoise_options : dict or None
        The ``denoise`` config section (the main analysis).

    Returns
    -------
    dict
        Ordered: the main strategy first, then the listed ones in their order.

    Raises
    ------
    MsnetInputError
        A strategy without a (unique, alphanumeric) name, with a key a strategy cannot set,
        a bad option value, or ``ica_aroma`` (another BOLD file: the ROI signals could not
        be shared).
    """
    from msnet.denoise import resolve_options as resolve_denoise

    opts = resolve_options(qcfc_options)
    main = resolve_denoise(denoise_options)
    listed, problems = {}, []
    for i, entry in enumerate(opts["strategies"]):
        where = f"qcfc.strategies[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} must be a mapping (name and denoise options), got {entry!r}.")
            continue
        name = entry.get("name")
        if not isinstance(name, str) or not name.isalnum() or not name.isascii():
            problems.append(f"{where}.name must be letters and digits (it names the strategy in "
                            f"tables and figures), got {name!r}.")
            continue
        if name == MAIN or name in listed:
            problems.append(f"{where}.name {name!r} is " + ("reserved for the main analysis's "
                            "strategy (the denoise section)" if name == MAIN else "used twice")
                            + "; choose another name.")
            continue
        bad = sorted(set(entry) - {"name", *STRATEGY_KEYS})
        if bad:
            problems.append(
                f"{where} ({name}) sets {bad}, which a strategy cannot set: every strategy "
                "cleans the same ROI signals, so smoothing_fwhm and multi_run are the denoise "
                f"section's. Allowed: {list(STRATEGY_KEYS)}.")
            continue
        if entry.get("strategy") == "ica_aroma":
            problems.append(f"{where} ({name}): ica_aroma denoises another BOLD file "
                            "(fMRIPrep's AROMA output), so it cannot share the ROI signals of "
                            "the other strategies; choose another strategy.")
            continue
        try:
            listed[name] = resolve_denoise({**main, **{k: v for k, v in entry.items()
                                                       if k != "name"}})
        except MsnetInputError as exc:
            problems.append(f"{where} ({name}): {exc}")
    if problems:
        from msnet.errors import MsnetInputErrors

        raise MsnetInputErrors(problems, "the qcfc section")
    if main["strategy"] == "ica_aroma":  # its BOLD is fMRIPrep's AROMA output: the ROI
        return {MAIN: main}  # signals of the others' desc-preproc BOLD are not at hand
    same = [n for n, o in listed.items() if o == main]
    main_name = same[0] if same else MAIN
    out = {main_name: main}
    out.update({n: o for n, o in listed.items() if n != main_name})
    return out


def config_problems(config: dict) -> list[str]:
    """The ``qcfc`` section's problems (for the config's cross-key checks), as sentences."""
    from msnet.errors import MsnetInputErrors

    from msnet.denoise import resolve_options as resolve_denoise

    section = config.get("qcfc") or {}
    if not section.get("enabled", True):
        return []
    try:
        resolve_denoise(config.get("denoise"))
    except MsnetInputError:  # the denoise section's own problem, reported by its checks
        return []
    try:
        resolve_strategies(section, config.get("denoise"))
    except MsnetInputErrors as exc:
        return list(exc.problems)
    except MsnetInputError as exc:
        return [str(exc)]
    return []


def describe_strategy(opts: dict) -> str:
    """A short description of a strategy's confounds and censoring (tables, figures)."""
    from msnet.denoise import NILEARN_PRESETS, confound_counts

    if opts["strategy"] != "custom":
        preset = NILEARN_PRESETS[opts["strategy"]]
        text = f"nilearn preset {opts['strategy']}: " + "+".join(preset["strategy"])
        return text + (f" (FD > {preset['fd_threshold']} mm or std DVARS > "
                       f"{preset['std_dvars_threshold']})" if "scrub" in preset else "")
    label = {"motion": "{}P motion", "wm_csf": "{} WM/CSF", "global_signal": "{} GSR",
             "compcor": "{} " + str(opts["compcor"]) + " CompCor"}
    text = " + ".join(label[k].format(n) for k, n in confound_counts(opts).items())
    text = text or "no confounds"
    if opts["scrub"] is not None:
        text += (f", censoring FD > {opts['fd_threshold']:g} mm or std DVARS > "
                 f"{opts['std_dvars_threshold']:g}")
    return text


# --------------------------------------------------------------------------- subject stage


@lru_cache(maxsize=4)
def edge_index(n: int = N_ROIS) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each edge (upper triangle, k = 1, row-major), atlas order."""
    return np.triu_indices(n, k=1)


def edge_fc(series) -> np.ndarray:
    """Fisher z of the Pearson correlation of every ROI pair, upper triangle (k = 1).

    The conventions of :func:`msnet.connectivity.relmat`: an edge with a constant, missing
    or non-finite ROI, and |r| >= ``R_MAX``, is NaN.

    Parameters
    ----------
    series : numpy.ndarray, shape (n_volumes, n_rois)

    Returns
    -------
    numpy.ndarray, shape (n_rois * (n_rois - 1) / 2,), float64
    """
    from msnet.connectivity import R_MAX, _zscore_columns

    x = np.asarray(series, dtype=np.float64)
    z, varies = _zscore_columns(x)
    good = varies & np.all(np.isfinite(x), axis=0) & (len(x) >= 3)
    r = z.T @ z / max(len(z), 1)
    i, j = edge_index(x.shape[1])
    r = r[i, j]
    r[~(good[i] & good[j]) | (np.abs(r) >= R_MAX)] = np.nan
    return np.arctanh(r)


def subject_edges(cleaned, strategies: dict, main_relmat=None) -> dict:
    """Edge FC and tDOF of one subject under every strategy, from its ROI signals.

    Parameters
    ----------
    cleaned : msnet.denoise.CleanedBold
        With ``runs`` (:func:`msnet.denoise.clean_subject` given ``roi_membership``).
    strategies : dict
        :func:`resolve_strategies`.
    main_relmat : array-like, optional
        The subject's Fisher-z matrix of the main analysis (:func:`msnet.connectivity.relmat`
        of the voxelwise-cleaned data). The first strategy (the main analysis's) then takes
        its edges and its tDOF from the subject stage itself rather than cleaning the ROI
        signals again: the QC-FC of the main strategy is that of exactly the FC the analysis
        uses (equal to the ROI route to about 1e-6, :func:`msnet.denoise.clean_signals`).

    Returns
    -------
    dict
        ``strategies`` (names), ``fc`` (n_strategies x n_edges float32; NaN rows for a
        strategy that could not clean the data), ``n_regressors``, ``n_censored``,
        ``n_volumes`` (post-dummy volumes of the usable runs), ``usable`` (bool) and
        ``reason`` (why not usable, '' otherwise), one per strategy.
    """
    from msnet.denoise import clean_signals

    n_rois = cleaned.runs[0].raw.shape[1] if cleaned.runs else N_ROIS
    n_edges = n_rois * (n_rois - 1) // 2
    out = {"strategies": list(strategies), "fc": np.full((len(strategies), n_edges), np.nan,
                                                          np.float32)}
    cols = {k: [] for k in ("n_regressors", "n_censored", "n_volumes", "usable", "reason")}
    for k, opts in enumerate(strategies.values()):
        reason, sig = "", None
        if k == 0 and main_relmat is not None:
            sig = _main_signals(cleaned)
            if sig.series is not None:
                i, j = edge_index(n_rois)
                out["fc"][k] = np.asarray(main_relmat, dtype=np.float64)[i, j]
                sig.series = None  # recorded; not cleaned again
                cols["n_regressors"].append(sig.n_regressors)
                cols["n_censored"].append(sig.n_censored)
                cols["n_volumes"].append(sig.n_volumes)
                cols["usable"].append(True)
                cols["reason"].append("")
                continue
        if not cleaned.runs:
            reason = "no ROI signals (the subject's data could not be read)"
        else:
            try:
                sig = clean_signals(cleaned.runs, opts, cleaned.tr)
            except MsnetInputError as exc:
                reason = str(exc)
        if sig is not None and sig.series is None:
            reason = sig.reason or "no usable run"
        if sig is not None and sig.series is not None:
            out["fc"][k] = edge_fc(sig.series)
        cols["n_regressors"].append(0 if sig is None else sig.n_regressors)
        cols["n_censored"].append(0 if sig is None else sig.n_censored)
        cols["n_volumes"].append(0 if sig is None else sig.n_volumes)
        cols["usable"].append(not reason)
        cols["reason"].append(reason)
    out.update({k: np.asarray(v, dtype=int if k.startswith("n_") else None)
                for k, v in cols.items()})
    out["usable"] = out["usable"].astype(bool)
    return out


def _main_signals(cleaned):
    """The main analysis's tDOF from the subject stage's QC (``runs``: volumes, dummies, kept
    volumes and regressors of each run); ``series`` is a placeholder (not None) when the
    main cleaning produced data."""
    from msnet.denoise import StrategySignals

    runs = [r for r in (cleaned.qc or {}).get("runs", []) if r.get("usable")]
    if cleaned.data is None or not runs or any("n_regressors" not in r for r in runs):
        return StrategySignals(None, 0, 0, 0, (cleaned.qc or {}).get("exclusion_reason")
                               or "no usable run")
    post = sum(r["n_volumes"] - r["n_dummy"] for r in runs)
    return StrategySignals(np.zeros((0, 0)), sum(r["n_regressors"] for r in runs),
                           post - sum(r["n_kept"] for r in runs), post)


def write_subject_edges(result: dict, path, strategies: dict) -> None:
    """Write :func:`subject_edges` as one ``.npz`` (atomically) with a JSON sidecar.

    Arrays: ``strategies`` (str), ``fc`` (float32, strategies x edges), ``n_regressors``,
    ``n_censored``, ``n_volumes``, ``usable``, ``reason``; the sidecar describes them and
    records each strategy's options.
    """
    from msnet.derivatives import ATLAS_URI, sidecar_path
    from msnet.io.atomic import atomic_path, write_json

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, strategies=np.asarray(result["strategies"], dtype=str),
                     fc=result["fc"], n_regressors=result["n_regressors"],
                     n_censored=result["n_censored"], n_volumes=result["n_volumes"],
                     usable=result["usable"], reason=np.asarray(result["reason"], dtype=str))
    write_json({
        "Description": "Edge functional connectivity of the subject under each QC-FC denoising "
                       "strategy (msnet.qcfc): Fisher z of the Pearson correlation of every "
                       "pair of Seitzman-300 ROI time series, upper triangle (row-major, "
                       "numpy.triu_indices(300, 1)) in the atlas order, one row per strategy.",
        "Atlas": ATLAS_URI,
        "Units": "Fisher z",
        "Arrays": {
            "strategies": "strategy names, the main analysis's first",
            "fc": "float32, strategies x 44,850 edges; n/a (NaN) for an edge with a constant "
                  "or missing ROI, and for every edge of a strategy that could not clean the data",
            "n_regressors": "confound regressors projected out (rank), usable runs",
            "n_censored": "post-dummy volumes censored by the strategy, usable runs",
            "n_volumes": "post-dummy volumes of the usable runs",
            "usable": "whether the strategy could clean the subject's data",
            "reason": "why not ('' when usable)",
        },
        "Strategies": {name: dict(opts) for name, opts in strategies.items()},
    }, sidecar_path(path))


def read_subject_edges(path) -> dict:
    """Read a file of :func:`write_subject_edges` (arrays as written)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError) as exc:
        raise MsnetInputError(f"{path}: cannot read this subject's QC-FC edges ({exc}); "
                              "re-run the subject stage for this subject.") from exc


# --------------------------------------------------------------------------- statistics


def _basis(design: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the column space of ``design`` (rank-revealing QR)."""
    from scipy import linalg

    q, r, _ = linalg.qr(design, mode="economic", pivoting=True)
    diag = np.abs(np.diag(r))
    keep = diag > diag.max() * max(design.shape) * np.finfo(float).eps if diag.size else diag
    return q[:, keep]


def partial_correlation(y, x, covariates=None, chunk: int = 8192):
    """Partial correlation of each column of ``y`` with ``x`` given ``covariates``.

    Both ``x`` and every column of ``y`` are residualised on ``[1, covariates]`` (least
    squares) and correlated. The t statistic ``r sqrt(df / (1 - r^2))`` with
    ``df = n - rank([1, covariates]) - 1`` is the t of ``x``'s coefficient in the OLS of
    the column on ``[1, x, covariates]``, so the two-sided p equals that OLS test's (and
    pingouin's ``partial_corr``).

    Parameters
    ----------
    y : numpy.ndarray, shape (n,) or (n, m)
    x : numpy.ndarray, shape (n,)
    covariates : numpy.ndarray, shape (n, k), optional
    chunk : int
        Columns of ``y`` per block (memory).

    Returns
    -------
    r, p : numpy.ndarray, shape (m,)
        NaN where a column (or ``x``) is constant after residualisation.
    df : int

    Raises
    ------
    MsnetInputError
        Mismatched shapes, non-finite values, or no degrees of freedom left.
    """
    from scipy import stats as sps

    y = np.asarray(y, dtype=np.float64)
    single = y.ndim == 1
    y = y[:, None] if single else y
    x = np.asarray(x, dtype=np.float64).ravel()
    n = len(x)
    z = np.ones((n, 1)) if covariates is None else np.column_stack(
        [np.ones(n), np.asarray(covariates, dtype=np.float64).reshape(n, -1)])
    if y.shape[0] != n or z.shape[0] != n:
        raise MsnetInputError(f"partial_correlation: y has {y.shape[0]} rows, x {n}, "
                              f"covariates {z.shape[0]}; one row per subject is needed.")
    if not (np.isfinite(x).all() and np.isfinite(z).all()):
        raise MsnetInputError("partial_correlation: x and the covariates must be finite "
                              "(drop the subjects with missing values first).")
    q = _basis(z)
    df = n - q.shape[1] - 1
    if df < 1:
        raise MsnetInputError(f"partial_correlation: {n} subjects leave no degrees of freedom "
                              f"after {q.shape[1]} covariate columns and the tested variable.")
    rx = x - q @ (q.T @ x)
    sxx = float(rx @ rx)
    r = np.full(y.shape[1], np.nan)
    for start in range(0, y.shape[1], chunk):
        block = y[:, start:start + chunk]
        ry = block - q @ (q.T @ block)
        syy = np.einsum("ij,ij->j", ry, ry)
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = (syy > 1e-24 * np.maximum(np.einsum("ij,ij->j", block, block), 1e-300)) & (sxx > 0)
            r[start:start + chunk] = np.where(ok, (rx @ ry) / np.sqrt(sxx * syy), np.nan)
    r = np.clip(r, -1.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = r * np.sqrt(df / np.maximum(1.0 - r**2, 1e-300))
    p = 2.0 * sps.t.sf(np.abs(t), df)
    if single:
        return float(r[0]), float(p[0]), df
    return r, p, df


def null_median_abs_r(df: int) -> float:
    """Median |r| of a partial correlation with ``df`` degrees of freedom under the null."""
    from scipy import stats as sps

    t = sps.t.ppf(0.75, df)
    return float(t / np.sqrt(df + t**2))


def roi_distances(rois: pd.DataFrame | None = None) -> np.ndarray:
    """Euclidean distance (mm) between the centres of every ROI pair, edge order."""
    from msnet import atlas

    rois = atlas.seitzman_rois() if rois is None else rois
    xyz = rois[["x", "y", "z"]].to_numpy(float)
    i, j = edge_index(len(xyz))
    return np.linalg.norm(xyz[i] - xyz[j], axis=1)


def covariate_matrix(table: pd.DataFrame, covariates, study_col: str = "study_id"):
    """Design columns for QC-FC: the covariates (sex F/M = 0/1, group HC/MS = 0/1) and one
    indicator per study but the first (none with one study).

    Returns
    -------
    matrix : numpy.ndarray, shape (n, k)
    names : list of str
    """
    cols, names = [], []
    for cov in covariates:
        if cov == "sex":
            values = table["sex"].map({"F": 0.0, "M": 1.0})
        elif cov == "group":
            values = table["group"].map({"HC": 0.0, "MS": 1.0})
        else:
            values = pd.to_numeric(table[cov], errors="coerce")
        cols.append(values.to_numpy(float))
        names.append(cov)
    studies = sorted(set(table[study_col]))
    for study in studies[1:]:
        cols.append((table[study_col] == study).to_numpy(float))
        names.append(f"study_{study}")
    n = len(table)
    return (np.column_stack(cols) if cols else np.zeros((n, 0))), names


def fd_group_tests(table: pd.DataFrame) -> pd.DataFrame:
    """MS vs HC mean FD: Welch's t, Mann-Whitney U and OLS with study indicators.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per subject: ``group`` (MS/HC), ``mean_fd`` and ``study_id``.

    Returns
    -------
    pandas.DataFrame
        One row per test: ``test``, ``n_ms``, ``n_hc``, ``fd_mean_ms``, ``fd_mean_hc``,
        ``fd_median_ms``, ``fd_median_hc``, ``fd_difference`` (MS - HC: of the means for
        Welch, the Hodges-Lehmann median of pairwise differences for Mann-Whitney, the group
        coefficient for the OLS), ``test_statistic`` (t, U of the MS group, t), ``df``,
        ``p`` (two-sided), ``covariates``.
    """
    from scipy import stats as sps

    data = table[table["group"].isin(["MS", "HC"]) & table["mean_fd"].notna()]
    ms = data.loc[data["group"] == "MS", "mean_fd"].to_numpy(float)
    hc = data.loc[data["group"] == "HC", "mean_fd"].to_numpy(float)
    base = {"n_ms": len(ms), "n_hc": len(hc),
            "fd_mean_ms": ms.mean() if len(ms) else np.nan,
            "fd_mean_hc": hc.mean() if len(hc) else np.nan,
            "fd_median_ms": np.median(ms) if len(ms) else np.nan,
            "fd_median_hc": np.median(hc) if len(hc) else np.nan}
    rows = []
    enough = len(ms) >= 2 and len(hc) >= 2
    welch = sps.ttest_ind(ms, hc, equal_var=False) if enough else None
    if welch is not None:
        v1, v2 = ms.var(ddof=1) / len(ms), hc.var(ddof=1) / len(hc)
        df = (v1 + v2) ** 2 / (v1**2 / (len(ms) - 1) + v2**2 / (len(hc) - 1)) if v1 + v2 > 0 else np.nan
    rows.append({"test": "Welch t", **base,
                 "fd_difference": base["fd_mean_ms"] - base["fd_mean_hc"],
                 "test_statistic": welch.statistic if welch else np.nan,
                 "df": df if welch else np.nan, "p": welch.pvalue if welch else np.nan,
                 "covariates": ""})
    mw = sps.mannwhitneyu(ms, hc, alternative="two-sided") if enough else None
    hl = float(np.median(np.subtract.outer(ms, hc))) if enough else np.nan
    rows.append({"test": "Mann-Whitney U", **base, "fd_difference": hl,
                 "test_statistic": mw.statistic if mw else np.nan, "df": np.nan,
                 "p": mw.pvalue if mw else np.nan, "covariates": ""})
    studies, names = covariate_matrix(data, [])
    ols = {"fd_difference": np.nan, "test_statistic": np.nan, "df": np.nan, "p": np.nan}
    if enough:
        x = (data["group"] == "MS").to_numpy(float)
        design = np.column_stack([np.ones(len(x)), x, studies])
        q = _basis(design)
        df_res = len(x) - q.shape[1]
        if df_res > 0 and q.shape[1] == design.shape[1]:
            beta, *_ = np.linalg.lstsq(design, data["mean_fd"].to_numpy(float), rcond=None)
            resid = data["mean_fd"].to_numpy(float) - design @ beta
            cov = np.linalg.inv(design.T @ design) * (resid @ resid / df_res)
            t = beta[1] / np.sqrt(cov[1, 1]) if cov[1, 1] > 0 else np.nan
            ols = {"fd_difference": beta[1], "test_statistic": t, "df": df_res,
                   "p": 2 * sps.t.sf(abs(t), df_res) if np.isfinite(t) else np.nan}
    rows.append({"test": "OLS with study indicators", **base, **ols,
                 "covariates": ",".join(names)})
    return pd.DataFrame(rows)


def strategy_metrics(fc: np.ndarray, fd: np.ndarray, covariates: np.ndarray,
                     distance: np.ndarray, alpha: float = 0.05) -> tuple[dict, pd.DataFrame]:
    """The QC-FC benchmarks of one strategy.

    Parameters
    ----------
    fc : numpy.ndarray, shape (n_subjects, n_edges)
    fd : numpy.ndarray, shape (n_subjects,)
        Mean FD.
    covariates : numpy.ndarray, shape (n_subjects, k)
    distance : numpy.ndarray, shape (n_edges,)
    alpha : float

    Returns
    -------
    summary : dict
        ``n``, ``n_edges``, ``pct_sig_uncorrected``, ``pct_sig_fdr``, ``median_abs_r``,
        ``null_median_abs_r``, ``distance_rho``, ``distance_p``, ``df``.
    edges : pandas.DataFrame
        Per edge: ``edge`` (index), ``qcfc_r``, ``p``, ``q_fdr`` (NaN for left-out edges).
    """
    from scipy import stats as sps

    from msnet.stats import fdr_bh

    finite = np.all(np.isfinite(fc), axis=0)
    r = np.full(fc.shape[1], np.nan)
    p = np.full(fc.shape[1], np.nan)
    df = int(len(fd) - np.linalg.matrix_rank(np.column_stack([np.ones(len(fd)), covariates])) - 1)
    if finite.any() and df >= 1:
        r[finite], p[finite], df = partial_correlation(fc[:, finite], fd, covariates)
    q = fdr_bh(p)
    ok = np.isfinite(r)
    n_ok = int(ok.sum())
    rho, rho_p = (sps.spearmanr(r[ok], distance[ok]) if n_ok > 2 else (np.nan, np.nan))
    summary = {
        "n": int(len(fd)), "n_edges": n_ok, "df": df,
        "pct_sig_uncorrected": 100.0 * float(np.mean(p[ok] < alpha)) if n_ok else np.nan,
        "pct_sig_fdr": 100.0 * float(np.mean(q[ok] < alpha)) if n_ok else np.nan,
        "median_abs_r": float(np.median(np.abs(r[ok]))) if n_ok else np.nan,
        "null_median_abs_r": null_median_abs_r(df) if df >= 1 else np.nan,
        "distance_rho": float(rho), "distance_p": float(rho_p),
    }
    return summary, pd.DataFrame({"qcfc_r": r, "p": p, "q_fdr": q})


# --------------------------------------------------------------------------- the rule


def output_paths(out_dir) -> dict:
    """The files :func:`compute_qcfc` writes in ``out_dir`` (``results/qcfc``)."""
    out = Path(out_dir)
    return {k: str(out / f"qcfc_desc-{k}_stats.tsv")
            for k in ("strategies", "edges", "subjects", "fdgroup")}


def _subject_table(qc_tables, participants: dict, edge_files: dict) -> pd.DataFrame:
    from msnet.io.tables import read_participants
    from msnet.qc import read_study_qc

    qc = read_study_qc(list(qc_tables))
    people = []
    for study, path in participants.items():
        table = read_participants(path, study)
        people.append(table[[c for c in ("participant_id", "age", "sex") if c in table]]
                      .assign(study_id=str(study)))
    people = pd.concat(people, ignore_index=True) if people else pd.DataFrame(
        columns=["participant_id", "study_id"])
    qc["study_id"] = qc["study_id"].astype(str)
    table = qc.merge(people, on=["study_id", "participant_id"], how="left")
    table["edges"] = [edge_files.get((s, p)) for s, p in zip(table["study_id"],
                                                             table["participant_id"])]
    return table


def compute_qcfc(qc_tables, participants: dict, edge_files: dict, out_dir, options: dict,
                 denoise_options: dict | None = None) -> dict:
    """QC-FC benchmarks across strategies: the one function the ``qcfc`` rule calls.

    Parameters
    ----------
    qc_tables : list of path
        Each study's subject QC table (:func:`msnet.qc.summarise_study_qc`): which subjects
        the main analysis includes, their group and mean FD.
    participants : dict
        Study -> participants.tsv (age, sex).
    edge_files : dict
        (study_id, participant_id) -> the subject's ``.npz`` of :func:`write_subject_edges`.
    out_dir : path
        ``results/qcfc``.
    options : dict
        The ``qcfc`` config section.
    denoise_options : dict, optional
        The ``denoise`` section (names the main strategy; each subject file records the
        strategies it was computed with, and they must be these).

    Returns
    -------
    dict
        Paths written (:func:`output_paths`).

    Raises
    ------
    MsnetInputError
        A subject file missing or computed with other strategies, or covariates missing
        for every subject.
    """
    from msnet.derivatives import write_table

    opts = resolve_options(options)
    strategies = resolve_strategies(opts, denoise_options)
    names = list(strategies)
    table = _subject_table(qc_tables, participants, edge_files)
    inc = table[table["include"].astype(bool)].reset_index(drop=True)
    missing = [f"{s}/{p}" for s, p, e in zip(inc["study_id"], inc["participant_id"], inc["edges"])
               if not e or not Path(e).is_file()]
    if missing:
        raise MsnetInputError(f"QC-FC: no edge file for {len(missing)} included subject(s) "
                              f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); "
                              "re-run the subject stage with qcfc.enabled: true.")
    covs = [c for c in opts["covariates"] if c in inc]
    dropped = [c for c in opts["covariates"] if c not in inc or inc[c].isna().all()]
    covs = [c for c in covs if c not in dropped]
    design, design_names = covariate_matrix(inc, covs)
    complete = np.isfinite(design).all(axis=1) & inc["mean_fd"].notna().to_numpy()
    distance = roi_distances()
    n_edges = len(distance)
    fc = {n: np.full((len(inc), n_edges), np.nan, np.float32) for n in names}
    sub_rows = []
    for i, row in inc.iterrows():
        data = read_subject_edges(row["edges"])
        stored = [str(s) for s in data["strategies"]]
        if stored != names:
            raise MsnetInputError(
                f"{row['edges']} holds strategies {stored}, but the config's are {names}; "
                "re-run the subject stage for this subject (the qcfc or denoise section "
                "changed).")
        for k, name in enumerate(names):
            fc[name][i] = data["fc"][k]
            post = int(data["n_volumes"][k])
            loss = int(data["n_regressors"][k] + data["n_censored"][k])
            sub_rows.append({
                "strategy": name, "study_id": row["study_id"],
                "participant_id": row["participant_id"], "group": row["group"],
                "mean_fd": row["mean_fd"], "usable": bool(data["usable"][k]),
                "n_regressors": int(data["n_regressors"][k]),
                "n_censored": int(data["n_censored"][k]), "n_volumes_post": post,
                "tdof_loss": loss if data["usable"][k] else np.nan,
                "pct_tdof_loss": 100.0 * loss / post if data["usable"][k] and post else np.nan,
                "reason": str(data["reason"][k]) or None})
    subjects = pd.DataFrame(sub_rows, columns=[
        "strategy", "study_id", "participant_id", "group", "mean_fd", "usable", "n_regressors",
        "n_censored", "n_volumes_post", "tdof_loss", "pct_tdof_loss", "reason"])
    rois = _roi_names()
    i_idx, j_idx = edge_index(len(rois))
    stat_rows, edge_frames = [], []
    for k, name in enumerate(names):
        usable = subjects.loc[subjects["strategy"] == name, "usable"].to_numpy(bool)
        keep = complete & usable
        summary, edges = ({"n": int(keep.sum()), "n_edges": 0}, None) if keep.sum() < 3 else \
            strategy_metrics(fc[name][keep].astype(np.float64), inc.loc[keep, "mean_fd"].to_numpy(float),
                             design[keep], distance, opts["alpha"])
        sub = subjects[(subjects["strategy"] == name) & subjects["usable"]]
        row = {"strategy": name, "main": k == 0, "options": describe_strategy(strategies[name]),
               **{c: summary.get(c, np.nan) for c in (
                   "n", "n_edges", "pct_sig_uncorrected", "pct_sig_fdr", "median_abs_r",
                   "null_median_abs_r", "distance_rho", "distance_p")},
               "n_unusable": int((~usable).sum()),
               "tdof_loss_mean": sub["tdof_loss"].mean(), "tdof_loss_sd": sub["tdof_loss"].std(),
               "pct_tdof_loss_mean": sub["pct_tdof_loss"].mean(),
               "covariates": ",".join(design_names)}
        row["acceptable"] = bool(np.isfinite(row["pct_sig_fdr"])
                                 and row["pct_sig_fdr"] <= opts["max_pct_fdr"])
        stat_rows.append(row)
        if edges is not None:
            edge_frames.append(pd.DataFrame({
                "strategy": name, "roi_a": rois[i_idx], "roi_b": rois[j_idx],
                "edge_distance_mm": distance, **{c: edges[c].to_numpy() for c in edges}}))
        LOG.info("QC-FC %s: n = %s, %.1f%% edges FDR-significant, median |r| = %.3f, "
                 "distance rho = %.3f", name, row["n"], row["pct_sig_fdr"],
                 row["median_abs_r"], row["distance_rho"])
    stats = pd.DataFrame(stat_rows)
    paths = output_paths(out_dir)
    sidecar = {"Description": "QC-FC motion benchmarks per denoising strategy (msnet.qcfc).",
               "Alpha": opts["alpha"], "MaxPctFDR": opts["max_pct_fdr"],
               "CovariatesDropped": dropped,
               "Strategies": {n: dict(o) for n, o in strategies.items()}}
    write_table(stats, paths["strategies"], sidecar=sidecar, float_format="%.6g")
    edges = pd.concat(edge_frames, ignore_index=True) if edge_frames else pd.DataFrame(
        columns=["strategy", "roi_a", "roi_b", "edge_distance_mm", "qcfc_r", "p", "q_fdr"])
    write_table(edges, paths["edges"], float_format="%.5g")
    write_table(subjects, paths["subjects"], float_format="%.6g")
    write_table(fd_group_tests(inc), paths["fdgroup"], float_format="%.6g")
    return paths


def _roi_names() -> np.ndarray:
    from msnet import atlas

    return atlas.seitzman_rois()["roi"].to_numpy()


# --------------------------------------------------------------------------- report text


def verdict(stats: pd.DataFrame, options: dict | None = None) -> str:
    """The report's sentence: which strategy the main analysis used and whether its QC-FC
    is acceptable, with the criterion (:data:`DEFAULT_OPTIONS` ``max_pct_fdr``)."""
    opts = resolve_options(options)
    if stats is None or stats.empty or "main" not in stats:
        return ""
    main = stats[stats["main"].astype(str).str.lower().isin(["true", "1"])]
    if main.empty:
        return ""
    row = main.iloc[0]
    alpha = opts["alpha"]
    head = (f"The main analysis used the strategy '{row['strategy']}' (the denoise section: "
            f"{row['options']}).")
    if not np.isfinite(float(row["pct_sig_fdr"])):
        return head + " Its QC-FC could not be computed (too few subjects or edges)."
    ok = float(row["pct_sig_fdr"]) <= opts["max_pct_fdr"]
    return (head + f" Its QC-FC is {'acceptable' if ok else 'NOT acceptable'} by msnet's "
            f"criterion (at most {opts['max_pct_fdr']:g}% of edges with an FDR-significant "
            f"QC-FC at q < {alpha:g}; Ciric et al. 2017 and Parkes et al. 2018 rank "
            f"strategies by this % and the median |QC-FC|): {float(row['pct_sig_fdr']):.1f}% "
            f"of {int(row['n_edges'])} edges FDR-significant ({float(row['pct_sig_uncorrected']):.1f}% "
            f"at uncorrected p < {alpha:g}, {100 * alpha:g}% expected by chance), median "
            f"|QC-FC| {float(row['median_abs_r']):.3f} (null {float(row['null_median_abs_r']):.3f}), "
            f"distance dependence rho = {float(row['distance_rho']):.3f}, n = {int(row['n'])}.")



# --------------------------------------------------------------------------- figures
# Drawn with msnet.plotting's styles, sizes and writer (matplotlib imported when drawing).

_STRATEGY_COLORS = ("#b2182b", "#2166ac", "#1b9e77", "#d95f02", "#7570b3", "#e7298a",
                    "#66a61e", "#a6761d")


def _strategy_order(stats: pd.DataFrame, edges: pd.DataFrame) -> list:
    if not stats.empty and "strategy" in stats:
        return [str(s) for s in stats["strategy"]]
    return list(dict.fromkeys(edges["strategy"].astype(str))) if not edges.empty else []


@_styled
def plot_qcfc_benchmarks(stats, edges, subjects, out_stem, max_pct_fdr=None) -> dict:
    """QC-FC benchmarks per denoising strategy (Ciric et al. 2017; Parkes et al. 2018).

    Three panels: the distribution of the edges' QC-FC (partial correlation with mean FD)
    per strategy, with the % of FDR-significant edges and the median |QC-FC|; distance
    dependence (mean QC-FC of the edges in each decile of ROI distance, Spearman's rho in
    the legend); the tDOF lost per subject (regressors + censored volumes, box and points).

    Parameters
    ----------
    stats, edges, subjects : pandas.DataFrame or path
        ``qcfc_desc-{strategies,edges,subjects}_stats.tsv`` (:func:`msnet.qcfc.compute_qcfc`).
    out_stem : path
    max_pct_fdr : float, optional
        The acceptability limit (``qcfc.max_pct_fdr``), named in the first panel's title.

    Returns
    -------
    dict
        ``{"png": path, "svg": path}``.
    """
    stats, edges, subjects = _table(stats), _table(edges), _table(subjects)
    order = _strategy_order(stats, edges)
    fig = _new_figure(13, max(4.2, 1.4 + 0.55 * len(order)))
    axes = fig.subplots(1, 3, width_ratios=[1.1, 1.1, 1])
    fig.suptitle("Motion (QC-FC) per denoising strategy", fontsize=FS_TITLE)
    if edges.empty or not order:
        for ax in axes:
            _no_data(ax, "no QC-FC results")
        return save_figure(fig, out_stem)
    main = {str(r.strategy): str(r.main).lower() in ("true", "1")
            for r in stats.itertuples()} if "main" in stats else {}
    labels = [f"{s} (main)" if main.get(s) and s != "main" else s for s in order]
    colors = {s: _STRATEGY_COLORS[i % len(_STRATEGY_COLORS)] for i, s in enumerate(order)}
    ax = axes[0]
    data = [pd.to_numeric(edges.loc[edges["strategy"].astype(str) == s, "qcfc_r"],
                          errors="coerce").dropna().to_numpy(float) for s in order]
    pos = np.arange(len(order))[::-1]
    usable = [k for k, d in enumerate(data) if d.size]
    if usable:
        parts = ax.violinplot([data[k] for k in usable], positions=pos[usable], vert=False,
                              showmedians=True, widths=0.8)
        for body, k in zip(parts["bodies"], usable):
            body.set_facecolor(colors[order[k]])
            body.set_alpha(0.55)
        for key in ("cmedians", "cmins", "cmaxes", "cbars"):
            parts[key].set_color("0.2")
            parts[key].set_linewidth(0.8)
    ax.axvline(0, color="0.4", lw=0.8, ls="--")
    row = stats.set_index(stats["strategy"].astype(str)) if not stats.empty else None
    ticks = [f"{label}\n{_num(row.loc[s, 'pct_sig_fdr']):.1f}% FDR-sig., |r| "
             f"{_num(row.loc[s, 'median_abs_r']):.2f}" if row is not None and s in row.index
             else label for s, label in zip(order, labels)]
    ax.set_yticks(pos, ticks)
    ax.set_xlabel("QC-FC: partial r of edge FC with mean FD")
    title = "QC-FC distribution (all edges)"
    if max_pct_fdr is not None:
        title += f"\nacceptable: \u2264 {max_pct_fdr:g}% of edges FDR-significant"
    ax.set_title(title, fontsize=FS)
    ax.grid(axis="x", color="0.9", lw=0.6)
    ax = axes[1]
    dist = pd.to_numeric(edges["edge_distance_mm"], errors="coerce")
    bins = np.unique(np.nanquantile(dist, np.linspace(0, 1, 11)))
    for s in order:
        sub = edges[edges["strategy"].astype(str) == s]
        r = pd.to_numeric(sub["qcfc_r"], errors="coerce").to_numpy(float)
        d = pd.to_numeric(sub["edge_distance_mm"], errors="coerce").to_numpy(float)
        ok = np.isfinite(r) & np.isfinite(d)
        if not ok.any():
            continue
        which = np.clip(np.digitize(d[ok], bins[1:-1]), 0, len(bins) - 2)
        centre = [np.mean(d[ok][which == b]) for b in range(len(bins) - 1) if (which == b).any()]
        mean = [np.mean(r[ok][which == b]) for b in range(len(bins) - 1) if (which == b).any()]
        rho = _num(row.loc[s, "distance_rho"]) if row is not None and s in row.index else np.nan
        ax.plot(centre, mean, marker="o", ms=4, lw=1.4, color=colors[s],
                label=f"{s}: \u03c1 = {rho:.2f}")
    ax.axhline(0, color="0.4", lw=0.8, ls="--")
    ax.set_xlabel("distance between ROI centres (mm)")
    ax.set_ylabel("mean QC-FC (partial r) per distance decile")
    ax.set_title("Distance dependence (Spearman \u03c1 over edges)", fontsize=FS)
    ax.legend(fontsize=FS_SMALL, frameon=False, loc="upper right")
    ax.grid(color="0.93", lw=0.6)
    ax = axes[2]
    if subjects.empty or "tdof_loss" not in subjects:
        _no_data(ax, "no tDOF data")
    else:
        values = [pd.to_numeric(subjects.loc[subjects["strategy"].astype(str) == s, "tdof_loss"],
                                errors="coerce").dropna().to_numpy(float) for s in order]
        keep = [k for k, v in enumerate(values) if v.size]
        if keep:
            ax.boxplot([values[k] for k in keep], positions=pos[keep], vert=False, widths=0.55,
                       showfliers=False, medianprops={"color": "k"})
        rng = np.random.default_rng(0)
        for k in keep:
            ax.scatter(values[k], pos[k] + rng.uniform(-0.18, 0.18, values[k].size), s=6,
                       color=colors[order[k]], alpha=0.5, linewidths=0)
        ax.set_yticks(pos, labels)
        ax.set_xlabel("tDOF lost per subject\n(regressors + censored volumes)")
        ax.set_title("Temporal degrees of freedom lost", fontsize=FS)
        ax.grid(axis="x", color="0.9", lw=0.6)
    return save_figure(fig, out_stem)


@_styled
def plot_fd_by_group(subjects, fd_tests, out_stem) -> dict:
    """Mean FD of the included subjects by group: box and points, overall and per study,
    with the MS-vs-HC tests (:func:`msnet.qcfc.fd_group_tests`) in the title.

    Parameters
    ----------
    subjects : pandas.DataFrame or path
        ``qcfc_desc-subjects_stats.tsv`` (one row per subject and strategy; the first
        strategy's rows are used).
    fd_tests : pandas.DataFrame or path
        ``qcfc_desc-fdgroup_stats.tsv``.
    out_stem : path

    Returns
    -------
    dict
        ``{"png": path, "svg": path}``.
    """
    subjects, tests = _table(subjects), _table(fd_tests)
    studies = sorted(set(subjects["study_id"].astype(str))) if not subjects.empty else []
    fig = _new_figure(13, 4.2)
    axes = fig.subplots(1, 2, width_ratios=[1, 3.2])
    fig.suptitle("Head motion by group (included subjects)", fontsize=FS_TITLE)
    if subjects.empty:
        for ax in axes:
            _no_data(ax, "no QC-FC subjects")
        return save_figure(fig, out_stem)
    first = subjects["strategy"].astype(str).iloc[0]
    table = subjects[subjects["strategy"].astype(str) == first].assign(include=True)
    table["group"] = table["group"].fillna("n/a").astype(str)
    _strip_box(axes[0], table, "mean_fd", np.random.default_rng(0), None, "mean FD (mm)")
    lines = []
    for r in tests.itertuples() if not tests.empty else []:
        lines.append(f"{r.test}: p {fmt_p(_num(r.p))}")
    axes[0].set_title("All studies\n" + "\n".join(lines), fontsize=FS_SMALL)
    ax = axes[1]
    width = 0.38
    for k, group in enumerate(("MS", "HC")):
        data = [table.loc[(table["study_id"].astype(str) == s) & (table["group"] == group),
                          "mean_fd"].dropna().to_numpy(float) for s in studies]
        pos = np.arange(len(studies)) + (k - 0.5) * width
        keep = [i for i, d in enumerate(data) if d.size]
        if keep:
            box = ax.boxplot([data[i] for i in keep], positions=pos[keep], widths=width * 0.9,
                             showfliers=True, patch_artist=True, medianprops={"color": "k"},
                             flierprops={"markersize": 3})
            for patch in box["boxes"]:
                patch.set_facecolor(_GROUP_COLORS[group])
                patch.set_alpha(0.6)
        ax.plot([], [], "s", color=_GROUP_COLORS[group], alpha=0.6, label=group)
    ax.set_xticks(np.arange(len(studies)), studies, rotation=90, fontsize=FS_SMALL)
    ax.set_ylabel("mean FD (mm)")
    ax.set_title("Per study", fontsize=FS)
    ax.legend(fontsize=FS_SMALL, frameon=False, loc="upper right")
    ax.grid(axis="y", color="0.92", lw=0.6)
    return save_figure(fig, out_stem)
