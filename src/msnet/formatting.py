"""How numbers and column names are shown to people: the report's tables, figure titles and
the console summary all format through here, so a p-value or a Hedges' g reads the same
everywhere.

* :func:`format_p` – ``< 0.001`` below 0.001, otherwise three decimals; :func:`p_relation`
  the same after a name (``p < 0.001``, ``p = 0.034``);
* :func:`format_number` – fixed decimals or three significant digits (no scientific
  notation for ordinary magnitudes);
* :func:`column_label` – the human header of a result-table column (``q_fdr`` -> ``FDR q``);
* :func:`format_value` – one cell, formatted by what its column holds;
* :func:`format_table` – a whole DataFrame as strings with human headers.

The result TSVs keep their machine-readable column names and full precision; only what is
displayed is rounded.
"""

from __future__ import annotations

import math

import pandas as pd

MISSING = "\u2013"
"""Shown for a missing or non-finite value."""

P_COLUMNS = frozenset({
    "p", "p_perm", "q_fdr", "q_p", "qm_p", "qm_p_perm", "qe_p", "p_fwe", "peak_p_fwe",
    "cluster_p_fwe", "meta_p", "mega_p", "combat_p", "loo_p_max", "p_welch", "distance_p"})
"""Columns holding p-values or FDR q-values (``q``, Cochran's Q statistic, is not one)."""

DECIMALS = {
    **dict.fromkeys(("peak_x", "peak_y", "peak_z", "representative_x", "representative_y",
                     "representative_z", "size_mm3"), 0),
    **dict.fromkeys(("i2", "i2_ci_low", "i2_ci_high", "meta_i2", "pct_censored",
                     "minutes_kept", "distance_mm", "weight", "weight_fixed", "tsnr_median",
                     "mean_dvars", "age", "pctfemale", "duration", "t2lv"), 1),
    **dict.fromkeys(("g", "ci_low", "ci_high", "g_ci_low", "g_ci_high", "pi_low", "pi_high",
                     "d", "t", "z", "statistic", "peak_t", "peak_zstat", "peak_g", "meta_g",
                     "meta_ci_low", "meta_ci_high", "mega_g", "mega_ci_low", "mega_ci_high",
                     "combat_g", "combat_ci_low", "combat_ci_high", "combat_difference",
                     "additive_shrinkage", "multiplicative_shrinkage", "gamma_hat_mean",
                     "gamma_hat_sd", "gamma_star_mean", "gamma_star_sd", "gamma_prior_mean",
                     "gamma_prior_var", "delta_hat_mean", "delta_star_mean",
                     "delta_prior_mean",
                     "loo_g_min", "loo_g_max", "mean_fd", "max_fd", "sd_fd", "mean_std_dvars",
                     "tr", "h2", "r2", "edss", "qm", "qe", "q", "std_beta",
                     "tdof_loss_mean", "tdof_loss_sd", "test_statistic"), 2),
    **dict.fromkeys(("median_abs_r", "null_median_abs_r", "distance_rho", "fd_mean_ms",
                     "fd_mean_hc", "fd_median_ms", "fd_median_hc", "fd_difference"), 3),
    **dict.fromkeys(("pct_sig_uncorrected", "pct_sig_fdr", "pct_tdof_loss_mean"), 1),
    **dict.fromkeys(("tau2", "tau", "tau2_ci_low", "tau2_ci_high", "tau2_null", "meta_tau2",
                     "var_g", "se", "bias_se", "limit_se"), 3),
}
"""Decimals shown per column (others: three significant digits, integers as integers).

Effect sizes, test statistics and mean FD to 2 decimals; heterogeneity variances and
standard errors to 3; percentages, minutes and distances to 1; MNI coordinates and volumes
to whole numbers."""

LABELS = {
    "study_id": "Study", "study": "Study", "participant_id": "Subject", "group": "Group",
    "include": "Included", "included": "Included", "exclusion_reason": "Exclusion reason",
    "excluded": "Excluded", "subjects": "Subjects",
    "mean_fd": "Mean FD (mm)", "max_fd": "Max FD (mm)", "sd_fd": "SD of mean FD (mm)",
    "pct_censored": "Censored (%)", "minutes_kept": "Minutes kept", "n_volumes": "Volumes",
    "n_dummy": "Dummy volumes", "n_kept": "Volumes kept", "mean_dvars": "Mean DVARS",
    "mean_std_dvars": "Mean std. DVARS", "tsnr_median": "Median tSNR",
    "fd_source": "FD source", "tr": "TR (s)", "lesion_voxels": "Lesion voxels",
    "ms_included": "MS included", "hc_included": "HC included",
    "metric": "Metric", "network": "Network", "network_a": "Network A",
    "network_b": "Network B", "kind": "Kind", "model": "Model", "method": "Method",
    "k": "k (studies)", "k_excluded": "Studies excluded", "n": "n", "n_ms": "n MS",
    "n_hc": "n HC", "n_studies": "Studies", "g": "Hedges' g", "ci_low": "95% CI low",
    "ci_high": "95% CI high", "g_ci_low": "g 95% CI low", "g_ci_high": "g 95% CI high",
    "pi_low": "95% PI low", "pi_high": "95% PI high", "p": "p", "q_fdr": "FDR q",
    "p_perm": "Permutation p", "tau2": "\u03c4\u00b2", "tau": "\u03c4",
    "tau2_ci_low": "\u03c4\u00b2 CI low", "tau2_ci_high": "\u03c4\u00b2 CI high",
    "tau2_null": "\u03c4\u00b2 (no moderators)", "i2": "I\u00b2 (%)",
    "i2_ci_low": "I\u00b2 CI low", "i2_ci_high": "I\u00b2 CI high", "h2": "H\u00b2",
    "q": "Cochran's Q", "q_df": "Q df", "q_p": "Q p", "qm": "Q (moderators)",
    "qm_df": "Q (moderators) df", "qm_p": "Q (moderators) p",
    "qm_p_perm": "Q (moderators) permutation p", "qe": "Q (residual)",
    "qe_df": "Q (residual) df", "qe_p": "Q (residual) p", "r2": "R\u00b2",
    "warning": "Warning", "note": "Note", "reason": "Reason", "status": "Status",
    "test": "Test", "d": "Cohen's d", "t": "t", "z": "z", "df": "df",
    "beta": "\u03b2", "se": "SE", "std_beta": "Standardised \u03b2",
    "beta_ci_low": "\u03b2 95% CI low", "beta_ci_high": "\u03b2 95% CI high",
    "variable": "Variable", "moderator": "Moderator", "converged": "Converged",
    "covariates": "Covariates", "covariates_dropped": "Covariates dropped",
    "studies_without_variable": "Studies without the variable",
    "bias": "Egger bias", "bias_se": "Bias SE", "limit_estimate": "Limit estimate",
    "limit_se": "Limit SE", "study_omitted": "Study omitted", "weight": "Weight (%)",
    "weight_fixed": "Fixed-effect weight (%)", "var_g": "var(g)",
    "mean_ms": "Mean MS", "mean_hc": "Mean HC", "sd_ms": "SD MS", "sd_hc": "SD HC",
    "adjmean_ms": "Adjusted mean MS", "adjmean_hc": "Adjusted mean HC",
    "difference": "Difference", "effect_size": "Effect size", "level": "Level",
    "cluster_id": "Cluster", "direction": "Direction", "size_vox": "Voxels",
    "size_mm3": "Volume (mm\u00b3)", "peak_x": "Peak x (mm)",
    "peak_y": "Peak y (mm)", "peak_z": "Peak z (mm)", "peak_t": "Peak t", "peak_zstat": "Peak z", "peak_g": "Peak g",
    "peak_beta": "Peak \u03b2", "peak_p_fwe": "Peak FWE p", "cluster_p_fwe": "Cluster FWE p",
    "significant": "Significant", "label": "Harvard-Oxford label",
    "analysis": "Analysis", "finding": "Finding", "published_label": "Published region",
    "found": "Found", "distance_mm": "Distance (mm)", "statistic": "Statistic",
    "peak_label": "Peak label", "p_fwe": "FWE p", "scope": "Scope", "stat": "Statistic",
    "permutation": "Permutation", "n_permutations": "Permutations",
    "meta_model": "Meta model", "meta_k": "Meta k", "meta_g": "Meta g",
    "meta_ci_low": "Meta 95% CI low", "meta_ci_high": "Meta 95% CI high", "meta_p": "Meta p",
    "meta_i2": "Meta I\u00b2 (%)", "meta_tau2": "Meta \u03c4\u00b2",
    "mega_n_studies": "Mega studies", "mega_g": "Mega g", "mega_ci_low": "Mega 95% CI low",
    "mega_ci_high": "Mega 95% CI high", "mega_p": "Mega p",
    "combat_n_studies": "ComBat-mega studies", "combat_g": "ComBat-mega g",
    "combat_ci_low": "ComBat-mega 95% CI low", "combat_ci_high": "ComBat-mega 95% CI high",
    "combat_p": "ComBat-mega p", "combat_difference": "ComBat-mega \u2212 mega",
    "batch": "Site (batch)", "n_features": "Features",
    "gamma_hat_mean": "\u03b3\u0302 mean", "gamma_hat_sd": "\u03b3\u0302 SD",
    "gamma_star_mean": "\u03b3* mean", "gamma_star_sd": "\u03b3* SD",
    "gamma_prior_mean": "Prior \u03b3\u0304", "gamma_prior_var": "Prior \u03c4\u00b2",
    "additive_shrinkage": "Additive shrinkage", "delta_hat_mean": "\u03b4\u0302 mean",
    "delta_star_mean": "\u03b4* mean", "delta_prior_mean": "Prior \u03b4 mean",
    "multiplicative_shrinkage": "Multiplicative shrinkage",
    "same_direction": "Same direction", "both_significant": "Both significant",
    "loo_g_min": "Leave-one-out g min", "loo_g_max": "Leave-one-out g max",
    "loo_p_max": "Leave-one-out p max", "most_influential_study": "Most influential study",
    "significance_robust": "Significance robust", "rule": "QC rule",
    "age": "Age (years)", "pctfemale": "Female (%)", "duration": "Disease duration (years)",
    "edss": "EDSS", "t2lv": "T2 lesion volume (ml)", "sex": "Sex",
    "p_welch": "Welch p",
    # QC-FC (msnet.qcfc)
    "strategy": "Strategy", "main": "Main analysis", "options": "Confounds and censoring",
    "n_edges": "Edges", "pct_sig_uncorrected": "Edges p < α (%)",
    "pct_sig_fdr": "Edges FDR q < α (%)", "median_abs_r": "Median |QC-FC|",
    "null_median_abs_r": "Null median |QC-FC|", "distance_rho": "Distance ρ",
    "distance_p": "Distance p", "n_unusable": "Subjects not cleanable",
    "tdof_loss_mean": "tDOF lost, mean", "tdof_loss_sd": "tDOF lost, SD",
    "pct_tdof_loss_mean": "tDOF lost, mean (%)", "acceptable": "Acceptable",
    "fd_mean_ms": "Mean FD MS (mm)", "fd_mean_hc": "Mean FD HC (mm)",
    "fd_median_ms": "Median FD MS (mm)", "fd_median_hc": "Median FD HC (mm)",
    "fd_difference": "MS − HC (mm)", "test_statistic": "Statistic",
    "tdof_loss": "tDOF lost", "n_regressors": "Regressors", "n_censored": "Censored volumes",
    "usable": "Cleanable",
}
"""Human headers of the result tables' columns (:func:`column_label` falls back to
spaces for underscores)."""

TEXT_COLUMNS = frozenset({
    "exclusion_reason", "reason", "warning", "note", "label", "peak_label",
    "published_label", "covariates", "covariates_dropped", "studies_without_variable",
    "options"})
"""Free-text columns: shown left-aligned and wrapped."""

_TRUE = {"true", "1", "1.0", "yes"}
_FALSE = {"false", "0", "0.0", "no"}


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def format_p(p, digits: int = 3) -> str:
    """A p-value (or q-value) for display: ``< 0.001`` below 10^-digits, else ``digits``
    decimals (``0.034``, ``1.000``); :data:`MISSING` when missing."""
    p = _finite(p)
    if p is None:
        return MISSING
    floor = 10.0 ** -digits
    return f"< {floor:.{digits}f}" if p < floor else f"{p:.{digits}f}"


def p_relation(p, digits: int = 3) -> str:
    """``< 0.001`` or ``= 0.034`` (``= n/a`` when missing), to follow a name: ``f"p {..}"``."""
    text = format_p(p, digits)
    return "= n/a" if text == MISSING else text if text.startswith("<") else f"= {text}"


def format_number(value, decimals: int | None = None, sig: int = 3) -> str:
    """A number for display: ``decimals`` fixed decimals, or (None) integers as integers and
    other values to ``sig`` significant digits (scientific only below 0.001 or at 10^6)."""
    v = _finite(value)
    if v is None:
        return MISSING
    if decimals is not None:
        out = f"{v:.{decimals}f}"
        return "0" if decimals == 0 and out == "-0" else out
    if v.is_integer() and abs(v) < 1e6:
        return str(int(v))
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
        return f"{v:.{max(sig - 1, 0)}e}"
    digits = max(sig - 1 - math.floor(math.log10(abs(v))), 0) if v else 0
    return f"{v:.{digits}f}"


def column_label(name) -> str:
    """The human header of a result-table column (``q_fdr`` -> ``FDR q``)."""
    name = str(name)
    if name in LABELS:
        return LABELS[name]
    text = name.replace("_", " ")
    return text[:1].upper() + text[1:]


def metric_label(metric: str) -> str:
    """A connectivity metric for display: ``within_DMN`` -> ``DMN (within)``,
    ``between_DMN_SN`` -> ``DMN\u2013SN``; other names unchanged."""
    metric = str(metric)
    if metric.startswith("within_"):
        return f"{metric[7:]} (within)"
    if metric.startswith("between_") and metric.count("_") == 2:
        return "\u2013".join(metric.split("_")[1:])
    return metric


def format_value(column, value) -> str:
    """One table cell, formatted by what its column holds (see :data:`P_COLUMNS`,
    :data:`DECIMALS`); booleans as yes/no, missing values as :data:`MISSING`."""
    column = str(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool) or (hasattr(value, "dtype") and value.dtype == bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("", "n/a", "nan"):
            return MISSING
        if column in ("include", "included", "found", "significant", "converged",
                      "same_direction", "both_significant", "significance_robust"):
            if low in _TRUE:
                return "yes"
            if low in _FALSE:
                return "no"
        if _finite(value) is None:
            return metric_label(value) if column == "metric" else value
    if column in P_COLUMNS:
        return format_p(value)
    return format_number(value, DECIMALS.get(column))


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """Every cell of ``table`` as display text (:func:`format_value`) under human headers
    (:func:`column_label`)."""
    out = pd.DataFrame({column_label(c): [format_value(c, v) for v in table[c].tolist()]
                        for c in table.columns}, index=table.index)
    return out
