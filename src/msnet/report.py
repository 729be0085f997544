"""The HTML report (DESIGN stage 6): every result of the run in one self-contained page.

* :func:`compare_with_published` – is each published MS-vs-HC finding recovered by a map?
* :func:`methods_text` – a methods paragraph written from the configuration actually used;
* :func:`build_report` – the one function the Snakemake rule ``report`` calls: reads all
  result files, draws every figure (:mod:`msnet.plotting`) into ``results/figures/`` and
  writes ``results/report.html`` (PNG figures embedded as base64, inline CSS, no external
  resources: it opens offline and can be mailed as one file) and
  ``results/report_desc-published_comparison.tsv``.

The page is written from plain strings (no template engine) and holds no time stamp, so the
same results give the same bytes.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from msnet import ANALYSIS_NETWORKS, __version__
from msnet.errors import MsnetInputError
from msnet.io.atomic import write_text, write_tsv

LOG = logging.getLogger(__name__)

SECTIONS = (
    ("dataset-qc", "Dataset & QC overview"),
    ("published-findings", "Published findings vs msnet"),
    ("network-meta", "Network-level meta-analysis"),
    ("meta-regression", "Meta-regression"),
    ("voxelwise", "Voxelwise results"),
    ("clinical", "Clinical associations"),
    ("meta-vs-mega", "Meta vs mega"),
    ("methods", "Methods"),
)
"""(id, title) of the report's sections, in order; every id is an ``<h2 id=...>``."""

FIGURES = {
    "qc_overview": "qc_desc-overview",
    "study_effects": "group_desc-studyeffects",
    "glass_brain_pooled": "pooled_network-{net}_desc-glassbrain",
    "glass_brain_meta": "meta_network-{net}_desc-glassbrain",
    "forest": "meta_network-{net}_desc-forest",
    "funnel": "meta_network-{net}_desc-funnel",
    "bubble": "meta_network-{net}_desc-bubble",
    "clinical_scatter": "clinical_desc-scatter",
}
"""Figure kind -> file stem in the figures folder (``.png`` and ``.svg`` are written)."""

SOFTWARE = ("msnet", "nilearn", "nibabel", "statsmodels", "nimare", "pymare", "numpy",
            "scipy", "pandas", "matplotlib", "snakemake")
"""Distributions whose versions :func:`software_versions` reports."""

REFERENCES = {
    "esteban2019": "Esteban O, et al. fMRIPrep: a robust preprocessing pipeline for functional "
                   "MRI. Nat Methods. 2019;16:111-116.",
    "abraham2014": "Abraham A, et al. Machine learning for neuroimaging with scikit-learn. "
                   "Front Neuroinform. 2014;8:14.",
    "power2012": "Power JD, et al. Spurious but systematic correlations in functional "
                 "connectivity MRI networks arise from subject motion. NeuroImage. "
                 "2012;59:2142-2154.",
    "nickerson2017": "Nickerson LD, et al. Using dual regression to investigate network shape "
                     "and amplitude in functional connectivity analyses. Front Neurosci. "
                     "2017;11:115.",
    "seitzman2018": "Seitzman BA, et al. A set of functionally-defined brain regions with "
                    "improved representation of the subcortex and cerebellum. NeuroImage. "
                    "2020;206:116290 (preprint 2018).",
    "hedges1981": "Hedges LV. Distribution theory for Glass's estimator of effect size and "
                  "related estimators. J Educ Stat. 1981;6:107-128.",
    "dersimonian1986": "DerSimonian R, Laird N. Meta-analysis in clinical trials. Control Clin "
                       "Trials. 1986;7:177-188.",
    "viechtbauer2005": "Viechtbauer W. Bias and efficiency of meta-analytic variance "
                       "estimators in the random-effects model. J Educ Behav Stat. "
                       "2005;30:261-293.",
    "viechtbauer2010": "Viechtbauer W. Conducting meta-analyses in R with the metafor package. "
                       "J Stat Softw. 2010;36(3):1-48.",
    "egger1997": "Egger M, et al. Bias in meta-analysis detected by a simple, graphical test. "
                 "BMJ. 1997;315:629-634.",
    "winkler2014": "Winkler AM, et al. Permutation inference for the general linear model. "
                   "NeuroImage. 2014;92:381-397.",
    "smith2009": "Smith SM, Nichols TE. Threshold-free cluster enhancement: addressing "
                 "problems of smoothing, threshold dependence and localisation in cluster "
                 "inference. NeuroImage. 2009;44:83-98.",
    "molder2021": "M\u00f6lder F, et al. Sustainable data analysis with Snakemake. "
                  "F1000Research. 2021;10:33.",
}
"""Works cited by :func:`methods_text`."""

NA_TEXT = "not available"


# --------------------------------------------------------------------------- published


def fwe_significant(logp, alpha: float = 0.05) -> np.ndarray:
    """Voxels with FWE p < ``alpha`` in a ``-log10 p`` map (signed or unsigned).

    The group stage writes ``sign(t) * -log10 p`` and the meta stage ``-log10 p``; both are
    handled by taking the absolute value. ``p`` equal to ``alpha`` (possible with
    permutation p-values, also after float32 rounding of the map) is not significant.
    """
    logp = np.abs(np.asarray(logp, float))
    with np.errstate(over="ignore", invalid="ignore"):
        p = 10.0 ** -logp
    return np.isfinite(logp) & (p < alpha * (1.0 - 1e-6))


def _load_img(img, what):
    import nibabel as nib

    if isinstance(img, (str, Path)):
        try:
            return nib.load(str(img))
        except (OSError, nib.filebasedimages.ImageFileError) as err:
            raise MsnetInputError(f"{img}: cannot read the {what} ({err}).") from err
    return img


def compare_with_published(stat_img, logp_fwe_img, network, alpha=0.05,
                           radius_mm=12.0) -> pd.DataFrame:
    """Check whether each published finding of ``network`` is recovered by a statistic map.

    A finding counts as found when the map has a local maximum of ``stat * direction``
    (a voxel at least as large as its 26 neighbours, and > 0: the published sign) that is
    FWE-significant (:func:`fwe_significant`) and lies within ``radius_mm`` of the published
    coordinate. When several do, the strongest is reported. When none does, ``note`` says
    what the map holds there (the strongest value of the published sign within the radius
    and its p), so a near miss is visible.

    Parameters
    ----------
    stat_img : path or nibabel image
        Signed statistic (pooled t or meta z; positive = MS > HC), in MNI space.
    logp_fwe_img : path or nibabel image
        ``-log10`` voxel-level FWE p on the same grid (signed or unsigned).
    network : str
        Analysis network whose findings (:func:`msnet.atlas.published_findings`) are checked.
    alpha : float
        FWE level.
    radius_mm : float
        Search radius around each published coordinate.

    Returns
    -------
    pandas.DataFrame
        One row per finding: ``finding, network, direction`` (``MS>HC``/``MS<HC``),
        ``published_label, published_x, published_y, published_z, found, peak_x, peak_y,
        peak_z, distance_mm, statistic, peak_label`` (Harvard-Oxford), ``p_fwe, note``.
    """
    from scipy import ndimage

    from msnet.atlas import harvard_oxford_label, published_findings

    stat_img = _load_img(stat_img, "statistic map")
    logp_img = _load_img(logp_fwe_img, "-log10 FWE p map")
    if stat_img.shape[:3] != logp_img.shape[:3] or not np.allclose(stat_img.affine,
                                                                   logp_img.affine, atol=1e-3):
        raise MsnetInputError(f"network {network}: the statistic map {stat_img.shape} and the "
                              f"FWE p map {logp_img.shape} are on different grids; pass the "
                              "two maps written together by one stage.")
    stat = np.asarray(stat_img.dataobj, np.float64).reshape(stat_img.shape[:3])
    stat = np.where(np.isfinite(stat), stat, 0.0)
    logp = np.abs(np.asarray(logp_img.dataobj, np.float64).reshape(stat.shape))
    sig = fwe_significant(logp, alpha).ravel()
    ijk = np.indices(stat.shape).reshape(3, -1).T
    coords = ijk @ stat_img.affine[:3, :3].T + stat_img.affine[:3, 3]
    peaks = {}
    for sign in (1, -1):
        signed = sign * stat
        local = signed >= ndimage.maximum_filter(signed, size=3, mode="constant", cval=-np.inf)
        peaks[sign] = (signed.ravel(), (local & (signed > 0)).ravel())
    rows = []
    for f in published_findings().query("network == @network").itertuples():
        center = np.array([f.x, f.y, f.z])
        signed, local = peaks[int(f.direction)]
        near = np.linalg.norm(coords - center, axis=1) <= radius_mm
        cand = np.flatnonzero(local & near & sig)
        word = "MS>HC" if f.direction > 0 else "MS<HC"
        row = {"finding": f.finding, "network": f.network, "direction": word,
               "published_label": f.label, "published_x": f.x, "published_y": f.y,
               "published_z": f.z, "found": bool(cand.size), "peak_x": np.nan,
               "peak_y": np.nan, "peak_z": np.nan, "distance_mm": np.nan,
               "statistic": np.nan, "peak_label": "", "p_fwe": np.nan, "note": ""}
        if cand.size:
            k = cand[np.argmax(signed[cand])]
            xyz = coords[k]
            row.update(peak_x=xyz[0], peak_y=xyz[1], peak_z=xyz[2],
                       distance_mm=float(np.linalg.norm(xyz - center)),
                       statistic=float(stat.ravel()[k]), peak_label=harvard_oxford_label(xyz),
                       p_fwe=float(10.0 ** -logp.ravel()[k]))
        else:
            pool = np.flatnonzero(near & (signed > 0))
            if pool.size:
                k = pool[np.argmax(signed[pool])]
                row["note"] = (f"no FWE-significant {word} peak within {radius_mm:g} mm; "
                               f"strongest {word} value there {stat.ravel()[k]:.2f} "
                               f"(p_FWE {10.0 ** -logp.ravel()[k]:.3g})")
            else:
                row["note"] = f"no {word} value within {radius_mm:g} mm"
        rows.append(row)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS[1:])


COMPARISON_COLUMNS = ["analysis", "finding", "network", "direction", "published_label",
                      "published_x", "published_y", "published_z", "found", "peak_x",
                      "peak_y", "peak_z", "distance_mm", "statistic", "peak_label", "p_fwe",
                      "note"]
"""Columns of ``report_desc-published_comparison.tsv`` (``analysis``: ``meta`` or ``mega``)."""


def published_comparison(meta_maps: dict | None, pooled_maps: dict | None, alpha_meta=0.05,
                         alpha_mega=0.05, radius_mm=12.0) -> pd.DataFrame:
    """Run :func:`compare_with_published` on the meta z maps and the pooled t maps.

    Parameters
    ----------
    meta_maps, pooled_maps : dict or None
        Network -> ``{"z"|"t": path, "logp_fwe"|"logpfwe": path}`` (see :func:`build_report`).
    alpha_meta, alpha_mega : float
        FWE levels of the two analyses.
    radius_mm : float

    Returns
    -------
    pandas.DataFrame
        One row per finding and analysis (:data:`COMPARISON_COLUMNS`); findings of a network
        without maps are ``found = False`` with ``note`` "map not available".
    """
    from msnet.atlas import published_findings

    frames = []
    for analysis, maps, stat_key, alpha in (("meta", meta_maps, "z", alpha_meta),
                                            ("mega", pooled_maps, "t", alpha_mega)):
        for net in ANALYSIS_NETWORKS:
            entry = (maps or {}).get(net) or {}
            stat, logp = entry.get(stat_key), _logp_path(entry)
            if stat and logp and Path(stat).exists() and Path(logp).exists():
                table = compare_with_published(stat, logp, net, alpha, radius_mm)
            else:
                pub = published_findings().query("network == @net")
                table = pd.DataFrame({
                    "finding": pub["finding"], "network": net,
                    "direction": np.where(pub["direction"] > 0, "MS>HC", "MS<HC"),
                    "published_label": pub["label"], "published_x": pub["x"],
                    "published_y": pub["y"], "published_z": pub["z"], "found": False,
                    "note": f"{analysis} map not available"})
            frames.append(table.assign(analysis=analysis))
    return pd.concat(frames, ignore_index=True).reindex(columns=COMPARISON_COLUMNS)


def _logp_path(entry: dict):
    """The FWE map of a maps entry (``logp_fwe`` as the meta stage names it, or ``logpfwe``)."""
    return entry.get("logp_fwe") or entry.get("logpfwe")


# --------------------------------------------------------------------------- QC


# --------------------------------------------------------------------------- methods


def software_versions() -> dict:
    """Installed versions of :data:`SOFTWARE` (``"not installed"`` when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in SOFTWARE:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


_EXPANSION = {"basic": "", "derivatives": " with temporal derivatives",
              "power2": " with quadratic terms", "full": " with derivatives and quadratic terms"}
_N_MOTION = {"basic": 6, "derivatives": 12, "power2": 12, "full": 24}
_N_TISSUE = {"basic": 2, "derivatives": 4, "power2": 4, "full": 8}
_N_GLOBAL = {"basic": 1, "derivatives": 2, "power2": 2, "full": 4}


def _section_options(config: dict) -> dict:
    """Each stage's options: the config section merged over the module defaults."""
    from msnet import clinical, connectivity, denoise, group, meta, qc

    defaults = {"denoise": denoise.DEFAULT_OPTIONS, "qc": qc.DEFAULT_QC_OPTIONS,
                "connectivity": connectivity.DEFAULT_OPTIONS, "group": group.GROUP_DEFAULTS,
                "clinical": clinical.CLINICAL_DEFAULTS, "meta": meta.DEFAULT_OPTIONS}
    return {k: {**v, **(config.get(k) or {})} for k, v in defaults.items()}


def _join(items) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _denoise_text(d: dict) -> str:
    if d["strategy"] != "custom":
        conf = (f"nilearn's '{d['strategy']}' confound strategy (load_confounds_strategy with "
                "its preset parameters)")
    else:
        parts = []
        if d["motion"]:
            parts.append(f"{_N_MOTION[d['motion']]} motion parameters")
        if d["wm_csf"]:
            parts.append(f"{_N_TISSUE[d['wm_csf']]} white-matter/CSF signals")
        if d["global_signal"]:
            parts.append(f"{_N_GLOBAL[d['global_signal']]} global signal regressor(s)")
        if d["compcor"]:
            parts.append(f"{d['n_compcor']} {d['compcor']} CompCor components")
        conf = (f"{_join(parts) if parts else 'no confound regressors'}, selected with nilearn's "
                "load_confounds (Abraham et al., 2014)")
        if d["scrub"] is not None:
            conf += (f"; volumes with framewise displacement (FD) > {d['fd_threshold']} mm or "
                     f"standardised DVARS > {d['std_dvars_threshold']} were censored "
                     f"(with segments shorter than {d['scrub']} volumes)")
    band = [f"high-pass {d['high_pass']} Hz" if d["high_pass"] else None,
            f"low-pass {d['low_pass']} Hz" if d["low_pass"] else None]
    band = [b for b in band if b]
    steps = (["linear detrending"] if d["detrend"] else []) + (
        [f"Butterworth filtering ({', '.join(band)})"] if band else [])
    smooth = (f"spatially smoothed with a {d['smoothing_fwhm']:g} mm FWHM Gaussian kernel"
              if d["smoothing_fwhm"] else "not smoothed")
    return (f"Non-steady-state volumes were discarded and each run was denoised with {conf}. "
            f"Signals were {smooth} and cleaned in one step with the semantics of nilearn's "
            f"signal.clean ({_join(steps + ['confound regression'])}; censored volumes "
            "interpolated before filtering and removed afterwards).")


def _inference_text(o: dict) -> str:
    """Noun phrase describing the permutation inference options ``o``."""
    tests = ["voxel-level max-t family-wise error (FWE)"]
    if o.get("cluster_forming_p"):
        tests.append(f"cluster-size FWE (cluster-forming p < {o['cluster_forming_p']:g})")
    if o.get("tfce"):
        tests.append("threshold-free cluster enhancement (TFCE; Smith & Nichols, 2009) FWE")
    within = " within study" if o.get("permute_within_study") else ""
    return (f"{int(o['n_permutations'])} Freedman-Lane permutations{within} (Winkler et al., "
            f"2014) giving {_join(tests)} corrected p-values "
            f"({'two' if o.get('two_sided', True) else 'one'}-sided, alpha = {o['alpha']:g}), "
            "with Benjamini-Hochberg FDR q-values of the parametric p")


_READABLE = {"mean_fd": "mean FD", "disease_duration": "disease duration", "edss": "EDSS",
             "t2lv": "T2 lesion volume", "age": "age", "sex": "sex",
             "duration": "mean disease duration", "pctfemale": "% female"}


def _adjusted(used_note) -> str:
    used, note = used_note
    return (_names(used) if used else "no covariates") + (f" ({note})" if note else "")


def _names(items, prefix="") -> str:
    """Readable, joined variable names (``disease_duration`` -> ``disease duration``)."""
    return _join([prefix + _READABLE.get(i, i) if i not in ("duration", "pctfemale")
                  else _READABLE[i] for i in items])


def covariates_in_models(tables, configured) -> tuple[list, str]:
    """The covariates the fitted models actually adjusted for, from their result tables.

    Parameters
    ----------
    tables : list of pandas.DataFrame
        Result tables with ``covariates`` (comma-joined names of each model's covariates)
        and ``status`` columns (group or clinical, per study and pooled).
    configured : list of str
        The configured covariates (their order is kept).

    Returns
    -------
    used : list of str
        Covariates present in at least one fitted (``status == ok``) model.
    note : str
        Empty when every fitted model had every used covariate; else which covariates
        were missing from how many models.
    """
    models = []
    for table in tables:
        if table is None or "covariates" not in table or "status" not in table:
            continue
        for value in table.loc[table["status"] == "ok", "covariates"]:
            models.append([c for c in str(value).split(",") if c and c not in ("nan", "n/a")]
                          if isinstance(value, str) else [])
    seen = [c for m in models for c in m]
    used = [c for c in configured if c in seen] + [c for c in dict.fromkeys(seen)
                                                   if c not in configured]
    gaps = [f"{_names([c])} was not in {sum(c not in m for m in models)} of {len(models)}"
            for c in used if any(c not in m for m in models)]
    never = [c for c in configured if c not in used]
    notes = ([f"{'; '.join(gaps)} models (missing, constant or too few degrees of freedom "
              "in a study)"] if gaps else [])
    if never and models:
        notes.append(f"{_names(never)} could not be used in any model")
    return used, "; ".join(notes)


def methods_text(config: dict, versions: dict | None = None,
                 covariates_used: dict | None = None) -> str:
    """Write the methods section from the configuration actually used.

    Parameters
    ----------
    config : dict
        The validated workflow configuration (sections ``data``, ``simulate``, ``denoise``,
        ``qc``, ``connectivity``, ``group``, ``clinical``, ``meta``, optional ``report``);
        missing sections and keys take the stage modules' defaults.
    versions : dict, optional
        Package -> version (default :func:`software_versions`).
    covariates_used : dict, optional
        ``{"group": (used, note), "clinical": (used, note)}`` from
        :func:`covariates_in_models` on the result tables: the covariates the models actually
        had (default: the configured ones, when no result tables are at hand).

    Returns
    -------
    str
        Paragraphs separated by blank lines; the last paragraph starts with
        ``References`` and lists one reference per line.
    """
    config = config or {}
    covariates_used = covariates_used or {}
    versions = versions or software_versions()
    o = _section_options(config)
    d, q, c, g, cl, m = (o[k] for k in ("denoise", "qc", "connectivity", "group", "clinical",
                                       "meta"))
    data = config.get("data") or {}
    radius = float((config.get("report") or {}).get("radius_mm", 12.0))
    paras = []
    if data.get("mode", "simulate") == "simulate":
        s = config.get("simulate") or {}
        paras.append(
            "Data. The analysis ran on msnet's synthetic multi-study dataset, written as "
            "fMRIPrep-like derivatives (Esteban et al., 2019): per-study sample sizes are "
            f"{s.get('scale', 0.05):g} times those of the published MS rs-fMRI studies, on a "
            f"{s.get('resolution_mm', 4)} mm MNI152 grid, with MS-vs-HC changes planted at the "
            "published locations.")
    else:
        paras.append(
            "Data. Resting-state fMRI of each study was preprocessed with fMRIPrep (Esteban et "
            "al., 2019) and analysed in MNI152NLin2009cAsym space.")
    qc_rules = [f"mean FD > {q['max_mean_fd']} mm" if q["max_mean_fd"] is not None else None,
                f"more than {q['max_pct_censored']}% of volumes censored"
                if q["max_pct_censored"] is not None else None,
                f"less than {q['min_minutes_kept']} min of data left"
                if q["min_minutes_kept"] is not None else None]
    qc_rules = [r for r in qc_rules if r]
    paras.append(
        f"Denoising and quality control. {_denoise_text(d)} FD (Power et al., 2012), DVARS and "
        "temporal SNR were computed per run; subjects were excluded "
        + (f"when {' or '.join(qc_rules)}." if qc_rules else "by no automatic rule.")
        + " Every exclusion and its reason is listed in this report.")
    paras.append(
        "Network connectivity. Network maps were obtained by dual regression (Nickerson et "
        "al., 2017) against spatial templates built from the 300 regions of Seitzman et al. "
        f"(2018) (Gaussian blobs, sigma {c['template_sigma_mm']:g} mm): stage 1 regressed each "
        "volume on all network templates (the default-mode, sensorimotor, visual and salience "
        "networks plus eight nuisance networks), stage 2 regressed each voxel's z-scored time "
        "series on the z-scored network time courses, giving maps of partial standardised "
        "coefficients. Within- and between-network connectivity was the mean Fisher z "
        "correlation between the time series of the networks' region spheres.")
    covs = _adjusted(covariates_used.get("group", (g["covariates"], "")))
    paras.append(
        f"Group comparison. In each study, MS and HC were compared with ordinary least squares "
        f"adjusting for {covs}; Hedges' g and its variance (Hedges, 1981) were derived from the "
        "covariate-adjusted t. The pooled mega-analysis of all subjects used a linear mixed "
        "model with a random intercept per study (statsmodels) at network level and, "
        "voxelwise within each network's mask, ordinary least squares with study indicators "
        f"and {_inference_text(g)}. Studies with fewer than {g['min_per_group']} subjects in a "
        "group were left out of per-study statistics.")
    ccov = _adjusted(covariates_used.get("clinical", (cl["covariates"], "")))
    paras.append(
        f"Clinical associations. Within MS, connectivity was regressed on "
        f"{_names(cl['variables'])} jointly, adjusting for {ccov} (each variable tested in "
        "turn; per study by ordinary least squares, pooled by a mixed model with a random "
        "study intercept)"
        + (f"; voxelwise models of {_names(cl['voxelwise_variables'])} used "
           f"{_inference_text(cl)}." if cl["voxelwise_variables"] else "."))
    est = ("restricted maximum likelihood (REML; Viechtbauer, 2005)" if m["method"] == "REML"
           else "the DerSimonian-Laird estimator (DerSimonian & Laird, 1986)")
    test = "Knapp-Hartung t tests" if m["knapp_hartung"] else "Wald z tests"
    paras.append(
        "Meta-analysis. Per-study Hedges' g were pooled with random-effects models, between-"
        f"study variance tau\u00b2 by {est}, following the conventions of metafor (Viechtbauer, "
        f"2010), with {test}, Cochran's Q, I\u00b2, a Q-profile confidence interval for "
        "tau\u00b2 and 95% prediction intervals; with fewer than "
        f"{m['min_studies']} studies a fixed-effect model was used. Sensitivity analyses were "
        "leave-one-study-out and Egger's regression test for small-study effects (Egger et "
        "al., 1997). Mixed-effects meta-regressions on the study-level moderators "
        f"{_names(m['moderators'], 'mean ')} (one at a time and jointly) were tested with "
        f"{int(m['n_permutations'])} permutations of the moderators. Voxelwise, the same "
        "random-effects model was fitted at every voxel of each network mask, with FWE "
        f"control by {int(m['n_permutations'])} sign-flip permutations and clusters formed at "
        f"p < {m['cluster_threshold']:g}.")
    paras.append(
        "Comparison with the published findings. A published finding was counted as "
        "recovered when the pooled t map or the meta-analytic z map had a local maximum "
        f"(26-neighbourhood) of the published sign within {radius:g} mm of its coordinate, "
        "significant at voxel-level FWE p < "
        + (f"{g['alpha']:g}." if g["alpha"] == m["alpha"]
           else f"{g['alpha']:g} (mega) or {m['alpha']:g} (meta)."))
    soft = ", ".join(f"{name} {versions.get(name, 'n/a')}" for name in
                     ("msnet", "nilearn", "nibabel", "statsmodels", "nimare", "pymare",
                      "numpy", "scipy", "pandas", "matplotlib", "snakemake") if name in versions)
    paras.append(f"Software. {soft}; the workflow is run by Snakemake (M\u00f6lder et al., "
                 f"2021). Random seed {config.get('seed', 'default')}.")
    paras.append("References\n" + "\n".join(REFERENCES.values()))
    return "\n\n".join(paras)


# --------------------------------------------------------------------------- HTML pieces


CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;
line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:1em 2em 4em}
nav{background:#f4f6f8;border-bottom:1px solid #dde;padding:.6em 2em;position:sticky;top:0}
nav a{margin-right:1.2em;color:#2b5d8a;text-decoration:none;font-size:.92em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #2b5d8a;padding-top:.6em}
h3{margin-top:1.6em}
table.tbl{border-collapse:collapse;font-size:.82em;margin:.6em 0}
table.tbl th,table.tbl td{padding:3px 8px;border-bottom:1px solid #e3e3e3;text-align:right}
table.tbl th{background:#f4f6f8;position:sticky;top:0}
table.tbl td:first-child,table.tbl th:first-child{text-align:left}
.scroll{max-height:420px;overflow:auto;border:1px solid #eee;display:inline-block;max-width:100%}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#444;max-width:900px}
.row{display:flex;flex-wrap:wrap;gap:1.5em}.row figure{flex:1 1 420px}
.na{color:#a33;font-style:italic}.note{color:#555;font-size:.9em}
.found{color:#1a7f37;font-weight:bold}.missed{color:#b42318;font-weight:bold}
details{margin:.6em 0}summary{cursor:pointer;color:#2b5d8a}
"""


def _fmt(v) -> str:
    """Float formatting of the report's tables."""
    if not np.isfinite(v):
        return "\u2013"
    if float(v).is_integer() and abs(v) < 1e6:
        return f"{int(v)}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    if abs(v) >= 0.001:
        return f"{v:.3f}"
    return f"{v:.2e}"


def table_html(df: pd.DataFrame, scroll: bool = False) -> str:
    """A DataFrame as an HTML table (no index, report float format, escaped text)."""
    if df is None or df.empty:
        return '<p class="note">(no rows)</p>'
    out = df.to_html(index=False, float_format=_fmt, na_rep="\u2013", border=0,
                     classes="tbl", escape=True)
    return f'<div class="scroll">{out}</div>' if scroll else out


def _na(what: str) -> str:
    return f'<p class="na">{html.escape(what)}: {NA_TEXT}.</p>'


def _p(text: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f"<p{klass}>{html.escape(text)}</p>"


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>"


def _figure(paths: dict, caption: str, html_dir) -> str:
    """A figure with its PNG embedded as base64 and a caption linking the SVG file."""
    data = base64.b64encode(Path(paths["png"]).read_bytes()).decode("ascii")
    svg = html.escape(Path(os.path.relpath(paths["svg"], html_dir)).as_posix())
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{html.escape(caption)} <a href="{svg}">SVG</a></figcaption>'
            "</figure>")


def _exists(path) -> bool:
    return bool(path) and Path(path).exists()


def _read(path) -> pd.DataFrame | None:
    """A TSV as a DataFrame (``n/a`` missing), or None when not given or absent."""
    if not _exists(path):
        if path:
            LOG.warning("report: %s not found; its section says '%s'", path, NA_TEXT)
        return None
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"])
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, pd.errors.ParserError) as err:
        raise MsnetInputError(f"{path}: cannot read this result table for the report ({err}); "
                              "re-run the stage that writes it.") from err


def _within(table: pd.DataFrame) -> pd.DataFrame:
    """Within-network rows first, in network order, then the rest."""
    if table is None or table.empty or "metric" not in table:
        return table
    order = {f"within_{n}": i for i, n in enumerate(ANALYSIS_NETWORKS)}
    key = table["metric"].map(lambda s: order.get(s, len(order)))
    return table.assign(_k=key).sort_values("_k", kind="stable").drop(columns="_k")


def _cols(table: pd.DataFrame, columns) -> pd.DataFrame:
    return table[[c for c in columns if c in table.columns]]


# --------------------------------------------------------------------------- sections


class _Report:
    """State shared by the section builders: inputs, options, figure folder, written files."""

    def __init__(self, config, inputs, figures_dir, html_dir):
        self.config = config or {}
        self.html_dir = Path(html_dir)
        self.inputs = inputs or {}
        self.figures_dir = Path(figures_dir)
        self.figures = []
        opts = _section_options(self.config)
        self.alpha_group = float(opts["group"]["alpha"])
        self.alpha_meta = float(opts["meta"]["alpha"])
        self.alpha_clin = float(opts["clinical"]["alpha"])
        self.qc_options = opts["qc"]
        self.radius = float((self.config.get("report") or {}).get("radius_mm", 12.0))
        self.meta = {k: _read(v) for k, v in
                     (self.inputs.get("meta_tables") or {}).items()}

    def stem(self, kind, net=None) -> Path:
        return self.figures_dir / FIGURES[kind].format(net=net)

    def figure(self, paths: dict, caption: str) -> str:
        self.figures += [paths["png"], paths["svg"]]
        return _figure(paths, caption, self.html_dir)

    # ---------------------------------------------------------------- dataset & QC
    def dataset_qc(self) -> str:
        from msnet.plotting import plot_qc_overview

        qc_files = [p for p in (self.inputs.get("qc") or []) if _exists(p)]
        parts = []
        if not qc_files:
            parts.append(_na("Subject QC tables"))
        else:
            from msnet.qc import read_study_qc

            qc = read_study_qc(qc_files)
            parts.append(self._qc_counts(qc))
            parts.append(self._motion(qc))
            parts.append(self.figure(
                plot_qc_overview(qc, self.stem("qc_overview"), self.qc_options),
                "QC overview. Left: mean framewise displacement by group; middle: percentage of "
                "censored volumes by group (dashed: QC limits; crosses: excluded subjects); "
                "right: included and excluded subjects per study."))
            excl = qc[~qc["include"]]
            parts.append("<h3>Excluded subjects</h3>")
            parts.append(table_html(_cols(excl, ["study_id", "participant_id", "group",
                                                 "exclusion_reason", "mean_fd", "pct_censored",
                                                 "minutes_kept"]), scroll=True)
                         if len(excl) else _p("No subject failed QC."))
            parts.append(_details(f"Per-subject QC ({len(qc)} subjects)",
                                  table_html(qc, scroll=True)))
        parts.append(self._excluded_inputs())
        return "".join(parts)

    def _qc_counts(self, qc: pd.DataFrame) -> str:
        rows = []
        for study, sub in qc.groupby("study_id", sort=True):
            inc = sub[sub["include"]]
            rows.append({"study_id": study, "subjects": len(sub), "included": len(inc),
                         "MS included": int((inc["group"] == "MS").sum()),
                         "HC included": int((inc["group"] == "HC").sum()),
                         "excluded": int((~sub["include"]).sum())})
        counts = pd.DataFrame(rows)
        total = counts.drop(columns="study_id").sum().to_dict()
        counts = pd.concat([counts, pd.DataFrame([{"study_id": "total", **total}])],
                           ignore_index=True)
        text = (f"{len(qc)} subjects in {qc['study_id'].nunique()} studies; "
                f"{int(qc['include'].sum())} included "
                f"({int(total['MS included'])} MS, {int(total['HC included'])} HC), "
                f"{int((~qc['include']).sum())} excluded by QC.")
        return _p(text) + table_html(counts, scroll=True)

    def _motion(self, qc: pd.DataFrame) -> str:
        from scipy import stats as sps

        inc = qc[qc["include"]]
        rows = []
        order = sorted(set(inc["group"]), key=lambda g: ({"MS": 0, "HC": 1}.get(g, 2), g))
        for group, sub in ((g, inc[inc["group"] == g]) for g in order):
            rows.append({"group": group, "n": len(sub), "mean FD (mm)": sub["mean_fd"].mean(),
                         "SD FD": sub["mean_fd"].std(), "censored (%)":
                         sub["pct_censored"].mean(), "minutes kept": sub["minutes_kept"].mean(),
                         "tSNR (median)": sub["tsnr_median"].mean()})
        text = "Motion of included subjects by group."
        ms, hc = (inc.loc[inc["group"] == grp, "mean_fd"].dropna() for grp in ("MS", "HC"))
        if len(ms) > 1 and len(hc) > 1:
            p = sps.ttest_ind(ms, hc, equal_var=False).pvalue
            text += (f" Mean FD MS vs HC: Welch t-test p = {p:.3g} (mean FD is a covariate of "
                     "the group models).")
        return "<h3>Motion by group</h3>" + _p(text) + table_html(pd.DataFrame(rows))

    def _excluded_inputs(self) -> str:
        parts = []
        table = _read(self.inputs.get("excluded_inputs"))
        if table is not None:
            parts.append("<h3>Inputs excluded before processing</h3>")
            parts.append(table_html(table, scroll=True) if len(table)
                         else _p("No input was excluded (every participant had data)."))
        frames = [t for t in (_read(p) for p in _as_list(self.inputs.get("group_exclusions")))
                  if t is not None and len(t)]
        if frames:
            parts.append(_details("Exclusions recorded by the group and clinical stages",
                                  table_html(pd.concat(frames, ignore_index=True), True)))
        return "".join(parts)

    # ---------------------------------------------------------------- published findings
    def published(self, comparison: pd.DataFrame) -> str:
        parts = []
        for analysis, name in (("meta", "meta-analysis (z maps)"),
                               ("mega", "pooled mega-analysis (t maps)")):
            sub = comparison[comparison["analysis"] == analysis]
            avail = ~sub["note"].astype(str).str.endswith("map not available")
            if not avail.any():
                parts.append(_na(f"Voxelwise {name}"))
                continue
            parts.append(_p(f"{name}: {int(sub['found'].sum())} of {len(sub)} published "
                            "findings recovered."))
        parts.append(_p(
            f"A finding is recovered when a local maximum with the published sign, significant "
            f"at voxel-level FWE p < alpha, lies within {self.radius:g} mm of the published "
            "coordinate. Coordinates in MNI mm; labels from the Harvard-Oxford cortical atlas.",
            "note"))
        side = self._side_by_side(comparison)
        parts.append(side)
        notes = comparison[comparison["note"].astype(str) != ""]
        if len(notes):
            parts.append(_details("Near misses and notes", table_html(
                _cols(notes, ["analysis", "finding", "note"]))))
        return "".join(parts)

    @staticmethod
    def _side_by_side(comparison: pd.DataFrame) -> str:
        def cell(row, stat):
            if not row["found"]:
                return ('<span class="missed">\u2717</span>', "\u2013", "\u2013", "\u2013",
                        "\u2013")
            peak = f"({row['peak_x']:.0f}, {row['peak_y']:.0f}, {row['peak_z']:.0f})"
            return ('<span class="found">\u2713</span>', peak, f"{row['distance_mm']:.1f}",
                    html.escape(str(row["peak_label"])),
                    f"{stat} = {row['statistic']:.2f}, p<sub>FWE</sub> = {row['p_fwe']:.3g}")

        head = ("<tr><th rowspan=2>finding</th><th rowspan=2>network</th><th rowspan=2>"
                "direction</th><th rowspan=2>published region</th><th rowspan=2>published "
                "MNI</th><th colspan=5>meta-analysis</th><th colspan=5>mega-analysis</th></tr>"
                "<tr>" + "<th>found</th><th>peak MNI</th><th>dist. (mm)</th><th>label</th>"
                "<th>statistic</th>" * 2 + "</tr>")
        body = []
        meta = comparison[comparison["analysis"] == "meta"].set_index("finding")
        mega = comparison[comparison["analysis"] == "mega"].set_index("finding")
        for finding in dict.fromkeys(comparison["finding"]):
            ref = (meta if finding in meta.index else mega).loc[finding]
            cells = [html.escape(str(finding)), html.escape(str(ref["network"])),
                     html.escape(str(ref["direction"])), html.escape(str(ref["published_label"])),
                     f"({ref['published_x']:.0f}, {ref['published_y']:.0f}, "
                     f"{ref['published_z']:.0f})"]
            for table, stat in ((meta, "z"), (mega, "t")):
                cells += (list(cell(table.loc[finding], stat)) if finding in table.index
                          else ["\u2013"] * 5)
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        return (f'<div class="scroll"><table class="tbl"><thead>{head}</thead><tbody>'
                f'{"".join(body)}</tbody></table></div>')

    # ---------------------------------------------------------------- network meta
    def network_meta(self) -> str:
        from msnet.plotting import plot_forest, plot_funnel, plot_study_effects

        parts = [self._study_effects(plot_study_effects)]
        nets = self.meta.get("networks")
        if nets is None:
            return "".join(parts) + _na("Network-level meta-analysis tables")
        parts.append("<h3>Random-effects meta-analysis per metric</h3>")
        parts.append(_p("g: pooled Hedges' g (MS \u2212 HC); pi: 95% prediction interval; "
                        "tau2, i2 (%): heterogeneity; q_p: Cochran's Q test p.", "note"))
        parts.append(table_html(_cols(_within(nets), [
            "metric", "model", "method", "k", "n_ms", "n_hc", "g", "ci_low", "ci_high", "p",
            "pi_low", "pi_high", "tau2", "i2", "q_p", "k_excluded", "warning"]), scroll=True))
        forest = self.meta.get("forest")
        egger = self.meta.get("egger")
        for net in ANALYSIS_NETWORKS:
            metric = f"within_{net}"
            row = nets[nets["metric"] == metric]
            if row.empty or forest is None:
                continue
            fdata = forest[forest["metric"] == metric]
            erow = (egger[egger["metric"] == metric].iloc[0]
                    if egger is not None and (egger["metric"] == metric).any() else None)
            title = f"{net}: within-network FC, MS vs HC"
            parts.append(f"<h3>{html.escape(net)}</h3><div class='row'>")
            parts.append(self.figure(
                plot_forest(fdata, row.iloc[0], self.stem("forest", net), title),
                f"Forest plot, {net} within-network connectivity: Hedges' g and 95% CI per "
                "study (square area \u221d random-effects weight), pooled estimate (diamond) "
                "and 95% prediction interval."))
            parts.append(self.figure(
                plot_funnel(fdata, row.iloc[0], erow, self.stem("funnel", net), title),
                f"Funnel plot, {net}: g against its standard error with the pseudo 95% CI "
                "funnel around the pooled g; Egger's test p in the title."))
            parts.append("</div>")
        if forest is None:
            parts.append(_na("Forest-plot data"))
        parts.append(self._loo())
        parts.append("<h3>Egger's test for small-study effects</h3>")
        parts.append(table_html(_cols(_within(egger), [
            "metric", "k", "bias", "bias_se", "t", "df", "p", "limit_estimate", "warning"]))
            if egger is not None else _na("Egger table"))
        return "".join(parts)

    def _study_effects(self, plot) -> str:
        paths = self.inputs.get("group_study_tables") or {}
        frames = [t.assign(study_id=str(s)) for s, t in
                  ((s, _read(p)) for s, p in paths.items()) if t is not None and len(t)]
        pooled = _read(self.inputs.get("pooled_table"))
        if pooled is not None and len(pooled):
            frames.append(pooled.assign(study_id="pooled"))
        if not frames:
            return "<h3>Per-study effects</h3>" + _na("Per-study group tables")
        table = pd.concat(frames, ignore_index=True)
        return "<h3>Per-study effects</h3>" + self.figure(
            plot(table, self.stem("study_effects")),
            "MS vs HC within-network connectivity per study: Hedges' g with 95% CI from the "
            "covariate-adjusted per-study models; the pooled mega-analysis (mixed model) at "
            "the bottom.")

    def _loo(self) -> str:
        loo, nets = self.meta.get("loo"), self.meta.get("networks")
        head = "<h3>Leave-one-study-out</h3>"
        if loo is None or nets is None or loo.empty:
            return head + _na("Leave-one-out table")
        rows = []
        for metric, sub in _within(loo).groupby("metric", sort=False):
            full = nets[nets["metric"] == metric]
            if full.empty:
                continue
            g_full, p_full = float(full["g"].iloc[0]), float(full["p"].iloc[0])
            shift = (sub["g"] - g_full).abs()
            sig = sub["p"] < self.alpha_meta
            rows.append({"metric": metric, "g": g_full, "p": p_full, "loo g min": sub["g"].min(),
                         "loo g max": sub["g"].max(), "loo p max": sub["p"].max(),
                         "most influential study": sub.loc[shift.idxmax(), "study_omitted"],
                         "significance robust": bool((sig == (p_full < self.alpha_meta)).all())})
        return (head + _p("Range of the pooled g when each study is omitted in turn; "
                          "'significance robust': no omission changes significance at alpha "
                          f"= {self.alpha_meta:g}.", "note")
                + table_html(pd.DataFrame(rows))
                + _details("All leave-one-out fits", table_html(_within(loo), scroll=True)))

    # ---------------------------------------------------------------- meta-regression
    def meta_regression(self) -> str:
        from msnet.plotting import plot_bubble

        reg = self.meta.get("metaregression")
        if reg is None:
            return _na("Meta-regression table")
        slopes = reg[reg["moderator"].astype(str) != "intercept"] if len(reg) else reg
        parts = [self._null_statement(slopes)]
        parts.append(table_html(_cols(_within(slopes), [
            "metric", "model", "moderator", "k", "beta", "se", "ci_low", "ci_high", "p",
            "p_perm", "r2", "qm_p_perm", "warning"]), scroll=True))
        forest, mods = self.meta.get("forest"), self.meta.get("moderators")
        if forest is None or mods is None:
            return "".join(parts) + _na("Bubble plots (forest data or moderators table)")
        for net in ANALYSIS_NETWORKS:
            metric = f"within_{net}"
            if not (forest["metric"] == metric).any():
                continue
            parts.append(f"<h3>{html.escape(net)}</h3>")
            parts.append(self.figure(
                plot_bubble(forest[forest["metric"] == metric], mods,
                            reg[reg["metric"] == metric] if len(reg) else reg,
                            self.stem("bubble", net), f"{net}: meta-regression of g on study-level "
                            "moderators"),
                f"Meta-regression bubble plots, {net} within-network connectivity: study g "
                "against each study-level moderator (bubble area \u221d random-effects weight) "
                "with the fitted single-moderator line."))
        return "".join(parts)

    def _null_statement(self, slopes: pd.DataFrame) -> str:
        if slopes is None or slopes.empty or "beta" not in slopes:
            return _p("No meta-regression could be estimated.")
        pcol = "p_perm" if "p_perm" in slopes and slopes["p_perm"].notna().any() else "p"
        hits = slopes[pd.to_numeric(slopes[pcol], errors="coerce") < self.alpha_meta]
        clinical = hits[hits["moderator"].astype(str).isin(["duration", "edss"])]
        if hits.empty:
            text = (f"No study-level moderator was associated with the MS-vs-HC effect "
                    f"({'permutation ' if pcol == 'p_perm' else ''}p \u2265 "
                    f"{self.alpha_meta:g} for every model): the published null for disease "
                    "duration and EDSS holds.")
        else:
            found = "; ".join(f"{r.metric}: {r.moderator} (p = {getattr(r, pcol):.3g})"
                              for r in hits.itertuples())
            text = (f"Moderator effects with {'permutation ' if pcol == 'p_perm' else ''}"
                    f"p < {self.alpha_meta:g} (uncorrected across metrics and moderators): "
                    f"{found}. "
                    + ("The published null for disease duration and EDSS is NOT reproduced."
                       if len(clinical) else "Disease duration and EDSS show no association "
                       "(the published null)."))
        return _p(text)

    # ---------------------------------------------------------------- voxelwise
    def voxelwise(self) -> str:
        from msnet.plotting import plot_glass_brain

        pooled = self.inputs.get("pooled_maps") or {}
        meta = self.inputs.get("meta_maps") or {}
        parts = []
        for net in ANALYSIS_NETWORKS:
            parts.append(f"<h3>{html.escape(net)}</h3><div class='row'>")
            for kind, maps, stat, label, alpha in (
                    ("glass_brain_pooled", pooled, "t", "Pooled mega-analysis", self.alpha_group),
                    ("glass_brain_meta", meta, "z", "Voxelwise meta-analysis", self.alpha_meta)):
                entry = maps.get(net) or {}
                if not (_exists(entry.get(stat)) and _exists(_logp_path(entry))):
                    parts.append(_na(f"{label} maps for {net}"))
                    continue
                parts.append(self.figure(
                    plot_glass_brain(entry[stat], _logp_path(entry), self.stem(kind, net),
                                     f"{net} {label.lower()} ({stat})", alpha, net, stat),
                    f"{label}, {net}: MS vs HC {stat} map at voxel-level FWE p < {alpha:g} "
                    "(red: MS > HC, blue: MS < HC); triangles mark the published findings "
                    "(up: published increase, down: decrease)."))
            parts.append("</div>")
            parts.append(self._clusters(net))
        return "".join(parts)

    def _clusters(self, net) -> str:
        out = []
        for key, label in (("pooled_clusters", "Pooled mega-analysis clusters"),
                           ("meta_clusters", "Meta-analysis clusters")):
            table = _read((self.inputs.get(key) or {}).get(net))
            if table is None:
                out.append(_na(f"{label} ({net})"))
            else:
                out.append(f"<p><b>{html.escape(label)}</b> ({len(table)})</p>"
                           + table_html(table.drop(columns=["network"], errors="ignore"),
                                        scroll=True))
        return "".join(out)

    # ---------------------------------------------------------------- clinical
    def clinical(self) -> str:
        from msnet.plotting import plot_clinical_scatter

        table = _read(self.inputs.get("clinical_table"))
        scatter = _read(self.inputs.get("clinical_scatter"))
        parts = []
        if table is None:
            parts.append(_na("Clinical association table"))
        else:
            parts.append(self._clinical_statement(table))
            parts.append(table_html(_cols(_within(table), [
                "metric", "variable", "method", "n", "n_studies", "beta", "se", "ci_low",
                "ci_high", "std_beta", "p", "q_fdr", "status", "reason"]), scroll=True))
        if scatter is None:
            parts.append(_na("Partial-regression data"))
        else:
            parts.append(self.figure(
                plot_clinical_scatter(scatter, self.stem("clinical_scatter"), table),
                "Clinical associations within MS: partial-regression plots of within-network "
                "connectivity against each clinical variable (both residualised on the other "
                "model terms and study); line: residual least-squares slope; title: β and p "
                "of the pooled mixed model."))
        return "".join(parts)

    def _clinical_statement(self, table: pd.DataFrame) -> str:
        if table.empty or "q_fdr" not in table:
            return _p("No clinical model could be estimated.")
        ok = table[table["status"] == "ok"] if "status" in table else table
        q = pd.to_numeric(ok["q_fdr"], errors="coerce")
        hits = ok[q < self.alpha_clin]
        if hits.empty:
            return _p(f"No association survived FDR correction (q \u2265 {self.alpha_clin:g} "
                      f"for all {len(ok)} metric \u00d7 variable models), in line with the "
                      "published null for disease duration and EDSS.")
        found = "; ".join(f"{r.metric} ~ {r.variable} (\u03b2 = {r.beta:.3g}, q = {r.q_fdr:.3g})"
                          for r in hits.itertuples())
        return _p(f"Associations with FDR q < {self.alpha_clin:g}: {found}.")

    # ---------------------------------------------------------------- meta vs mega
    def meta_vs_mega(self) -> str:
        table = _read(self.inputs.get("meta_vs_mega"))
        if table is None:
            return _na("Meta vs mega table")
        agree = table["same_direction"].astype(str).str.lower().eq("true").sum() \
            if "same_direction" in table else 0
        return (_p(f"Two-stage random-effects meta-analysis (meta_*) next to the one-stage "
                   f"pooled mixed model (mega_*); same direction for {int(agree)} of "
                   f"{len(table)} metrics.")
                + table_html(_within(table), scroll=True))

    # ---------------------------------------------------------------- methods
    def methods(self) -> str:
        config = dict(self.config)
        used = self._denoise_used()
        if used:
            config["denoise"] = used
        paras = methods_text(config, covariates_used=self._covariates_used()).split("\n\n")
        body = "".join(_p(p) for p in paras[:-1])
        refs = paras[-1].split("\n")[1:]
        return body + "<h3>References</h3><ol>" + "".join(
            f"<li>{html.escape(r)}</li>" for r in refs) + "</ol>"

    def _covariates_used(self) -> dict:
        """Covariates of the fitted group and clinical models, from their result tables."""
        o = _section_options(self.config)
        group = [_read(p) for p in (self.inputs.get("group_study_tables") or {}).values()]
        group.append(_read(self.inputs.get("pooled_table")))
        clinical = [_read(self.inputs.get("clinical_table"))]
        out = {}
        for key, tables in (("group", group), ("clinical", clinical)):
            if any(t is not None and "covariates" in t for t in tables):
                out[key] = covariates_in_models(tables, o[key]["covariates"])
        return out

    def _denoise_used(self) -> dict | None:
        """Denoise options recorded in a subject's QC file (what the subject stage ran)."""
        path = self.inputs.get("subject_qc")
        if not path or not _exists(path):
            return None
        used = json.loads(Path(path).read_text()).get("denoise")
        return used if isinstance(used, dict) else None


def _as_list(value) -> list:
    if not value:
        return []
    return [value] if isinstance(value, (str, Path)) else list(value)


def _page(sections: list) -> str:
    nav = "".join(f'<a href="#{sid}">{html.escape(title)}</a>' for sid, title in SECTIONS)
    body = "".join(f'<section><h2 id="{sid}">{html.escape(title)}</h2>{content}</section>'
                   for (sid, title), content in zip(SECTIONS, sections))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>msnet report</title><style>{CSS}</style></head><body>"
            f"<nav>{nav}</nav><main><h1>msnet: resting-state networks in multiple sclerosis"
            f"</h1><p class=\"note\">MS vs healthy controls across studies: mega-analysis, "
            f"random-effects meta-analysis and clinical associations. msnet {__version__}."
            f"</p>{body}</main></body></html>\n")


def build_report(config: dict, inputs: dict, out_html, figures_dir,
                 comparison_tsv=None) -> dict:
    """Build ``report.html``, every figure and the published-findings comparison table.

    Parameters
    ----------
    config : dict
        The validated workflow configuration (alpha levels, QC limits and the methods text
        come from it; optional ``report.radius_mm``, default 12, is the search radius of
        :func:`compare_with_published`).
    inputs : dict
        Result files; every key is optional (a missing key, None or a file that does not
        exist gives "not available" in its section):

        ``qc`` : list of path
            Each study's subject QC table (:func:`msnet.qc.summarise_study_qc`).
        ``subject_qc`` : path
            One subject's ``sub-*_qc.json`` (the denoising options it recorded).
        ``excluded_inputs`` : path
            ``excluded_inputs.tsv`` (``study_id, participant_id, reason``).
        ``group_exclusions`` : path or list of path
            ``pooled_desc-exclusions.tsv`` / per-study ``*_desc-exclusions.tsv`` /
            ``pooled_desc-clinicalexclusions.tsv``.
        ``group_study_tables`` : dict study -> path
            ``study-{id}_desc-MSvsHC_networks.tsv``.
        ``pooled_table`` : path
            ``pooled_desc-MSvsHC_networks.tsv``.
        ``pooled_maps`` : dict network -> {"t": path, "logpfwe": path}
            ``pooled_network-{net}_stat-{t,logpfwe}_map.nii.gz``.
        ``pooled_clusters`` : dict network -> path
            ``pooled_network-{net}_clusters.tsv``.
        ``clinical_table`` : path
            ``pooled_desc-clinical_networks.tsv``.
        ``clinical_scatter`` : path
            ``pooled_desc-partialregression_scatter.tsv``.
        ``meta_tables`` : dict name -> path
            What :func:`msnet.meta.meta_networks` returns: ``networks``, ``loo``, ``egger``,
            ``metaregression``, ``moderators``, ``forest``.
        ``meta_maps`` : dict network -> {"z": path, "logp_fwe": path}
            ``meta_network-{net}_stat-{z,logp_fwe}_map.nii.gz``.
        ``meta_clusters`` : dict network -> path
            ``meta_network-{net}_clusters.tsv``.
        ``meta_vs_mega`` : path
            ``meta_desc-metavsmega_stats.tsv``.

        (``logp_fwe`` and ``logpfwe`` are accepted in both map dicts.)
    out_html : path
        ``results/report.html``.
    figures_dir : path
        ``results/figures``; figure names are :data:`FIGURES` (+ ``.png``/``.svg``).
    comparison_tsv : path, optional
        Default ``report_desc-published_comparison.tsv`` beside ``out_html``.

    Returns
    -------
    dict
        ``html``, ``comparison`` (paths) and ``figures`` (list of written figure paths).
    """
    out_html = Path(out_html)
    comparison_tsv = Path(comparison_tsv or out_html.with_name(
        "report_desc-published_comparison.tsv"))
    rep = _Report(config, inputs, figures_dir, out_html.parent)
    comparison = published_comparison(rep.inputs.get("meta_maps"), rep.inputs.get("pooled_maps"),
                                      rep.alpha_meta, rep.alpha_group, rep.radius)
    write_tsv(comparison, comparison_tsv)
    sections = [rep.dataset_qc(), rep.published(comparison), rep.network_meta(),
                rep.meta_regression(), rep.voxelwise(), rep.clinical(), rep.meta_vs_mega(),
                rep.methods()]
    write_text(_page(sections), out_html)
    LOG.info("wrote %s with %d figures", out_html, len(rep.figures) // 2)
    return {"html": str(out_html), "comparison": str(comparison_tsv), "figures": rep.figures}


def figure_paths(figures_dir, networks=ANALYSIS_NETWORKS, ext="png") -> dict:
    """Every figure :func:`build_report` writes when all inputs are present (for Snakemake).

    Returns
    -------
    dict
        Figure kind (:data:`FIGURES`) -> list of paths with extension ``ext``.
    """
    out = {}
    for kind, stem in FIGURES.items():
        names = ([stem.format(net=n) for n in networks] if "{net}" in stem else [stem])
        out[kind] = [str(Path(figures_dir) / f"{name}.{ext}") for name in names]
    return out


def report_inputs(results_dir, studies, subject_qc, networks=ANALYSIS_NETWORKS,
                  excluded_inputs=None) -> dict:
    """The ``inputs`` of :func:`build_report` at the standard output locations of each stage.

    Parameters
    ----------
    results_dir : path
        ``config["results_dir"]``.
    studies : list of str
        Study ids.
    subject_qc : path or None
        One subject's QC JSON: the denoising options the subject stage recorded.
    networks : sequence of str
    excluded_inputs : path, optional
        ``excluded_inputs.tsv`` when the workflow writes it.

    Returns
    -------
    dict
        As documented in :func:`build_report`.
    """
    from msnet.io.plan import study_qc_table

    r = Path(results_dir)
    group, pooled, clin, meta = r / "group", r / "group" / "pooled", r / "clinical", r / "meta"
    out = {
        "qc": [study_qc_table(results_dir, s) for s in studies],
        "subject_qc": str(subject_qc) if subject_qc else None,
        "group_study_tables": {s: str(group / f"study-{s}" / f"study-{s}_desc-MSvsHC_networks.tsv")
                               for s in studies},
        "group_exclusions": [str(pooled / "pooled_desc-exclusions.tsv"),
                             str(clin / "pooled_desc-clinicalexclusions.tsv")],
        "pooled_table": str(pooled / "pooled_desc-MSvsHC_networks.tsv"),
        "pooled_maps": {n: {k: str(pooled / f"pooled_network-{n}_stat-{k}_map.nii.gz")
                            for k in ("t", "logpfwe")} for n in networks},
        "pooled_clusters": {n: str(pooled / f"pooled_network-{n}_clusters.tsv") for n in networks},
        "clinical_table": str(clin / "pooled_desc-clinical_networks.tsv"),
        "clinical_scatter": str(clin / "pooled_desc-partialregression_scatter.tsv"),
        "meta_tables": {k: str(meta / f"meta_desc-{k}_stats.tsv")
                        for k in ("networks", "loo", "egger", "metaregression")},
        "meta_maps": {n: {k: str(meta / f"meta_network-{n}_stat-{k}_map.nii.gz")
                          for k in ("z", "logp_fwe")} for n in networks},
        "meta_clusters": {n: str(meta / f"meta_network-{n}_clusters.tsv") for n in networks},
        "meta_vs_mega": str(meta / "meta_desc-metavsmega_stats.tsv"),
    }
    out["meta_tables"].update(moderators=str(meta / "meta_desc-studies_moderators.tsv"),
                              forest=str(meta / "meta_desc-forest_data.tsv"))
    if excluded_inputs:
        out["excluded_inputs"] = str(excluded_inputs)
    return out


def input_files(inputs: dict) -> list:
    """Every path in an ``inputs`` dict, flattened (for a Snakemake rule's ``input:``)."""
    if isinstance(inputs, (str, Path)):
        return [str(inputs)]
    values = inputs.values() if isinstance(inputs, dict) else inputs
    return [p for v in values if v for p in input_files(v)]
