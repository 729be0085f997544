"""Figures of the report (DESIGN stage 6): glass brains, study effects, forest, funnel,
bubble, clinical scatter and QC overview plots.

Every function draws on its own :class:`matplotlib.figure.Figure` (no pyplot state, so it
works under any backend and in parallel Snakemake jobs), writes the figure as PNG (150 dpi)
and SVG (text kept as text, no date, fixed element ids: same input -> same bytes) next to
``out_stem`` atomically (:func:`msnet.io.atomic.atomic_path`) and returns both paths. Brains
are drawn with :func:`nilearn.plotting.plot_glass_brain`; everything else is plain
matplotlib. matplotlib and nilearn are imported inside the functions (start-up cost of the
short Snakemake jobs).

Inputs are the tables the group, clinical and meta stages write (a DataFrame or a TSV path);
empty inputs give a figure that says "no data" rather than an error, so the report always
has every figure it declares.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from msnet import ANALYSIS_NETWORKS
from msnet.formatting import p_relation as fmt_p  # noqa: F401 (p < 0.001 / p = 0.034)
from msnet.io.atomic import atomic_path

DPI = 150
"""Resolution of the PNG figures."""

MAX_WIDTH_IN = 11.5
"""Widest figure (inches). The report shows each SVG at its natural size (1 in = 96 px,
never enlarged), so a figure up to 1,104 px wide is displayed unscaled in a window of
1,200 px or more and its text has the size set here."""

FS_SMALL, FS, FS_TITLE = 9.0, 10.0, 11.5
"""Font sizes (pt) of tick labels and annotations, axis labels and panel titles, figure
titles: 12, 13.3 and 15.3 px at the displayed size (1 pt = 4/3 px)."""

_STYLE = {"font.size": FS, "axes.titlesize": FS, "axes.labelsize": FS,
          "xtick.labelsize": FS_SMALL, "ytick.labelsize": FS_SMALL,
          "legend.fontsize": FS_SMALL, "figure.titlesize": FS_TITLE}
"""rcParams of every figure (text sizes for the displayed size, see :data:`FS`)."""

UNITS = {"disease_duration": "years", "edss": "EDSS points", "age": "years",
         "t2lv": "ml", "mean_fd": "mm"}
"""Units of the subject-level clinical variables and covariates (axis labels)."""

VARIABLE_LABELS = {"disease_duration": "disease duration", "edss": "EDSS", "age": "age",
                   "t2lv": "T2 lesion volume", "mean_fd": "mean FD"}
"""Readable names of the subject-level variables (axis labels)."""

INCREASE_STYLE = {"marker": "^", "color": "gold", "label": "published MS > HC"}
DECREASE_STYLE = {"marker": "v", "color": "limegreen", "label": "published MS < HC"}
"""Markers of the published findings on glass brains (shape and colour give the direction)."""

MODERATOR_LABELS = {
    "age": "mean age (years)",
    "pctfemale": "female (%)",
    "duration": "mean disease duration (years)",
    "edss": "mean EDSS",
    "t2lv": "mean T2 lesion volume (ml)",
}
"""Axis labels of the study-level moderators of :func:`msnet.meta.study_moderators`."""

_POINT = "#2b5d8a"
_POOLED = "#b2182b"
_GROUP_COLORS = {"MS": "#d95f02", "HC": "#1b9e77"}


# --------------------------------------------------------------------------- helpers


def save_figure(fig, out_stem) -> dict:
    """Write ``fig`` as ``{out_stem}.png`` and ``{out_stem}.svg`` atomically.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    out_stem : str or Path
        Output path without extension; parent folders are created.

    Returns
    -------
    dict
        ``{"png": path, "svg": path}`` (str).
    """
    import matplotlib

    out_stem = Path(out_stem)
    paths = {}
    style = {"svg.hashsalt": "msnet", "svg.fonttype": "none"}
    with matplotlib.rc_context(style):
        for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
            path = out_stem.with_name(f"{out_stem.name}.{ext}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=ext, dpi=DPI, bbox_inches="tight", metadata=meta,
                            facecolor="white")
            paths[ext] = str(path)
    return paths


def _styled(function):
    """Draw ``function``'s figure with :data:`_STYLE` (text sizes for the displayed size)."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return function(*args, **kwargs)

    return wrapper


def _new_figure(width, height, constrained=True):
    from matplotlib.figure import Figure

    return Figure(figsize=(min(width, MAX_WIDTH_IN), height),
                  layout="constrained" if constrained else None)


def _table(table) -> pd.DataFrame:
    """A DataFrame, or a TSV read with ``n/a`` as missing."""
    if table is None:
        return pd.DataFrame()
    if isinstance(table, pd.DataFrame):
        return table.copy()
    return pd.read_csv(table, sep="\t", na_values=["n/a"])


def _get(row, key, default=np.nan):
    """Value of ``key`` in a dict/Series row (NaN when absent or None)."""
    if row is None:
        return default
    value = row.get(key, default) if hasattr(row, "get") else default
    return default if value is None else value


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _no_data(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=FS,
            color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def network_of(metric: str) -> str:
    """Analysis network of a within-network metric name (``within_DMN`` -> ``DMN``)."""
    return str(metric).removeprefix("within_")


@contextmanager
def _frozen_gc():
    """Freeze the objects alive now out of the garbage collector's reach for a while.

    nilearn calls ``gc.collect()`` every time it reads image data; in a process holding
    many objects (pandas, matplotlib) each call takes a few hundred ms. Frozen objects are
    skipped by those collections (about 1 s saved per glass brain) and unfrozen afterwards.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _load_img(img):
    import nibabel as nib

    return nib.load(str(img)) if isinstance(img, (str, Path)) else img


# --------------------------------------------------------------------------- brains


@_styled
def plot_glass_brain(stat_img, logp_fwe_img, out_stem, title, alpha=0.05, network=None,
                     stat_label="t", markers: bool = True) -> dict:
    """Glass brain of a statistic map thresholded at voxel-level FWE p < ``alpha``.

    Only voxels with ``p_FWE < alpha`` (``|logp| > -log10 alpha``; see
    :func:`msnet.report.fwe_significant`) are drawn, in colour by sign (red MS > HC, blue
    MS < HC); the published findings of ``network`` are overlaid as markers (triangle up:
    published increase, down: decrease). When no voxel survives, an empty glass brain with
    the markers is drawn and the title says so.

    Parameters
    ----------
    stat_img : path or nibabel image
        Pooled MS-vs-HC t map (``pooled_network-{net}_stat-t_map``) or meta z map.
    logp_fwe_img : path or nibabel image
        ``-log10 p_FWE`` on the same grid (signed or unsigned; the absolute value is used).
    out_stem : path
        Output path without extension.
    title : str
        Figure title (the threshold result is appended).
    alpha : float
        FWE level.
    network : str, optional
        Network whose published findings are marked (all findings when None).
    stat_label : str
        Name of the statistic for the title (``t`` or ``z``).
    markers : bool
        Overlay the published findings (False: the map alone, e.g. for another literature).

    Returns
    -------
    dict
        ``{"png": path, "svg": path}``.
    """
    import nibabel as nib
    from matplotlib.lines import Line2D
    from nilearn import plotting

    from msnet.atlas import published_findings
    from msnet.report import fwe_significant

    stat_img, logp_img = _load_img(stat_img), _load_img(logp_fwe_img)
    stat = np.asarray(stat_img.dataobj, np.float64)
    sig = fwe_significant(np.asarray(logp_img.dataobj, np.float64), alpha)
    sig &= np.isfinite(stat) & (stat != 0)
    fig = _new_figure(11, 3.6, constrained=False)
    axes = [0.0, 0.0, 1.0, 0.86]
    if sig.any():
        vol = np.where(sig, stat, 0.0).astype(np.float32)
        vmax = float(np.abs(vol).max())
        thr = float(np.abs(vol[sig]).min()) * 0.999
        with _frozen_gc():
            display = plotting.plot_glass_brain(
                nib.Nifti1Image(vol, stat_img.affine), figure=fig, axes=axes,
                display_mode="lyrz", plot_abs=False, threshold=thr, vmax=vmax,
                symmetric_cbar=True, colorbar=True, cmap="RdBu_r")
        heading = (f"{title}: {int(sig.sum())} voxels with FWE p < {alpha:g} "
                   f"(|{stat_label}| \u2265 {thr:.2f})")
        cbar = getattr(display, "_cbar", None)  # nilearn keeps its colorbar here (0.10-0.13)
        if cbar is not None:
            cbar.ax.tick_params(labelsize=FS_SMALL)
            cbar.ax.set_title(stat_label, fontsize=FS, style="italic")
    else:
        with _frozen_gc():
            display = plotting.plot_glass_brain(None, figure=fig, axes=axes, display_mode="lyrz")
        heading = f"{title}: no voxel survives FWE p < {alpha:g}"
    findings = published_findings()
    if not markers:
        findings = findings.iloc[:0]
    elif network is not None:
        findings = findings[findings["network"] == network]
    handles = []
    for direction, style in ((1, INCREASE_STYLE), (-1, DECREASE_STYLE)):
        sel = findings[findings["direction"] == direction]
        if sel.empty:
            continue
        display.add_markers(sel[["x", "y", "z"]].to_numpy(float), marker_color=style["color"],
                            marker_size=70, marker=style["marker"], edgecolors="k",
                            linewidths=0.8)
        handles.append(Line2D([], [], linestyle="", marker=style["marker"], markersize=8,
                              markerfacecolor=style["color"], markeredgecolor="k",
                              label=style["label"]))
    fig.suptitle(heading, x=0.01, y=0.99, ha="left", va="top", fontsize=FS_TITLE)
    if handles:
        fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(0.99, 1.0), ncol=2,
                   fontsize=FS_SMALL, frameon=False)
    return save_figure(fig, out_stem)


# --------------------------------------------------------------------------- group


@_styled
def plot_study_effects(table, out_stem, metrics=None) -> dict:
    """Hedges' g ± 95% CI of MS vs HC per study, one panel per analysis network.

    Parameters
    ----------
    table : pandas.DataFrame or path
        Per-study group tables concatenated (``study-{id}_desc-MSvsHC_networks.tsv``
        columns ``study_id, metric, g, g_ci_low, g_ci_high, n_ms, n_hc``); a row with
        ``study_id == "pooled"`` (the mega-analysis) is drawn as a diamond at the bottom.
        Rows without a finite g (study excluded for the metric) are left out.
    out_stem : path
    metrics : list of str, optional
        Metrics to draw, one panel each (default ``within_{net}`` for the analysis networks).

    Returns
    -------
    dict
        ``{"png": path, "svg": path}``.
    """
    data = _table(table)
    metrics = list(metrics or [f"within_{n}" for n in ANALYSIS_NETWORKS])
    if not data.empty:
        data = data[data["metric"].isin(metrics)]
        data = data.assign(study_id=data["study_id"].astype(str))
    studies = sorted({str(s) for s in data.get("study_id", [])} - {"pooled"})
    if not data.empty:
        data = data[np.isfinite(pd.to_numeric(data["g"], errors="coerce"))]
    order = studies + (["pooled"] if (data.get("study_id", pd.Series()) == "pooled").any() else [])
    fig = _new_figure(2.6 * len(metrics) + 1.0, 1.6 + 0.22 * max(len(order), 4))
    axes = fig.subplots(1, len(metrics), sharey=True, sharex=True, squeeze=False)[0]
    ypos = {s: len(order) - 1 - i for i, s in enumerate(order)}
    missing = {}
    for ax, metric in zip(axes, metrics):
        ax.set_title(f"{network_of(metric)} (within-network FC)", fontsize=FS)
        sub = data[data["metric"] == metric] if not data.empty else data
        if sub.empty:
            _no_data(ax, "no study with an estimate")
            continue
        absent = [s for s in studies if s not in set(sub["study_id"])]
        for study in absent:  # a study without an estimate keeps its row, marked
            ax.annotate("no estimate", (0.02, ypos[study]), xycoords=("axes fraction", "data"),
                        va="center", fontsize=FS_SMALL, color="0.45", style="italic")
        missing.update({s: missing.get(s, []) + [network_of(metric)] for s in absent})
        ax.axvline(0, color="0.5", lw=0.8, zorder=0)
        for row in sub.itertuples():
            y, pooled = ypos[str(row.study_id)], str(row.study_id) == "pooled"
            lo, hi = _num(getattr(row, "g_ci_low", np.nan)), _num(getattr(row, "g_ci_high", np.nan))
            ax.plot([lo, hi], [y, y], color=_POOLED if pooled else _POINT, lw=1.2)
            ax.plot(row.g, y, marker="D" if pooled else "s", ms=7 if pooled else 4,
                    color=_POOLED if pooled else _POINT)
        ax.set_xlabel("Hedges' g (MS \u2212 HC)")
        ax.grid(axis="x", color="0.9", lw=0.6)
    axes[0].set_yticks(list(ypos.values()), [s if s != "pooled" else "pooled (mega)"
                                             for s in ypos])
    axes[0].tick_params(axis="y", labelsize=FS_SMALL)
    fig.suptitle("MS vs HC per study: Hedges' g with 95% CI", fontsize=FS_TITLE)
    if missing:
        fig.supxlabel("No estimate (study excluded for that network): " + "; ".join(
            f"{s} ({', '.join(n)})" for s, n in missing.items()), fontsize=FS_SMALL,
            color="0.3", x=0.01, ha="left")
    return save_figure(fig, out_stem)


# --------------------------------------------------------------------------- meta


def _included(forest_data) -> pd.DataFrame:
    data = _table(forest_data)
    if data.empty:
        return data
    inc = data["included"].astype(str).str.lower().isin(["true", "1", "1.0"])
    data = data[inc].copy()
    for col in ("g", "var_g", "se", "ci_low", "ci_high", "weight"):
        if col in data:
            data[col] = pd.to_numeric(data[col], errors="coerce")
    if "se" not in data or data["se"].isna().all():
        data["se"] = np.sqrt(data["var_g"])
    return data[np.isfinite(data["g"]) & np.isfinite(data["se"])]


@_styled
def plot_forest(forest_data, meta_row, out_stem, title=None, xlim=None) -> dict:
    """Forest plot of one metric: studies sorted by g, pooled diamond, prediction interval.

    Squares have an area proportional to the study's random-effects weight; lines are the
    95% CIs; the diamond spans the pooled 95% CI; the bottom line is the 95% prediction
    interval (where a new study's true effect is expected to fall).

    Parameters
    ----------
    forest_data : pandas.DataFrame or path
        Rows of ``meta_desc-forest_data.tsv`` for ONE metric (``study, included, g, se,
        ci_low, ci_high, weight, exclusion_reason``).
    meta_row : dict or pandas.Series
        The metric's row of ``meta_desc-networks_stats.tsv`` (``g, ci_low, ci_high, p,
        pi_low, pi_high, k, tau2, i2, q_p, model, method``).
    out_stem : path
    title : str, optional
    xlim : (float, float), optional
        x-axis range (the report gives every network's forest plot the same one).

    Returns
    -------
    dict
        ``{"png": path, "svg": path}``.
    """
    from matplotlib.patches import Polygon

    all_rows = _table(forest_data)
    data = _included(forest_data).sort_values("g", kind="stable")
    n = len(data)
    fig = _new_figure(6.8, 2.0 + 0.26 * max(n, 3))
    ax = fig.subplots()
    ax.set_title(title or "Forest plot", fontsize=FS_TITLE, loc="left")
    if n == 0:
        _no_data(ax, "no study with a valid effect size")
        return save_figure(fig, out_stem)
    ys = np.arange(n, 0, -1) + 1.0
    weight = data["weight"].fillna(0).to_numpy(float) if "weight" in data else np.ones(n)
    size = 20 + 180 * weight / max(weight.max(), 1e-12)
    ax.hlines(ys, data["ci_low"], data["ci_high"], color="k", lw=1)
    ax.scatter(data["g"], ys, s=size, marker="s", color=_POINT, zorder=3)
    mu, lo, hi = (_num(_get(meta_row, k)) for k in ("g", "ci_low", "ci_high"))
    labels = list(data["study"].astype(str))
    ticks = list(ys)
    right = [f"{g:5.2f} [{a:5.2f}, {b:5.2f}]  {w:4.1f}%" for g, a, b, w in
             zip(data["g"], data["ci_low"], data["ci_high"], weight)]
    if np.isfinite(mu):
        model = f"{_get(meta_row, 'model', 'random')} ({_get(meta_row, 'method', '')})"
        ax.add_patch(Polygon([[lo, 1.0], [mu, 1.3], [hi, 1.0], [mu, 0.7]], closed=True,
                             color=_POOLED, zorder=3))
        ax.axvline(mu, color=_POOLED, lw=0.8, ls=":", zorder=0)
        labels.append(f"Pooled, {model}")
        ticks.append(1.0)
        right.append(f"{mu:5.2f} [{lo:5.2f}, {hi:5.2f}]  p {fmt_p(_get(meta_row, 'p'))}")
        pi_lo, pi_hi = _num(_get(meta_row, "pi_low")), _num(_get(meta_row, "pi_high"))
        if np.isfinite(pi_lo) and np.isfinite(pi_hi):
            ax.plot([pi_lo, pi_hi], [0.2, 0.2], color=_POOLED, lw=1.5)
            ax.plot([pi_lo, pi_lo], [0.05, 0.35], color=_POOLED, lw=1.5)
            ax.plot([pi_hi, pi_hi], [0.05, 0.35], color=_POOLED, lw=1.5)
            labels.append("95% prediction interval")
            ticks.append(0.2)
            right.append(f"[{pi_lo:5.2f}, {pi_hi:5.2f}]")
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks(ticks, labels, fontsize=FS_SMALL)
    ax.set_ylim(-0.3, n + 2.2)
    for y, text in zip(ticks, right):
        ax.annotate(text, (1.01, y), xycoords=("axes fraction", "data"), va="center",
                    fontsize=FS_SMALL, family="monospace")
    ax.annotate(" g    [95% CI]       weight", (1.01, n + 1.75),
                xycoords=("axes fraction", "data"),
                va="center", fontsize=FS_SMALL, family="monospace", weight="bold")
    ax.set_xlabel("Hedges' g (MS \u2212 HC)")
    if xlim is not None:
        ax.set_xlim(*xlim)
    excluded = sorted(set(all_rows["study"].astype(str)) - set(data["study"].astype(str))) \
        if "study" in all_rows else []
    foot = (f"k = {n}, \u03c4\u00b2 = {_num(_get(meta_row, 'tau2')):.3f}, "
            f"I\u00b2 = {_num(_get(meta_row, 'i2')):.1f}%, Q p {fmt_p(_get(meta_row, 'q_p'))}")
    if excluded:
        foot += (f"; not in the analysis (no valid effect size): {', '.join(excluded)}")
    fig.supxlabel(foot, fontsize=FS_SMALL, color="0.3", x=0.02, ha="left")
    return save_figure(fig, out_stem)


@_styled
def plot_funnel(forest_data, meta_row, egger_row, out_stem, title=None) -> dict:
    """Funnel plot of one metric: g against its standard error with a pseudo 95% CI funnel.

    The funnel is ``pooled g ± 1.96 SE`` (pooled g of ``meta_row``); the SE axis is
    inverted (precise studies at the top). The title gives Egger's test p.

    Parameters
    ----------
    forest_data : pandas.DataFrame or path
        Rows of ``meta_desc-forest_data.tsv`` for one metric.
    meta_row : dict or pandas.Series
        The metric's row of ``meta_desc-networks_stats.tsv``.
    egger_row : dict or pandas.Series or None
        The metric's row of ``meta_desc-egger_stats.tsv`` (``p``, ``bias``, ``warning``).
    out_stem : path
    title : str, optional

    Returns
    -------
    dict
        ``{"png": path, "svg": path}``.
    """
    data = _included(forest_data)
    fig = _new_figure(4.6, 4.2)
    ax = fig.subplots()
    egger = f"Egger p {fmt_p(_get(egger_row, 'p'))}"
    ax.set_title(f"{title or 'Funnel plot'}\n{egger}", fontsize=FS)
    if data.empty:
        _no_data(ax, "no study with a valid effect size")
        return save_figure(fig, out_stem)
    mu = _num(_get(meta_row, "g"))
    mu = mu if np.isfinite(mu) else float(np.average(data["g"], weights=1 / data["se"] ** 2))
    top = float(data["se"].max()) * 1.1
    se = np.linspace(0, top, 50)
    ax.fill_betweenx(se, mu - 1.96 * se, mu + 1.96 * se, color="0.93", zorder=0)
    ax.plot(mu - 1.96 * se, se, color="0.5", lw=0.8, ls="--")
    ax.plot(mu + 1.96 * se, se, color="0.5", lw=0.8, ls="--")
    ax.axvline(mu, color=_POOLED, lw=1, label=f"pooled g = {mu:.2f}")
    ax.axvline(0, color="0.4", lw=0.6, ls=":")
    ax.scatter(data["g"], data["se"], s=22, color=_POINT, edgecolors="k", linewidths=0.4,
               zorder=3)
    ax.set_ylim(top, 0)
    ax.set_xlabel("Hedges' g (MS \u2212 HC)")
    ax.set_ylabel("standard error")
    ax.legend(fontsize=FS_SMALL, loc="lower right", frameon=False)
    return save_figure(fig, out_stem)


@_styled
def plot_bubble(forest_data, moderators, metareg, out_stem, title=None) -> dict:
    """Meta-regression bubble plots of one metric: moderator vs g, one panel per moderator.

    Bubble area is proportional to the study's random-effects weight; the line is the
    fitted single-moderator meta-regression (``intercept + beta * x``); the panel title gives
    β and its p (Wald and permutation). Moderators that could not be used (too few studies,
    constant) get a panel with the reason.

    Parameters
    ----------
    forest_data : pandas.DataFrame or path
        Rows of ``meta_desc-forest_data.tsv`` for one metric (``study, g, weight``).
    moderators : pandas.DataFrame or path
        ``meta_desc-studies_moderators.tsv`` (``study`` and one column per moderator).
    metareg : pandas.DataFrame or path
        The metric's rows of ``meta_desc-metaregression_stats.tsv`` (``model, moderator,
        beta, p, p_perm, warning``); ``single:{m}`` models are drawn.
    out_stem : path
    title : str, optional

    Returns
    -------
    dict
        ``{"png": path, "svg": path}``.
    """
    data = _included(forest_data)
    mods = _table(moderators)
    reg = _table(metareg)
    singles = ([] if reg.empty else
               list(dict.fromkeys(m.split(":", 1)[1] for m in reg["model"].astype(str)
                                  if m.startswith("single:"))))
    n_panels = max(len(singles), 1)
    ncols = min(n_panels, 3)
    nrows = -(-n_panels // ncols)
    fig = _new_figure(3.6 * ncols + 0.4, 3.4 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    fig.suptitle(title or "Meta-regression", fontsize=FS_TITLE)
    if not singles:
        _no_data(axes[0], "no meta-regression available")
        return save_figure(fig, out_stem)
    if not mods.empty:
        mods["study"] = mods["study"].astype(str)
    for ax, name in zip(axes, singles):
        rows = reg[reg["model"] == f"single:{name}"]
        slope = rows[rows["moderator"] == name]
        inter = rows[rows["moderator"] == "intercept"]
        ax.set_xlabel(MODERATOR_LABELS.get(name, name), fontsize=FS)
        ax.set_ylabel("Hedges' g (MS \u2212 HC)", fontsize=FS)
        beta = _num(slope["beta"].iloc[0]) if len(slope) and "beta" in slope else np.nan
        if not np.isfinite(beta) or mods.empty or name not in mods:
            why = rows["warning"].dropna().astype(str) if "warning" in rows else pd.Series()
            ax.set_title(name, fontsize=FS)
            _no_data(ax, "not estimable" + (f":\n{why.iloc[0]}" if len(why) and why.iloc[0]
                                            else ""))
            continue
        merged = data.merge(mods[["study", name]], on="study", how="inner")
        merged = merged[np.isfinite(pd.to_numeric(merged[name], errors="coerce"))]
        x = merged[name].to_numpy(float)
        w = merged["weight"].fillna(0).to_numpy(float) if "weight" in merged else np.ones(len(x))
        ax.scatter(x, merged["g"], s=30 + 400 * w / max(w.max(), 1e-12), color=_POINT,
                   alpha=0.55, edgecolors="k", linewidths=0.5, zorder=3)
        b0 = _num(inter["beta"].iloc[0]) if len(inter) else np.nan
        if len(x) and np.isfinite(b0):
            grid = np.linspace(x.min(), x.max(), 20)
            ax.plot(grid, b0 + beta * grid, color=_POOLED, lw=1.5)
        ax.axhline(0, color="0.5", lw=0.6, ls=":")
        p_perm = _get(slope.iloc[0], "p_perm")
        ax.set_title(f"{name}: \u03b2 = {beta:.3f}, p {fmt_p(_get(slope.iloc[0], 'p'))}"
                     f"\n(permutation p {fmt_p(p_perm)})", fontsize=FS)
    return save_figure(fig, out_stem)


# --------------------------------------------------------------------------- clinical


@_styled
def plot_clinical_scatter(scatter_table, out_stem, stats_table=None, metrics=None) -> dict:
    """Partial-regression (added-variable) plots per network × clinical variable, within MS.

    Each panel plots the residual of the connectivity metric against the residual of the
    clinical variable, both after regressing out every other term of the model (other
    clinical variables, covariates, study indicators), with the least-squares line through
    the residuals (the study-fixed-effect slope). The title gives β and p of the pooled
    model from ``stats_table`` (MixedLM with a study random intercept); without it, the
    residual slope and an approximate p (n − 2 df) are shown.

    Parameters
    ----------
    scatter_table : pandas.DataFrame or path
        ``pooled_desc-partialregression_scatter.tsv`` (``metric, variable, x_resid,
        y_resid``).
    out_stem : path
    stats_table : pandas.DataFrame or path, optional
        ``pooled_desc-clinical_networks.tsv`` (``metric, variable, beta, p``).
    metrics : list of str, optional
        Rows of the panel grid (default ``within_{net}`` of the analysis networks present).

    Returns
    -------
    dict
        ``{"png": path, "svg": path}``.
    """
    from scipy import stats as sps

    data = _table(scatter_table)
    table = _table(stats_table)
    if metrics is None:
        present = set(data["metric"]) if not data.empty else set()
        metrics = [f"within_{n}" for n in ANALYSIS_NETWORKS if f"within_{n}" in present]
    variables = list(dict.fromkeys(data["variable"])) if not data.empty else []
    nr, nc = max(len(metrics), 1), max(len(variables), 1)
    fig = _new_figure(2.7 * nc + 0.6, 2.7 * nr + 0.6)
    axes = fig.subplots(nr, nc, squeeze=False)
    fig.suptitle("Clinical associations within MS (partial-regression plots, pooled)",
                 fontsize=FS_TITLE)
    if not metrics or not variables:
        _no_data(axes[0, 0], "no clinical association data")
        return save_figure(fig, out_stem)
    for i, metric in enumerate(metrics):
        for j, var in enumerate(variables):
            ax = axes[i, j]
            sub = data[(data["metric"] == metric) & (data["variable"] == var)]
            x = pd.to_numeric(sub["x_resid"], errors="coerce").to_numpy(float)
            y = pd.to_numeric(sub["y_resid"], errors="coerce").to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y)
            x, y = x[ok], y[ok]
            unit = UNITS.get(var)
            ax.set_xlabel(f"{VARIABLE_LABELS.get(var, var)} (residual"
                          + (f", {unit})" if unit else ")"), fontsize=FS_SMALL)
            ax.set_ylabel(f"{network_of(metric)} FC (residual, Fisher z)", fontsize=FS_SMALL)
            ax.tick_params(labelsize=FS_SMALL)
            if len(x) < 3 or not np.any(x != 0):
                ax.set_title(f"{network_of(metric)} \u00d7 {VARIABLE_LABELS.get(var, var)}",
                             fontsize=FS)
                _no_data(ax, "not estimable")
                continue
            slope = float(x @ y / (x @ x))
            ax.scatter(x, y, s=10, color=_POINT, alpha=0.5, linewidths=0)
            grid = np.linspace(x.min(), x.max(), 20)
            ax.plot(grid, slope * grid, color=_POOLED, lw=1.5)
            row = (table[(table["metric"] == metric) & (table["variable"] == var)]
                   if not table.empty else table)
            if len(row) and np.isfinite(_num(row["beta"].iloc[0])):
                beta, p = _num(row["beta"].iloc[0]), row["p"].iloc[0]
                how = str(row["method"].iloc[0]) if "method" in row else "pooled model"
            else:
                resid = y - slope * x
                se = np.sqrt(resid @ resid / (len(x) - 2) / (x @ x))
                beta, how = slope, "residual OLS"
                p = 2 * sps.t.sf(abs(slope / se), len(x) - 2) if se > 0 else np.nan
            ax.set_title(f"{network_of(metric)} \u00d7 {VARIABLE_LABELS.get(var, var)}\n"
                         f"\u03b2 = {beta:.3g}, "
                         f"p {fmt_p(p)} ({how}, n = {len(x)})", fontsize=FS_SMALL)
    return save_figure(fig, out_stem)


# --------------------------------------------------------------------------- QC


def _strip_box(ax, table, column, rng, threshold=None, ylabel=""):
    """Box plot per group with the subjects as jittered points (excluded ones as crosses)."""
    groups = [g for g in ("MS", "HC") if g in set(table["group"])]
    groups += sorted(set(table["group"].astype(str)) - set(groups))
    values = pd.to_numeric(table[column], errors="coerce") if column in table else None
    if values is None or not np.isfinite(values).any():
        _no_data(ax, f"no {column} values")
        return
    data = [values[table["group"] == g].dropna().to_numpy(float) for g in groups]
    ax.boxplot(data, positions=range(len(groups)), widths=0.5, showfliers=False,
               medianprops={"color": "k"})
    for k, g in enumerate(groups):
        sel = (table["group"] == g) & values.notna()
        inc = table.loc[sel, "include"].astype(bool).to_numpy()
        x = k + rng.uniform(-0.18, 0.18, int(sel.sum()))
        color = _GROUP_COLORS.get(g, "0.4")
        ax.scatter(x[inc], values[sel][inc], s=10, color=color, alpha=0.7, linewidths=0)
        ax.scatter(x[~inc], values[sel][~inc], s=22, color="k", marker="x", linewidths=1)
    if threshold is not None:
        ax.axhline(threshold, color=_POOLED, lw=0.8, ls="--", label=f"QC limit {threshold:g}")
        ax.legend(fontsize=FS_SMALL, frameon=False)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel, fontsize=FS)


@_styled
def plot_qc_overview(qc_table, out_stem, qc_options=None) -> dict:
    """QC overview: mean FD and censored volumes by group, subjects kept/excluded per study.

    Parameters
    ----------
    qc_table : pandas.DataFrame or path
        :func:`msnet.qc.qc_summary` output (``study_id, group, include, mean_fd,
        pct_censored``).
    out_stem : path
    qc_options : dict, optional
        The ``qc`` config section; ``max_mean_fd`` and ``max_pct_censored`` are drawn as
        dashed lines.

    Returns
    -------
    dict
        ``{"png": path, "svg": path}``.
    """
    table = _table(qc_table)
    qc_options = qc_options or {}
    studies = sorted(set(table["study_id"].astype(str))) if not table.empty else []
    fig = _new_figure(13, max(4.0, 1.2 + 0.2 * len(studies)))
    axes = fig.subplots(1, 3, width_ratios=[1, 1, 1.4])
    fig.suptitle("Dataset and quality control (crosses: excluded subjects)", fontsize=FS_TITLE)
    if table.empty:
        for ax in axes:
            _no_data(ax, "no QC data")
        return save_figure(fig, out_stem)
    if "group" not in table:
        table["group"] = "n/a"
    table["group"] = table["group"].fillna("n/a").astype(str)
    table["include"] = table["include"].astype(str).str.lower().isin(["true", "1", "1.0"])
    rng = np.random.default_rng(0)
    _strip_box(axes[0], table, "mean_fd", rng, qc_options.get("max_mean_fd"), "mean FD (mm)")
    axes[0].set_title("Head motion", fontsize=FS)
    _strip_box(axes[1], table, "pct_censored", rng, qc_options.get("max_pct_censored"),
               "volumes censored (%)")
    axes[1].set_title("Censoring", fontsize=FS)
    ax = axes[2]
    table["study_id"] = table["study_id"].astype(str)
    y = np.arange(len(studies))[::-1]
    left = np.zeros(len(studies))
    groups = [g for g in ("MS", "HC") if g in set(table["group"])]
    groups += sorted(set(table["group"]) - set(groups))
    parts = [(f"{g} included", (table["group"] == g) & table["include"],
              _GROUP_COLORS.get(g, "0.6")) for g in groups]
    parts.append(("excluded", ~table["include"], "0.15"))
    for label, sel, color in parts:
        counts = table[sel].groupby("study_id").size().reindex(studies, fill_value=0)
        ax.barh(y, counts.to_numpy(), left=left, color=color, label=label, height=0.75)
        left += counts.to_numpy()
    ax.set_yticks(y, studies, fontsize=FS_SMALL)
    ax.set_xlabel("subjects")
    ax.set_title("Subjects per study", fontsize=FS)
    ax.legend(fontsize=FS_SMALL, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, out_stem)
