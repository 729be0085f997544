"""Literature mode: meta-analysis of published peak coordinates, alone or with images (issue 9).

The reference meta-analysis did not hold its 25 studies' data: it pooled the peak coordinates
and t values printed in each paper (AES-SDM). This module is msnet's route for that situation.

Inputs (validated here, all problems reported at once, each naming file, row and fix, as
:mod:`msnet.io.tables` does for the other tables):

* ``peaks.tsv`` (schema ``msnet/schemas/peaks.schema.yaml``): one row per reported peak,
  ``study_id, network, x, y, z, space (MNI|TAL), stat, stat_type (t|z|p), direction
  (MS>HC|MS<HC)``. Talairach peaks are converted to MNI as NiMARE's
  :func:`nimare.utils.tal2mni` does (Lancaster's icbm2tal inverse, :func:`tal2mni`); z and p are converted to t
  with the study's ``df = n_ms + n_hc - 2`` (p is the one-sided uncorrected p of the
  directional contrast, SPM's convention); t to Hedges' g with :func:`msnet.stats.d_from_t`
  and :func:`msnet.stats.hedges_g` (the group stage's formulas).
* the literature studies table (schema ``literature_studies.schema.yaml``): ``study_id,
  n_ms, n_hc`` and optionally the reporting threshold (``threshold_p``, ``threshold_k``),
  ``coverage`` (whole_brain|network), ``networks`` analysed, and the moderators of
  :data:`msnet.meta.MODERATORS` (``age, pctfemale, duration, edss, t2lv``).

Methods: ALE and MKDA through NiMARE (:func:`cbma_nimare`), msnet's SDM-style effect-size
estimator (:func:`recreate_study_map`, :func:`sdm_study_maps`, :func:`sdm_meta`; every
departure from AES-SDM / SDM-PSI is listed in :func:`sdm_meta`) with voxelwise
meta-regression (:func:`sdm_metaregression`), and the hybrid of peaks and images.

Workflow (``workflow/rules/literature.smk``): :func:`publish_study_peaks` (the demo's studies
publish their t maps' peaks), :func:`literature_meta` (every method per network, cluster
tables, meta-regression table, methods text; beside image studies :func:`compare_methods`,
each method against the image-based meta-analysis and the planted truth), with the file
names of :func:`literature_outputs`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from msnet import ANALYSIS_NETWORKS
from msnet.errors import MsnetInputError
from msnet.io.tables import _raise, duplicate_rows, read_checked

LOGGER = logging.getLogger(__name__)

DIRECTIONS = {"MS>HC": 1, "MS<HC": -1}
"""Contrast label -> sign of the effect (MS minus HC)."""

MASK_TOLERANCE_MM = 4.0
"""A peak may lie this far outside the MNI152 brain mask (nilearn's, 2 mm) before it is
refused: reported cortical peaks sit at the template's edge, and templates differ by a few mm;
farther out, the coordinate is almost always mistyped (sign, column order, wrong space)."""

PEAK_COLUMNS = ["study_id", "network", "direction", "x", "y", "z", "space", "stat",
                "stat_type", "x_mni", "y_mni", "z_mni", "t", "df", "g", "var_g", "row"]
"""Columns of the table :func:`read_peaks` returns (``row``: 1-based row in peaks.tsv)."""


# --------------------------------------------------------------------------------------
# coordinates
# --------------------------------------------------------------------------------------
ICBM_OTHER_TO_TAL = np.array([
    [0.9357, 0.0029, -0.0072, -1.0423],
    [-0.0065, 0.9396, -0.0726, -1.3940],
    [0.0103, 0.0752, 0.8967, 3.6475],
    [0.0, 0.0, 0.0, 1.0],
])
"""Lancaster et al. 2007's icbm2tal transform (MNI -> Talairach, "other" templates), the
matrix of BrainMap's ``icbm_other2tal.m`` and of NiMARE's :func:`nimare.utils.mni2tal`."""


def tal2mni(coords) -> np.ndarray:
    """Talairach -> MNI coordinates, (n, 3) mm: the inverse of Lancaster's icbm2tal
    (:data:`ICBM_OTHER_TO_TAL`), as NiMARE's :func:`nimare.utils.tal2mni` computes it.

    Written out rather than imported because importing NiMARE costs several seconds, and
    the peaks table is validated before any job starts; the unit tests check it against
    NiMARE's function.
    """
    coords = np.asarray(coords, float).reshape(-1, 3)
    inverse = np.linalg.inv(ICBM_OTHER_TO_TAL)
    return coords @ inverse[:3, :3].T + inverse[:3, 3]


def _brain_tree():
    """(k-d tree of the in-mask voxel centres in mm, mask, affine) of nilearn's 2 mm MNI152
    brain mask (cached)."""
    global _BRAIN_TREE
    if _BRAIN_TREE is None:
        from nilearn import datasets
        from scipy.spatial import cKDTree

        img = datasets.load_mni152_brain_mask(resolution=2)
        mask = np.asarray(img.dataobj) > 0
        xyz = np.argwhere(mask) @ img.affine[:3, :3].T + img.affine[:3, 3]
        _BRAIN_TREE = (cKDTree(xyz), mask, img.affine)
    return _BRAIN_TREE


_BRAIN_TREE = None


def distance_outside_brain(coords_mni) -> np.ndarray:
    """Distance in mm from each MNI coordinate's nearest 2 mm voxel centre to the MNI152 brain
    mask (0 inside; inf off the template's field of view): the Euclidean distance transform's
    value there, from a k-d tree of the mask's voxels (no whole-grid transform)."""
    tree, mask, affine = _brain_tree()
    coords = np.asarray(coords_mni, float).reshape(-1, 3)
    ijk = np.rint(np.c_[coords, np.ones(len(coords))] @ np.linalg.inv(affine).T)[:, :3]
    ijk = ijk.astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(mask.shape)), axis=1)
    out = np.full(len(coords), np.inf)
    if inside.any():
        centres = ijk[inside] @ affine[:3, :3].T + affine[:3, 3]
        dist = tree.query(centres)[0]
        out[inside] = np.where(mask[tuple(ijk[inside].T)], 0.0, dist)
    return out


# --------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------
def stat_to_t(stat, stat_type, df):
    """Convert a reported peak statistic to |t| with ``df`` degrees of freedom.

    ``t``: ``|stat|``; ``z``: the t with the same one-sided p (``t.isf(norm.sf(|z|), df)``);
    ``p``: the t whose one-sided p is ``stat`` (``t.isf(p, df)``; a peak's uncorrected p of a
    directional contrast, as SPM reports it).
    """
    stat = np.abs(np.asarray(stat, float))
    stat_type = np.asarray(stat_type)
    df = np.asarray(df, float)
    with np.errstate(invalid="ignore"):
        from_z = stats.t.isf(stats.norm.sf(stat), df)
        from_p = stats.t.isf(stat, df)
    return np.where(stat_type == "t", stat, np.where(stat_type == "z", from_z, from_p))


def t_to_g(t, n_ms, n_hc):
    """Hedges' g and var(g) of a two-group t (MS minus HC), the group stage's formulas:
    ``d = t sqrt(1/n_ms + 1/n_hc)`` (:func:`msnet.stats.d_from_t`), then
    :func:`msnet.stats.hedges_g`."""
    from msnet.stats import d_from_t, hedges_g

    return hedges_g(d_from_t(t, n_ms, n_hc), n_ms, n_hc)


def threshold_g(threshold_p, n_ms, n_hc):
    """Hedges' g of a t at the study's one-sided reporting threshold ``threshold_p``."""
    df = np.asarray(n_ms, float) + np.asarray(n_hc, float) - 2
    return t_to_g(stats.t.isf(threshold_p, df), n_ms, n_hc)[0]


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------
def read_literature_studies(path) -> pd.DataFrame:
    """Read and validate the literature studies table.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``study_id``; ``n_ms``, ``n_hc`` as int; ``threshold_p`` (default 0.001),
        ``coverage`` (default whole_brain) filled; ``networks`` a tuple of network names
        (default all four); moderator columns as float (NaN when missing or absent).
    """
    from msnet.meta import MODERATORS

    path = Path(path)
    table, schema, problems = read_checked(path, "literature_studies", "literature studies table")
    problems += duplicate_rows(table, "study_id", path,
                               "Each study must appear once; merge its rows.")
    _raise(problems, path)
    for col in ("threshold_p", "coverage"):
        default = schema["properties"][col]["default"]
        table[col] = table[col].fillna(default) if col in table else default
    nets = table["networks"] if "networks" in table else pd.Series([np.nan] * len(table))
    table["networks"] = [tuple(ANALYSIS_NETWORKS) if not isinstance(v, str)
                         else tuple(n for n in ANALYSIS_NETWORKS if n in v.split(","))
                         for v in nets]
    for col in ("threshold_k", *MODERATORS):
        table[col] = table[col].astype(float) if col in table else np.nan
    table["n_ms"] = table["n_ms"].astype(int)
    table["n_hc"] = table["n_hc"].astype(int)
    return table.set_index("study_id", drop=False)


def read_peaks(path, studies: pd.DataFrame, studies_path=None,
               mask_tolerance_mm: float = MASK_TOLERANCE_MM) -> pd.DataFrame:
    """Read and validate ``peaks.tsv`` against the studies table; convert to MNI, t and g.

    Checks, all reported together (:class:`msnet.errors.MsnetInputErrors`), each naming the
    file, the row and the fix: the schema (unknown network, space, stat_type or direction;
    non-numbers); a study with no row (no sample size) in the studies table; a peak for a
    network its study did not analyse; a t or z whose sign contradicts ``direction``; a p
    outside (0, 0.05]; a peak more than ``mask_tolerance_mm`` outside the MNI152 brain mask
    (after Talairach -> MNI); the same peak twice (study, network, direction and MNI
    coordinate within 0.5 mm).

    Parameters
    ----------
    path : str or Path
        ``peaks.tsv``.
    studies : pandas.DataFrame
        :func:`read_literature_studies` output.
    studies_path : str or Path, optional
        The studies table's path, for messages.
    mask_tolerance_mm : float
        See :data:`MASK_TOLERANCE_MM`.

    Returns
    -------
    pandas.DataFrame
        :data:`PEAK_COLUMNS`: the input, the MNI coordinate, the signed t (positive MS > HC),
        its df, Hedges' g and var(g).
    """
    path = Path(path)
    studies_path = studies_path or "the literature studies table"
    table, schema, problems = read_checked(path, "peaks", "peaks table")
    if problems:  # bad cells: the checks below need valid values
        _raise(problems, path)
    table["row"] = np.arange(1, len(table) + 1)
    where = [f"{path}, row {r} (study_id {s})" for r, s in zip(table["row"], table["study_id"])]
    known = table["study_id"].isin(studies.index)
    for i in np.flatnonzero(~known.to_numpy()):
        problems.append(
            f"{where[i]}: a {table['stat_type'].iloc[i]} value needs the study's sample size, "
            f"but study {table['study_id'].iloc[i]} has no row in {studies_path}. Add a row "
            "with its study_id, n_ms and n_hc (or correct the study_id).")
    for i in np.flatnonzero(known.to_numpy()):
        study = studies.loc[table["study_id"].iloc[i]]
        if table["network"].iloc[i] not in study["networks"]:
            problems.append(
                f"{where[i]}: network {table['network'].iloc[i]} is not among the networks "
                f"study {study['study_id']} analysed ({','.join(study['networks'])}, column "
                f"'networks' of {studies_path}). Add it there or fix the peak's network.")
    sign = table["direction"].map(DIRECTIONS).to_numpy()
    stat = table["stat"].to_numpy(float)
    is_p = (table["stat_type"] == "p").to_numpy()
    for i in np.flatnonzero(is_p & ~((stat > 0) & (stat <= 0.05))):
        problems.append(f"{where[i]}: p = {stat[i]:g} is not a reported peak p (0 < p <= "
                        "0.05). Give the uncorrected one-sided p, or the t or z value.")
    for i in np.flatnonzero(~is_p & (stat != 0) & (np.sign(stat) != sign)):
        problems.append(
            f"{where[i]}: {table['stat_type'].iloc[i]} = {stat[i]:g} has the sign opposite to "
            f"direction {table['direction'].iloc[i]}. Check which contrast the peak belongs "
            "to; write the magnitude, or the sign that matches the direction.")
    xyz = table[["x", "y", "z"]].to_numpy(float)
    tal = (table["space"] == "TAL").to_numpy()
    mni = xyz.copy()
    if tal.any():
        mni[tal] = tal2mni(xyz[tal])
    outside = distance_outside_brain(mni)
    for i in np.flatnonzero(outside > mask_tolerance_mm):
        how = "off the template" if np.isinf(outside[i]) else f"{outside[i]:.0f} mm outside"
        problems.append(
            f"{where[i]}: peak ({xyz[i, 0]:g}, {xyz[i, 1]:g}, {xyz[i, 2]:g}) "
            f"{table['space'].iloc[i]}{' = MNI (%.0f, %.0f, %.0f)' % tuple(mni[i]) if tal[i] else ''}"
            f" lies {how} the MNI152 brain mask. Check the coordinate's signs and x y z order "
            "and the space (a Talairach peak labelled MNI?).")
    key = table[["study_id", "network", "direction"]].astype(str).agg("|".join, axis=1)
    seen = {}
    for i, k in enumerate(key):
        for j in seen.get(k, []):
            if np.linalg.norm(mni[i] - mni[j]) <= 0.5:
                problems.append(
                    f"{where[i]}: duplicate peak: the same {table['network'].iloc[i]} "
                    f"{table['direction'].iloc[i]} peak as row {table['row'].iloc[j]} (MNI "
                    f"({mni[i, 0]:.0f}, {mni[i, 1]:.0f}, {mni[i, 2]:.0f})). Remove one "
                    "(a peak reported in two tables of a paper counts once).")
                break
        seen.setdefault(k, []).append(i)
    _raise(problems, path)
    n_ms = studies.loc[table["study_id"], "n_ms"].to_numpy(float)
    n_hc = studies.loc[table["study_id"], "n_hc"].to_numpy(float)
    df = n_ms + n_hc - 2
    t = sign * stat_to_t(stat, table["stat_type"].to_numpy(), df)
    g, var_g = t_to_g(t, n_ms, n_hc)
    table[["x_mni", "y_mni", "z_mni"]] = mni
    table["t"], table["df"], table["g"], table["var_g"] = t, df, g, var_g
    return table[PEAK_COLUMNS].reset_index(drop=True)


# --------------------------------------------------------------------------------------
# ALE and MKDA: NiMARE, per network and direction
# --------------------------------------------------------------------------------------
CBMA_METHODS = ("ALE", "MKDA")
"""NiMARE estimators msnet runs as the coordinate-based baselines: :class:`nimare.meta.cbma.ALE`
(Eickhoff et al. 2009, 2012; kernel width from each study's sample size) and
:class:`nimare.meta.cbma.MKDADensity` (Wager et al. 2007; 10 mm spheres, studies weighted
equally)."""


def nimads_studyset(peaks: pd.DataFrame, studies: pd.DataFrame, network: str,
                    direction: str) -> dict:
    """The NIMADS studyset NiMARE reads for one network and direction.

    One study per ``study_id`` that analysed ``network`` and reported at least one peak of
    ``direction`` there (ALE and MKDA model where peaks are, so a study without peaks adds
    nothing and NiMARE drops it); its analysis holds the peaks' MNI coordinates and its
    sample size ``n_ms + n_hc`` (``metadata.sample_sizes``, which ALE's kernel uses).
    """
    sub = peaks[(peaks["network"] == network) & (peaks["direction"] == direction)]
    out = []
    for study_id, rows in sub.groupby("study_id", sort=True):
        if network not in studies.loc[study_id, "networks"]:
            continue
        n = int(studies.loc[study_id, "n_ms"] + studies.loc[study_id, "n_hc"])
        points = [{"space": "MNI", "coordinates": [float(x), float(y), float(z)]}
                  for x, y, z in rows[["x_mni", "y_mni", "z_mni"]].to_numpy()]
        out.append({"id": str(study_id), "name": str(study_id), "analyses": [
            {"id": f"{study_id}-{network}-{DIRECTIONS[direction]:+d}",
             "metadata": {"sample_sizes": [n]}, "points": points}]})
    return {"id": f"msnet-{network}", "name": f"msnet {network} {direction}", "studies": out}


def _nimare_estimator(method: str, seed):
    from nimare.meta.cbma import ALE, MKDADensity

    if method == "ALE":
        return ALE(null_method="approximate", random_state=seed)
    if method == "MKDA":
        return MKDADensity(null_method="approximate", random_state=seed)
    raise MsnetInputError(f"unknown coordinate-based method {method!r}; use one of "
                          f"{', '.join(CBMA_METHODS)}.")


NIMARE_EXPECTED_LOG = ("nimare.meta.cbma.base", "the Estimator must use the 'montecarlo' "
                       "null_method. Running permutations from scratch.")
"""(logger, message) NiMARE logs as a WARNING on every FWE correction of an estimator fitted
with the analytic null, as :func:`cbma_nimare` fits them on purpose (analytic uncorrected z,
Monte-Carlo FWE only): expected, so it is kept out of the job logs and the run's summary."""


@contextlib.contextmanager
def _without_log_message(logger_name: str, text: str):
    """Drop the records of ``logger_name`` containing ``text`` while the block runs."""
    logger = logging.getLogger(logger_name)
    drop = logging.Filter()
    drop.filter = lambda record: text not in record.getMessage()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def cbma_nimare(peaks: pd.DataFrame, studies: pd.DataFrame, network: str, direction: str,
                mask_img, method: str = "ALE", n_iters: int = 10000, seed: int = 0) -> dict:
    """ALE or MKDA of one network and direction, exactly as NiMARE computes them.

    The estimator (:data:`CBMA_METHODS`, NiMARE's defaults, analytic ``approximate`` null for
    the uncorrected z map) is fitted on :func:`nimads_studyset` within ``mask_img`` (the
    network's analysis mask), then :class:`nimare.correct.FWECorrector` ``montecarlo``
    gives voxel-level FWE from ``n_iters`` random relocations of the peaks (NiMARE's own
    Monte-Carlo null; ``random_state = seed``). Nothing is re-implemented here.

    Returns
    -------
    dict
        ``stat`` (ALE or MKDA density), ``z``, ``logp_fwe`` (voxel-level ``-log10`` FWE p):
        3-D arrays on the mask grid (0 outside); ``n_studies`` (studies with peaks),
        ``n_peaks``, ``skipped`` (why nothing was estimated, else ""), ``description``
        (NiMARE's methods text).
    """
    import warnings

    mask = np.asarray(mask_img.dataobj) > 0
    zeros = np.zeros(mask.shape, np.float32)
    source = nimads_studyset(peaks, studies, network, direction)
    n_studies = len(source["studies"])
    n_peaks = sum(len(s["analyses"][0]["points"]) for s in source["studies"])
    out = {"stat": zeros, "z": zeros, "logp_fwe": zeros, "n_studies": n_studies,
           "n_peaks": n_peaks, "skipped": "", "description": ""}
    if n_studies < 2:
        out["skipped"] = (f"{n_studies} stud{'y' if n_studies == 1 else 'ies'} reported "
                          f"{network} {direction} peaks (ALE/MKDA need at least 2)")
        return out
    from nimare.correct import FWECorrector
    from nimare.studyset import Studyset

    from msnet.plotting import _frozen_gc as frozen_gc

    # frozen_gc: nilearn's gc.collect() on every image read costs ~0.25 s in this process
    with warnings.catch_warnings(), frozen_gc(), _without_log_message(*NIMARE_EXPECTED_LOG):
        warnings.simplefilter("ignore", FutureWarning)
        studyset = Studyset(source, target="mni152_2mm", mask=mask_img)
        result = _nimare_estimator(method, seed).fit(studyset)
        corrected = FWECorrector(method="montecarlo", n_iters=int(n_iters), vfwe_only=True,
                                 n_cores=1).transform(result)

    def get(name):
        with frozen_gc():
            img = corrected.get_map(name, return_type="image")
        return np.asarray(img.dataobj, np.float32).reshape(mask.shape)

    out.update(stat=get("stat"), z=get("z"),
               logp_fwe=get("logp_level-voxel_corr-FWE_method-montecarlo"),
               description=getattr(corrected, "description_", ""))
    return out


# --------------------------------------------------------------------------------------
# SDM-style effect-size estimator (msnet's own)
# --------------------------------------------------------------------------------------
SDM_DEFAULTS = {"fwhm_mm": 20.0, "imputation": "midpoint"}
"""Defaults of the SDM-style estimator: kernel FWHM (AES-SDM's 20 mm; a 3-vector gives an
anisotropic kernel, FWHM per x, y, z axis) and the study-map imputation (only ``midpoint``
is implemented; see :func:`recreate_study_map`)."""

FWHM_TO_SIGMA = 1.0 / np.sqrt(8.0 * np.log(2.0))


def template_mask(network: str, mask_img, threshold: float = 0.2):
    """A network's analysis mask without subject data: its template (Gaussian blobs on the
    Seitzman ROIs, :func:`msnet.atlas.network_templates`) above ``threshold`` (the group
    stage's ``mask_template_threshold``) within ``mask_img`` (a brain mask)."""
    import nibabel as nib

    from msnet.atlas import network_templates

    mask = np.asarray(mask_img.dataobj) > 0
    names, templates = network_templates(mask_img)
    vol = np.zeros(mask.shape, np.uint8)
    vol[mask] = templates[names.index(network)] > threshold
    return nib.Nifti1Image(vol, mask_img.affine)


def kernel_weights(coords, peak_xyz, fwhm_mm=20.0) -> np.ndarray:
    """Unnormalised Gaussian kernel ``exp(-Σ_a Δ_a² / (2 σ_a²))`` (peak 1), (n_voxels, n_peaks).

    ``fwhm_mm``: scalar (isotropic) or per-axis (x, y, z) FWHM in mm; ``σ = FWHM /
    sqrt(8 ln 2)``.
    """
    sigma = np.broadcast_to(np.asarray(fwhm_mm, float) * FWHM_TO_SIGMA, (3,))
    coords = np.asarray(coords, float).reshape(-1, 3)
    peaks = np.asarray(peak_xyz, float).reshape(-1, 3)
    diff = (coords[:, None, :] - peaks[None, :, :]) / sigma
    return np.exp(-0.5 * np.einsum("vpa,vpa->vp", diff, diff))


def recreate_study_map(coords, peak_xyz, peak_g, g_threshold, fwhm_mm=20.0):
    """One study's lower-bound, upper-bound and estimated effect-size (Hedges g) maps.

    msnet's rule, after AES-SDM (Radua et al. 2012) and SDM-PSI (Albajes-Eizagirre et al.
    2019): with ``K_p(v)`` the unnormalised Gaussian kernel of peak ``p`` (:func:`kernel_weights`)
    and ``g_p`` its Hedges g,

    * recreated effect ``e(v) = max_{g_p > 0} g_p K_p(v) + min_{g_p < 0} g_p K_p(v)`` (each
      term 0 without peaks of that sign): AES-SDM's kernel recreation, where the strongest
      peak of each sign wins (AES-SDM averages overlapping peaks weighted by distance);
    * certainty ``w(v) = max_p K_p(v)`` (1 at a peak, 0 far from every peak);
    * bounds ``e(v) ± g_thr (1 - w(v))``, with ``g_thr`` the g of a t at the study's
      reporting threshold: at a reported peak the effect is known (``g_p``); far from
      every peak it was not significant, so it lay in ``[-g_thr, g_thr]``; in between the
      interval narrows towards the peak.

    The estimate is the bounds' midpoint, i.e. ``e(v)``: a single peak's map is exactly the
    Gaussian ``g_p K_p(v)`` and a study without peaks contributes 0 (AES-SDM's imputation of
    unreported voxels). :func:`sdm_study_maps` adds the bounds' uncertainty to var(g) as
    ``(upper - lower)² / 12``, the variance of a uniform draw between them: the
    between-imputation variance that multiple imputation with uniform draws would give in
    the limit of many imputations (Rubin's rules; the draws' mean is the midpoint). SDM-PSI
    instead imputes each voxel by maximum likelihood from a truncated normal between the
    bounds and runs the meta-analysis on every imputation; msnet does not implement that
    (see :func:`sdm_meta`). Without that variance, the random-effects z peaks about 10 mm
    off every planted location of the simulated literature (the heterogeneity between
    reporting and 0-imputed studies is largest at the peak) and 5 of 11 are recovered;
    with it, z peaks 3-7 mm from them.

    Returns
    -------
    lower, upper, estimate : numpy.ndarray, shape (n_voxels,)
    """
    coords = np.asarray(coords, float).reshape(-1, 3)
    peak_g = np.asarray(peak_g, float).ravel()
    if peak_g.size == 0:
        zero = np.zeros(len(coords))
        return zero - g_threshold, zero + g_threshold, zero
    k = kernel_weights(coords, peak_xyz, fwhm_mm)
    contrib = k * peak_g[None, :]
    pos = np.where(peak_g > 0, contrib, 0.0).max(axis=1)
    neg = np.where(peak_g < 0, contrib, 0.0).min(axis=1)
    estimate = pos + neg
    half = g_threshold * (1.0 - k.max(axis=1))
    return estimate - half, estimate + half, estimate


def null_study_variance(g, n_ms, n_hc):
    """var(g) of a recreated effect ``g`` (the two-group formula of
    :func:`msnet.stats.hedges_g` evaluated at ``d = g / J``): ``J² (1/n_ms + 1/n_hc) +
    g² / (2 (n_ms + n_hc))``; for g = 0 the sampling variance of a null effect."""
    n_ms, n_hc = float(n_ms), float(n_hc)
    j = 1.0 - 3.0 / (4.0 * (n_ms + n_hc) - 9.0)
    return j**2 * (1.0 / n_ms + 1.0 / n_hc) + np.asarray(g, float) ** 2 / (2.0 * (n_ms + n_hc))


def sdm_study_maps(peaks: pd.DataFrame, studies: pd.DataFrame, network: str, mask_img,
                   fwhm_mm=20.0, image_maps: dict | None = None,
                   bound_variance: bool = True) -> dict:
    """Every study's effect-size and variance maps of one network over ``mask_img``.

    Studies: every row of ``studies`` that analysed ``network`` (peaks of both directions;
    none: the null map 0 with the variance of a null effect) plus every study of
    ``image_maps`` (hybrid mode: ``study -> (g map, var(g) map)``, NIfTI on the mask's grid,
    e.g. msnet's own per-study maps), which enters with its real maps and replaces a
    recreation of the same study. A recreated study's var(g) is
    :func:`null_study_variance` of its recreated g plus, with ``bound_variance`` (default),
    the bounds' uncertainty ``(upper - lower)² / 12`` (:func:`recreate_study_map`): a study
    without peaks has g = 0 and var(g) = ``J² (1/n_ms + 1/n_hc) + g_thr² / 3``.

    Returns
    -------
    dict
        ``studies`` (sorted ids), ``kind`` (``peaks``/``image`` per study), ``Y``, ``V``,
        ``lower``, ``upper`` (k x n_voxels; an image study's bounds are its g), ``n_peaks``.
    """
    from msnet.atlas import mask_coordinates

    image_maps = dict(image_maps or {})
    mask = np.asarray(mask_img.dataobj) > 0
    coords = mask_coordinates(mask_img)
    in_table = [s for s in studies.index if network in studies.loc[s, "networks"]]
    ids = sorted(set(in_table) | set(image_maps))
    sub = peaks[peaks["network"] == network]
    Y = np.zeros((len(ids), int(mask.sum())))
    V, L, U = np.zeros_like(Y), np.zeros_like(Y), np.zeros_like(Y)
    kind, n_peaks = [], []
    if image_maps:
        from msnet.meta import _load_maps

        g_img = _load_maps({s: image_maps[s][0] for s in ids if s in image_maps}, mask_img, "g")
        v_img = _load_maps({s: image_maps[s][1] for s in ids if s in image_maps}, mask_img,
                           "var(g)")
    n_img = 0
    for i, study in enumerate(ids):
        if study in image_maps:
            Y[i] = L[i] = U[i] = g_img[n_img]
            V[i] = v_img[n_img]
            n_img += 1
            kind.append("image")
            n_peaks.append(0)
            continue
        row = studies.loc[study]
        mine = sub[sub["study_id"] == study]
        g_thr = float(threshold_g(row["threshold_p"], row["n_ms"], row["n_hc"]))
        L[i], U[i], Y[i] = recreate_study_map(coords, mine[["x_mni", "y_mni", "z_mni"]],
                                              mine["g"], g_thr, fwhm_mm)
        V[i] = null_study_variance(Y[i], row["n_ms"], row["n_hc"])
        if bound_variance:
            V[i] += (U[i] - L[i]) ** 2 / 12.0
        kind.append("peaks")
        n_peaks.append(len(mine))
    return {"studies": ids, "kind": kind, "Y": Y, "V": V, "lower": L, "upper": U,
            "n_peaks": n_peaks}


def sdm_meta(maps: dict, mask_img, options: dict | None = None, network: str = "") -> dict:
    """Random-effects meta-analysis of recreated (and real) study maps, with FWE.

    The maps of :func:`sdm_study_maps` go through msnet's own voxelwise engine,
    :func:`msnet.meta.voxelwise_meta` (REML τ², Knapp-Hartung by default, I², τ²; the
    ``meta`` options), and its sign-flip FWE: each permutation multiplies every study's whole
    map by ±1 and refits; the maximum |z| over the mask gives voxel-level FWE p. This is
    msnet's calibrated substitute for SDM-PSI's permutation of subject images (which peaks
    do not allow): it is exact when, with no effect, each study's recreated map is
    symmetric about 0 -- a study reports positive and negative peaks alike -- and studies are
    independent; its false-positive rate over simulated null literatures is tested.

    Departures from SDM (AES-SDM 2012 / SDM-PSI 2019), also in the report's methods text:

    1. Study maps are the midpoint of the bounds of :func:`recreate_study_map`, i.e.
       AES-SDM's single kernel recreation, with the bounds' uniform variance added to
       var(g) (the many-imputation limit of Rubin's rules); SDM-PSI's maximum-likelihood
       imputation from truncated normals with multiple imputation is not implemented.
    2. Overlapping peaks of one sign: the strongest kernel value wins (AES-SDM:
       distance-weighted average).
    3. The kernel is restricted to the network's analysis mask, not to a grey-matter
       template with anisotropy from the grey-matter correlation (an anisotropic kernel is
       available as a per-axis FWHM).
    4. Variances: var(g) of each voxel's recreated g from the study's n (AES-SDM) plus the
       bounds' variance (1.); real maps (hybrid) bring their own var(g).
    5. FWE: sign-flip permutation of whole study maps (above), not subject-image
       permutation; heterogeneity is estimated by REML (SDM: DerSimonian-Laird).

    Parameters
    ----------
    maps : dict
        :func:`sdm_study_maps` output.
    mask_img : nibabel image
        The network mask (the grid of the maps).
    options : dict, optional
        The ``meta`` config section (:func:`msnet.meta.resolve_options`).
    network : str
        Seeds this network's permutation stream.

    Returns
    -------
    dict
        :func:`msnet.meta.voxelwise_meta`'s result (``g``, ``z``, ``p_fwe``, ``i2``,
        ``tau2``, ``clusters``, ...) plus ``studies`` and ``kind``.
    """
    import warnings

    from msnet import meta
    from msnet import stats as msstats

    opts = meta.resolve_options(options)
    mask = np.asarray(mask_img.dataobj).astype(bool)
    grid = msstats.VoxelGrid(mask, opts["cluster_connectivity"])
    with warnings.catch_warnings():
        # voxels where every study holds 0 (far from all peaks): Knapp-Hartung's residual
        # variance is 0 and the engine uses the z test there (z = 0), as it warns
        warnings.simplefilter("ignore", RuntimeWarning)
        res = meta.voxelwise_meta(maps["Y"], maps["V"], opts, grid, network)
    res.update(studies=list(maps["studies"]), kind=list(maps["kind"]))
    return res


# --------------------------------------------------------------------------------------
# peaks as a paper publishes them; a simulated literature
# --------------------------------------------------------------------------------------
REPORT_MIN_CLUSTER_MM3 = 80.0
"""Smallest cluster a simulated paper reports: k >= 10 voxels of 2 mm (80 mm³), the usual
extent threshold, expressed in mm³ so coarser analysis grids keep the same volume."""


def publish_peaks(t_map, mask, affine, df, threshold_p=0.001,
                  min_cluster_mm3=REPORT_MIN_CLUSTER_MM3) -> pd.DataFrame:
    """The peak table a paper would print for a two-group t map.

    Clusters (18-connectivity, as SPM) of ``t > t_thr`` and of ``t < -t_thr`` within
    ``mask``, ``t_thr`` the one-sided ``threshold_p`` quantile of t(df), at least
    ``min_cluster_mm3`` large; one peak (the voxel of largest |t|) per cluster.

    Returns
    -------
    pandas.DataFrame
        ``x, y, z`` (mm, MNI), ``space`` (MNI), ``stat`` (t), ``stat_type`` (t),
        ``direction`` (MS>HC/MS<HC), ``cluster_mm3``; strongest first.
    """
    from scipy import ndimage

    t_map = np.where(mask, np.nan_to_num(np.asarray(t_map, float)), 0.0)
    thr = float(stats.t.isf(threshold_p, df))
    voxel_mm3 = abs(np.linalg.det(np.asarray(affine)[:3, :3]))
    structure = ndimage.generate_binary_structure(3, 2)
    rows = []
    for sign, label in ((1, "MS>HC"), (-1, "MS<HC")):
        signed = sign * t_map
        labels, n = ndimage.label(signed > thr, structure)
        for c in range(1, n + 1):
            idx = np.flatnonzero(labels.ravel() == c)
            if idx.size * voxel_mm3 < min_cluster_mm3 - 1e-9:
                continue
            best = idx[np.argmax(signed.ravel()[idx])]
            ijk = np.array(np.unravel_index(best, t_map.shape), float)
            xyz = affine[:3, :3] @ ijk + affine[:3, 3]
            rows.append({"x": xyz[0], "y": xyz[1], "z": xyz[2], "space": "MNI",
                         "stat": float(t_map.ravel()[best]), "stat_type": "t",
                         "direction": label, "cluster_mm3": idx.size * voxel_mm3})
    table = pd.DataFrame(rows, columns=["x", "y", "z", "space", "stat", "stat_type",
                                        "direction", "cluster_mm3"])
    return table.reindex(table["stat"].abs().sort_values(ascending=False).index).reset_index(
        drop=True)


def simulate_literature(sim: dict, seed: int, scale: float = 1.0, effect_d: float = 0.8,
                        threshold_p: float = 0.001,
                        min_cluster_mm3: float = REPORT_MIN_CLUSTER_MM3,
                        return_maps: bool = False, edss_slope: float = 0.0):
    """A simulated literature with the demo's ground truth: every study's published peaks.

    The studies, planted locations and per-study effects are the simulation's
    (:func:`msnet.simulate.plan_effects`, :func:`msnet.simulate.group_sizes`; same config
    and seed as ``sim``), but each study's MS-vs-HC t map is drawn directly instead of from
    simulated subjects: ``t(v) = sqrt(n_ms n_hc / (n_ms + n_hc)) Σ_j s_j d_ij b_j(v) +
    ε(v)`` per analysis network, with ``b_j`` the planted Gaussian blob of finding ``j`` in
    that network (:attr:`msnet.simulate.Grid.blobs`), ``s_j`` its published sign,
    ``d_ij = effect_d · delta_ij / effect_size`` (Cohen's d at the location, the
    simulation's between-study heterogeneity) and ``ε`` a unit-variance smooth Gaussian
    field (the simulation's noise fields). Each map is published with :func:`publish_peaks`.
    Every study gets a mean EDSS drawn uniformly from [1.5, 5.5] (the studies table's
    ``edss``); ``edss_slope`` plants a study-level moderator: ``d_ij`` gains
    ``edss_slope * (edss_i - mean)`` at every planted location whatever its sign (the MS-HC
    difference rises with EDSS); 0 (default) is the published null.
    ``scale`` sets the sample sizes (1.0: the published 1,524 MS / 886 HC): at the demo's 5 %
    (2-17 subjects per group) almost no cluster survives p < 0.001, as in the demo's own
    per-study t maps.

    Returns
    -------
    peaks : pandas.DataFrame
        peaks.tsv rows (``study_id, network, x, y, z, space, stat, stat_type, direction``).
    studies : pandas.DataFrame
        Literature studies table rows (``study_id, n_ms, n_hc, threshold_p, coverage,
        edss``).
    maps : dict
        Only with ``return_maps``: ``{study: {network: (t, g, var_g)}}``, 3-D arrays on the
        simulation grid (``g``, ``var_g`` from t with :func:`t_to_g`), the "images" a study
        sharing its data would give (hybrid mode).
    """
    from msnet import simulate

    cfg = simulate.sim_config({**sim, "scale": scale})
    grid = simulate.load_grid(cfg["resolution_mm"])
    effects = simulate.plan_effects(cfg, seed)
    sizes = simulate.group_sizes(cfg)
    ids = simulate.study_ids(cfg)
    affine = grid.mask_img.affine
    edss = np.random.default_rng([seed, 91]).uniform(1.5, 5.5, len(ids))
    rows, study_rows, maps = [], [], {}
    for i, (study, (n_ms, n_hc)) in enumerate(zip(ids, sizes)):
        rng = np.random.default_rng([seed, 90, i])
        noise = simulate._smooth_fields(rng, grid, len(ANALYSIS_NETWORKS))
        mine = effects[effects["study_id"] == study].reset_index(drop=True)
        scale_t = np.sqrt(n_ms * n_hc / (n_ms + n_hc))
        for k, network in enumerate(ANALYSIS_NETWORKS):
            signal = np.zeros(grid.mask.sum())
            for j, f in mine.iterrows():
                if f["network"] == network:
                    d = effect_d * f["delta"] / cfg["effect_size"]
                    moderated = edss_slope * (edss[i] - edss.mean())
                    signal += (f["direction"] * d + moderated) * grid.blobs[j]
            t = np.zeros(grid.mask.shape)
            t[grid.mask] = scale_t * signal + noise[k]
            table = publish_peaks(t, grid.mask, affine, n_ms + n_hc - 2, threshold_p,
                                  min_cluster_mm3)
            table.insert(0, "network", network)
            table.insert(0, "study_id", study)
            rows.append(table.drop(columns="cluster_mm3"))
            if return_maps:
                g, var_g = t_to_g(t, n_ms, n_hc)
                maps.setdefault(study, {})[network] = (t, np.where(grid.mask, g, 0.0),
                                                       np.where(grid.mask, var_g, 0.0))
        study_rows.append({"study_id": study, "n_ms": n_ms, "n_hc": n_hc,
                           "threshold_p": threshold_p, "coverage": "whole_brain",
                           "edss": round(float(edss[i]), 2)})
    peaks = pd.concat(rows, ignore_index=True)
    for col in ("x", "y", "z"):
        peaks[col] = peaks[col].round(1)
    peaks["stat"] = peaks["stat"].round(3)
    if return_maps:
        return peaks, pd.DataFrame(study_rows), maps
    return peaks, pd.DataFrame(study_rows)


# --------------------------------------------------------------------------------------
# workflow: configuration, the demo's published peaks, every method per network
# --------------------------------------------------------------------------------------
LITERATURE_DEFAULTS = {"peaks_tsv": None, "studies_tsv": None, "compare_simulated": True,
                       "fwhm_mm": 20.0, "bound_variance": True, "n_iters": 10000,
                       "n_permutations": 1000, "resolution_mm": 2,
                       "moderators": ["age", "duration", "edss", "t2lv"]}
"""Defaults of the ``literature`` config section (the schema documents each key)."""

METHOD_LABELS = {"ibma": "image-based meta-analysis", "ale": "ALE (NiMARE)",
                 "mkda": "MKDA (NiMARE)", "sdm": "SDM-style (peaks only)",
                 "hybrid": "hybrid (peaks + images)"}
"""``method-`` entity value -> name in tables and the report (``ibma``: the meta stage)."""

DIRECTION_ENTITIES = {"MS>HC": "inc", "MS<HC": "dec"}
"""Contrast -> ``direction-`` entity value of the ALE and MKDA outputs."""


def literature_enabled(config: dict) -> bool:
    """Whether the workflow runs literature mode: ``data.mode: literature``, literature tables
    given next to image studies (mixed), or the demo's CBMA-vs-IBMA comparison
    (``data.mode: simulate`` with ``literature.compare_simulated``)."""
    lit = {**LITERATURE_DEFAULTS, **(config.get("literature") or {})}
    mode = config["data"]["mode"]
    return (mode == "literature" or bool(lit["peaks_tsv"])
            or (mode == "simulate" and bool(lit["compare_simulated"])))


def check_literature_tables(config: dict) -> None:
    """Validate the configured peaks and literature studies tables (no-op without them), with
    the messages of :func:`read_literature_studies` and :func:`read_peaks`, before any job.

    Raises
    ------
    MsnetInputErrors
        Every problem of the two tables, each naming the file, the row and the fix.
    """
    lit = config.get("literature") or {}
    if not lit.get("peaks_tsv"):
        return
    studies = read_literature_studies(lit["studies_tsv"])
    read_peaks(lit["peaks_tsv"], studies, lit["studies_tsv"])


def published_studies(config: dict) -> pd.DataFrame | None:
    """The configured literature studies with their peak counts (``msnet validate`` and
    ``msnet plan``), or None without literature tables.

    Returns
    -------
    pandas.DataFrame or None
        ``study_id, n_ms, n_hc, peaks`` per study of the studies table, in its order.
    """
    lit = config.get("literature") or {}
    if not lit.get("peaks_tsv"):
        return None
    studies = read_literature_studies(lit["studies_tsv"])
    peaks = read_peaks(lit["peaks_tsv"], studies, lit["studies_tsv"])
    counts = peaks.groupby("study_id").size()
    table = studies[["study_id", "n_ms", "n_hc"]].reset_index(drop=True)
    table["peaks"] = table["study_id"].map(counts).fillna(0).astype(int)
    return table


def literature_stem(network: str, method: str, direction: str | None = None) -> str:
    """File-name stem of one method's outputs for one network (and direction, ALE/MKDA):
    ``literature_network-{net}_method-{method}[_direction-{inc|dec}]``."""
    stem = f"literature_network-{network}_method-{method}"
    return stem + (f"_direction-{DIRECTION_ENTITIES[direction]}" if direction else "")


def literature_outputs(out_dir, networks, space: str, hybrid: bool, comparison: bool,
                       masks: bool = False) -> dict:
    """Every file :func:`literature_meta` writes (the one place that names them).

    Returns
    -------
    dict
        ``maps``: ``{network: {label: {stat: path}}}`` with label ``ale_inc``, ``ale_dec``,
        ``mkda_inc``, ``mkda_dec`` (stats ``z``, ``logpfwe``), ``sdm`` and, with ``hybrid``,
        ``hybrid`` (``g``, ``z``, ``logpfwe``, ``i2``); ``clusters``: ``{network: {label:
        path}}``; ``metaregression``, ``methods`` and, with ``comparison``, ``comparison``
        and ``recovery``; with ``masks``, ``masks``: ``{network: path}`` (literature-only
        mode: the template masks it builds).
    """
    from msnet.io.plan import map_name, mask_name

    out_dir = Path(out_dir)
    runs = [(m, d) for m in ("ale", "mkda") for d in DIRECTIONS]
    runs += [("sdm", None)] + ([("hybrid", None)] if hybrid else [])
    out = {"maps": {}, "clusters": {}}
    for net in networks:
        for method, direction in runs:
            label = method + (f"_{DIRECTION_ENTITIES[direction]}" if direction else "")
            stem = literature_stem(net, method, direction)
            stats = ("z", "logpfwe") if direction else ("g", "z", "logpfwe", "i2")
            out["maps"].setdefault(net, {})[label] = {
                s: str(out_dir / map_name(stem, s, space)) for s in stats}
            out["clusters"].setdefault(net, {})[label] = str(out_dir / f"{stem}_clusters.tsv")
    out["metaregression"] = str(out_dir / "literature_desc-metaregression_stats.tsv")
    out["methods"] = str(out_dir / "literature_desc-methods.txt")
    if comparison:
        out["comparison"] = str(out_dir / "literature_desc-comparison_stats.tsv")
        out["recovery"] = str(out_dir / "literature_desc-recovery_stats.tsv")
    if masks:
        out["masks"] = {n: str(out_dir / "masks" / mask_name(n, space)) for n in networks}
    return out


PUBLISHED_COLUMNS = ["study_id", "network", "x", "y", "z", "space", "stat", "stat_type",
                     "direction"]
"""Columns of the demo's published peaks table (the ``peaks.tsv`` schema)."""


def publish_study_peaks(t_maps: dict, study_tables: dict, moderators, out_peaks, out_studies,
                        threshold_p: float = 0.001,
                        min_cluster_mm3: float = REPORT_MIN_CLUSTER_MM3) -> dict:
    """Every study's "paper": the peaks of its MS-vs-HC t maps, as a literature would hold them.

    Each study's t map of each network (the group stage's, within the network mask) is
    published with :func:`publish_peaks` (clusters at one-sided p < ``threshold_p`` with the
    df of the study's ``within_{net}`` model, at least ``min_cluster_mm3``, one peak per
    cluster). The studies table gets the study's n (``n_ms``, ``n_hc`` of its group table),
    its reporting threshold, ``coverage`` network (the maps cover the network mask only) and
    the meta stage's study moderators. A study with fewer than 2 subjects in a group has no
    t map and is left out (logged).

    Parameters
    ----------
    t_maps : dict
        Study -> network -> ``study-{id}_network-{net}_..._stat-t_map.nii.gz``.
    study_tables : dict
        Study -> ``study-{id}_desc-MSvsHC_networks.tsv``.
    moderators : str or Path
        ``meta_desc-studies_moderators.tsv`` (columns ``study`` and :data:`msnet.meta.MODERATORS`).
    out_peaks, out_studies : str or Path
        The peaks table and the literature studies table to write (readable by
        :func:`read_peaks` and :func:`read_literature_studies`).
    threshold_p, min_cluster_mm3 : float
        The reporting threshold of every simulated paper (p < 0.001, k >= 10 voxels of 2 mm).

    Returns
    -------
    dict
        ``peaks`` and ``studies`` (DataFrames written).
    """
    import nibabel as nib

    from msnet.meta import MODERATORS

    mods = pd.read_csv(moderators, sep="\t", na_values=["n/a"]).set_index("study")
    peaks, rows = [], []
    for study in sorted(t_maps):
        table = pd.read_csv(study_tables[study], sep="\t", na_values=["n/a"])
        within = table[table["metric"].isin([f"within_{n}" for n in t_maps[study]])]
        n_ms, n_hc = within["n_ms"].min(), within["n_hc"].min()
        if not (n_ms >= 2 and n_hc >= 2):
            LOGGER.info("study %s: %s MS / %s HC included, no t map: not published",
                        study, n_ms, n_hc)
            continue
        for net, path in t_maps[study].items():
            df = within.loc[within["metric"] == f"within_{net}", "df"]
            img = nib.load(str(path))
            t = np.asarray(img.dataobj, float)
            if df.empty or not np.isfinite(df.iloc[0]) or not np.isfinite(t).any():
                continue
            found = publish_peaks(t, np.isfinite(t) & (t != 0), img.affine, float(df.iloc[0]),
                                  threshold_p, min_cluster_mm3)
            peaks.append(found.assign(study_id=study, network=net))
        rows.append({"study_id": study, "n_ms": int(n_ms), "n_hc": int(n_hc),
                     "threshold_p": threshold_p,
                     "threshold_k": min_cluster_mm3 / 8.0, "coverage": "network",
                     "networks": ",".join(t_maps[study]),
                     **{m: mods.loc[study, m] if study in mods.index and m in mods else np.nan
                        for m in MODERATORS}})
    peak_table = (pd.concat(peaks, ignore_index=True) if peaks
                  else pd.DataFrame(columns=PUBLISHED_COLUMNS))[PUBLISHED_COLUMNS]
    peak_table[["x", "y", "z"]] = peak_table[["x", "y", "z"]].astype(float).round(1)
    peak_table["stat"] = peak_table["stat"].astype(float).round(3)
    studies = pd.DataFrame(rows)
    sim = ("Simulated: msnet's demo studies' t-map peaks published as papers would print "
           "them (msnet.literature.publish_study_peaks).")
    _write_schema_table(peak_table, out_peaks, "peaks", sim)
    _write_schema_table(studies, out_studies, "literature_studies", sim)
    LOGGER.info("%d studies published %d peaks", len(studies), len(peak_table))
    return {"peaks": peak_table, "studies": studies}


def _write_schema_table(table: pd.DataFrame, path, schema: str, description: str) -> None:
    """Write an input-format table (peaks or literature studies) with the column dictionary
    of its schema (the columns mean what the input tables' columns mean)."""
    from msnet.config import load_schema
    from msnet.derivatives import sidecar_path
    from msnet.io.atomic import write_json, write_tsv

    props = load_schema(schema)["properties"]
    write_tsv(table, path, na_rep="n/a")
    write_json({"Description": description,
                **{c: {"Description": props[c]["description"]} for c in table.columns}},
               sidecar_path(path))


def _save(values, mask_img, path, sidecar: dict, fill=0.0):
    """Save values over the mask (3-D arrays pass through) as a map with its sidecar."""
    import nibabel as nib

    from msnet.derivatives import save_map

    mask = np.asarray(mask_img.dataobj) > 0
    values = np.asarray(values, float)
    vol = values if values.shape == mask.shape else np.where(mask, 0.0, fill)
    if values.shape != mask.shape:
        vol[mask] = np.where(np.isfinite(values), values, fill)
    img = nib.Nifti1Image(np.asarray(vol, np.float32), mask_img.affine)
    img.header.set_xyzt_units("mm")
    save_map(img, path, sidecar)


def cbma_cluster_table(res: dict, sign: int, mask_img, alpha: float, network: str,
                       connectivity: int = 1) -> pd.DataFrame:
    """Clusters of FWE-significant voxels of an ALE or MKDA result, with the columns of
    :func:`msnet.stats.cluster_table` (Harvard-Oxford label of each peak): clusters are
    formed by the voxels with voxel-level Monte-Carlo FWE p < ``alpha`` (NiMARE's maps carry
    no cluster-level null here, so ``cluster_p_fwe`` is empty); ``peak_zstat`` is the z of
    the peak (signed: MS>HC positive), ``peak_stat`` its ALE value or MKDA density."""
    from msnet import stats as msstats

    mask = np.asarray(mask_img.dataobj) > 0
    z = sign * res["z"][mask].astype(float)
    p_fwe = 10.0 ** -res["logp_fwe"][mask].astype(float)
    sig = np.where(p_fwe < alpha, z, 0.0)
    grid = msstats.VoxelGrid(mask, connectivity)
    labels, sizes, signs = grid.clusters(sig, 0.0, True)
    order = np.argsort(-sizes, kind="stable")
    relabel = np.zeros(sizes.size + 1, np.int64)
    relabel[order + 1] = np.arange(1, sizes.size + 1)
    clusters = msstats.ClusterResult(0.0, relabel[labels], sizes[order], signs[order],
                                     np.full(sizes.size, np.nan), np.zeros(0))
    perm = msstats.PermutationResult(t=z, p=p_fwe, effect=res["stat"][mask].astype(float),
                                     sigma=np.zeros_like(z), df=0, n_perm=0, p_fwe=p_fwe,
                                     h0_max_t=np.zeros(0), clusters=clusters)
    table = msstats.cluster_table(perm, mask_img, None, "stat", alpha, ("MS>HC", "MS<HC"))
    table["significant"] = table["peak_p_fwe"] < alpha
    table = table.rename(columns={"peak_t": "peak_zstat"})
    table.insert(0, "network", network)
    return table


def sdm_metaregression(maps: dict, mask_img, moderators: pd.DataFrame, opts: dict,
                       network: str, method: str) -> pd.DataFrame:
    """Voxelwise meta-regression of the SDM-style (or hybrid) study maps on each moderator.

    :func:`msnet.meta.voxelwise_metaregression` (the meta stage's engine: mixed-effects
    model at every voxel, max-|z| FWE by permuting the moderator across studies) on the
    studies with a value; one row per moderator at the voxel of largest |z|: its slope,
    z and FWE p, MNI coordinate and Harvard-Oxford label. A moderator known for too few
    studies or constant gets a row with the reason in ``warning``. Far from every peak most
    recreated maps are 0 and Knapp-Hartung's residual variance is tiny, so the largest |z|
    can sit in a kernel's tail with a small slope; the max-|z| permutation null is computed
    the same way, so the FWE p stays valid, but read the location with that in mind.
    :func:`literature_meta` adds Benjamini-Hochberg q over all rows (``q_fdr``).
    """
    from msnet import meta
    from msnet.atlas import harvard_oxford_label, mask_coordinates

    coords = mask_coordinates(mask_img)
    values = moderators.reindex(maps["studies"])
    rows = []
    for name in opts["moderators"]:
        x = values[name].to_numpy(float) if name in values else np.full(len(values), np.nan)
        row = {"method": method, "network": network, "moderator": name,
               "k": int(np.isfinite(x).sum()), "warning": meta._moderator_problem(
                   x, opts["min_studies"])}
        if not row["warning"]:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-zero voxels, as sdm_meta
                reg = meta.voxelwise_metaregression(maps["Y"], maps["V"], x, opts,
                                                    f"{network}-{method}", name)
            z = np.nan_to_num(reg["z"])
            peak = int(np.argmax(np.abs(z)))
            row.update(beta=reg["beta"][peak], z=z[peak], p_fwe=reg["p_fwe"][peak],
                       significant=bool(reg["p_fwe"][peak] < opts["alpha"]),
                       peak_x=coords[peak, 0], peak_y=coords[peak, 1], peak_z=coords[peak, 2],
                       label=harvard_oxford_label(coords[peak]),
                       n_permutations=reg["n_permutations"])
        rows.append(row)
    return pd.DataFrame(rows, columns=METAREG_COLUMNS)


METAREG_COLUMNS = ["method", "network", "moderator", "k", "beta", "z", "p_fwe", "significant",
                   "peak_x", "peak_y", "peak_z", "label", "n_permutations", "warning"]
"""Columns of ``literature_desc-metaregression_stats.tsv``."""


def _moderator_frame(studies: pd.DataFrame, image_moderators=None) -> pd.DataFrame:
    """Study -> moderators: the literature studies table's, then the meta stage's table
    (``meta_desc-studies_moderators.tsv``) for image studies not in it."""
    from msnet.meta import MODERATORS

    frame = studies[list(MODERATORS)].astype(float)
    if image_moderators:
        extra = pd.read_csv(image_moderators, sep="\t", na_values=["n/a"]).set_index("study")
        extra = extra.reindex(columns=list(MODERATORS)).astype(float)
        frame = pd.concat([frame, extra[~extra.index.isin(frame.index)]])
    return frame


def _network_mask(network, masks, out, resolution_mm, space):
    """The network's analysis mask: the given one, else its template mask (written)."""
    import nibabel as nib

    if masks:
        return nib.load(str(masks[network]))
    from nilearn import datasets, image

    brain = datasets.load_mni152_brain_mask(resolution=2)
    if resolution_mm != 2:
        brain = image.resample_img(brain, target_affine=np.diag([float(resolution_mm)] * 3),
                                   interpolation="nearest", force_resample=True,
                                   copy_header=True)
    mask_img = template_mask(network, brain)
    _save(np.asarray(mask_img.dataobj), mask_img, out["masks"][network], {
        "Description": "Analysis mask of the network for literature mode: the network's "
                       "template (Gaussian blobs on the Seitzman ROIs) above 0.2 within "
                       f"nilearn's MNI152 brain mask at {resolution_mm} mm.",
        "Units": "binary"})
    return mask_img


def literature_meta(peaks_tsv, studies_tsv, out_dir, options: dict, space: str,
                    masks: dict | None = None, image_maps: dict | None = None,
                    image_moderators=None, ibma_maps: dict | None = None,
                    simulated: bool = False) -> dict:
    """Literature mode for every network (Snakemake rule ``literature_meta``).

    Per network: ALE and MKDA of each direction (:func:`cbma_nimare`, NiMARE's Monte-Carlo
    voxel FWE), the SDM-style random-effects meta-analysis of the peaks
    (:func:`sdm_study_maps`, :func:`sdm_meta`) and, with ``image_maps``, the hybrid one
    (those studies enter with their real g and var(g) maps); each with its maps, cluster table
    and voxelwise meta-regressions (:func:`sdm_metaregression`); then the methods text and,
    with ``ibma_maps``, the comparison with the image-based meta-analysis
    (:func:`compare_methods`). Every map follows msnet's sign convention: z and the signed
    ``-log10`` FWE p are positive for MS > HC (an ALE/MKDA ``direction-dec`` map holds -z).

    Parameters
    ----------
    peaks_tsv, studies_tsv : str or Path
        The peaks and literature studies tables (validated again here).
    out_dir : str or Path
        ``results/literature``.
    options : dict
        The ``literature`` section plus ``meta`` (the meta stage's options, with ``seed``),
        ``radius_mm`` (the report's search radius) and ``networks``.
    space : str
        Template space of the output names.
    masks : dict, optional
        Network -> analysis mask (the group stage's); None builds template masks at
        ``resolution_mm`` (literature-only mode) and writes them.
    image_maps : dict, optional
        Network -> study -> (g map, var(g) map): the studies the hybrid takes as images.
    image_moderators : str or Path, optional
        The meta stage's study moderators table (moderators of image studies).
    ibma_maps : dict, optional
        Network -> ``{"z": path, "logpfwe": path}`` of the image-based meta-analysis.
    simulated : bool
        The planted truth is known (the demo): count false positives against it.

    Returns
    -------
    dict
        :func:`literature_outputs`.
    """
    from msnet import meta
    from msnet import stats as msstats
    from msnet.derivatives import write_table
    from msnet.io.atomic import write_text
    from msnet.report import literature_methods_text

    opts = {**LITERATURE_DEFAULTS, **options}
    meta_opts = meta.resolve_options({**opts["meta"], "n_permutations": opts["n_permutations"],
                                      "moderators": opts["moderators"]})
    networks = list(opts.get("networks") or ANALYSIS_NETWORKS)
    out = literature_outputs(out_dir, networks, space, bool(image_maps), bool(ibma_maps),
                             masks=not masks)
    studies = read_literature_studies(studies_tsv)
    peaks = read_peaks(peaks_tsv, studies, studies_tsv)
    mods = _moderator_frame(studies, image_moderators)
    alpha = meta_opts["alpha"]
    results, metareg = {}, []
    for net in networks:
        mask_img = _network_mask(net, masks, out, opts["resolution_mm"], space)
        results[net] = _cbma_network(peaks, studies, net, mask_img, out, opts, alpha)
        for method, images in (("sdm", None), ("hybrid", (image_maps or {}).get(net))):
            if method == "hybrid" and not image_maps:
                continue
            maps = sdm_study_maps(peaks, studies, net, mask_img, opts["fwhm_mm"], images,
                                  opts["bound_variance"])
            res = sdm_meta(maps, mask_img, meta_opts, net)
            _write_sdm(res, maps, mask_img, out["maps"][net][method],
                       out["clusters"][net][method], net, method, alpha)
            results[net][method] = (res["z"], msstats.signed_logp(res["p_fwe"], res["z"]),
                                    mask_img)
            metareg.append(sdm_metaregression(maps, mask_img, mods, meta_opts, net, method))
    metareg = pd.concat(metareg, ignore_index=True)
    tested = metareg["p_fwe"].notna().to_numpy()
    metareg["q_fdr"] = np.nan
    metareg.loc[tested, "q_fdr"] = msstats.fdr_bh(metareg.loc[tested, "p_fwe"].to_numpy(float))
    write_table(metareg, out["metaregression"], na_rep="n/a")
    write_text(literature_methods_text(opts, meta_opts, bool(image_maps), simulated),
               out["methods"])
    _text_sidecar(out["methods"], "Methods text of the coordinate-based and hybrid "
                                  "meta-analyses, generated from the options used, with "
                                  "every departure from SDM and the references.")
    if ibma_maps:
        summary, recovery = compare_methods(results, ibma_maps, alpha, opts["radius_mm"],
                                            simulated)
        write_table(summary, out["comparison"], na_rep="n/a")
        write_table(recovery, out["recovery"], na_rep="n/a")
    return out


def _text_sidecar(path, description: str) -> None:
    from msnet.derivatives import sidecar_path
    from msnet.io.atomic import write_json

    write_json({"Description": description}, sidecar_path(path))


def _cbma_network(peaks, studies, net, mask_img, out, opts, alpha) -> dict:
    """ALE and MKDA of both directions of one network: maps and cluster tables written;
    returns ``{method: (signed z, signed -log10 FWE p, mask)}`` with the two directions
    combined (at each voxel the direction with the smaller FWE p)."""
    from msnet.derivatives import write_table

    combined = {}
    for method in ("ale", "mkda"):
        signed = []
        for direction, sign in DIRECTIONS.items():
            label = f"{method}_{DIRECTION_ENTITIES[direction]}"
            res = cbma_nimare(peaks, studies, net, direction, mask_img, method.upper(),
                              opts["n_iters"], opts["meta"]["seed"])
            paths = out["maps"][net][label]
            note = {"Method": METHOD_LABELS[method], "Direction": direction,
                    "Studies": res["n_studies"], "Peaks": res["n_peaks"],
                    "Skipped": res["skipped"], "NiMAREDescription": res["description"]}
            z, logp = sign * res["z"], sign * res["logp_fwe"]
            _save(z, mask_img, paths["z"], {**note, "Description":
                  f"{METHOD_LABELS[method]} z of the convergence of {direction} peaks "
                  "(negative for MS<HC, msnet's sign convention)."})
            _save(logp, mask_img, paths["logpfwe"], {**note, "Description":
                  "Signed -log10 of the voxel-level Monte-Carlo FWE p (NiMARE "
                  "FWECorrector, literature.n_iters relocations of the peaks)."})
            table = cbma_cluster_table(res, sign, mask_img, alpha, net)
            write_table(table, out["clusters"][net][label], na_rep="n/a")
            signed.append((z, logp))
        (z1, l1), (z2, l2) = signed
        first = np.abs(l1) >= np.abs(l2)
        combined[method] = (np.where(first, z1, z2), np.where(first, l1, l2), mask_img)
    return combined


def _write_sdm(res, maps, mask_img, paths, clusters_path, net, method, alpha) -> None:
    from msnet import meta
    from msnet import stats as msstats
    from msnet.derivatives import write_table

    kinds = pd.Series(maps["kind"]).value_counts().to_dict()
    note = {"Method": METHOD_LABELS[method], "Studies": len(maps["studies"]),
            "StudiesFromPeaks": int(kinds.get("peaks", 0)),
            "StudiesFromImages": int(kinds.get("image", 0)),
            "Permutations": int(res["n_permutations"])}
    stats = {"g": res["g"], "z": res["z"],
             "logpfwe": msstats.signed_logp(res["p_fwe"], res["z"]), "i2": res["i2"]}
    for stat, values in stats.items():
        _save(values, mask_img, paths[stat], note)
    table = meta.cluster_table(res, mask_img, alpha, net)
    write_table(table, clusters_path, na_rep="n/a")


# --------------------------------------------------------------------------------------
# CBMA vs IBMA on the same studies
# --------------------------------------------------------------------------------------
COMPARISON_COLUMNS = ["method", "network", "significant_voxels", "n_findings", "recovered",
                      "dice_ibma", "significant_peaks", "false_positive_peaks"]
"""Columns of ``literature_desc-comparison_stats.tsv``."""


def _volume(values, mask_img) -> np.ndarray:
    """3-D float array of values given over the mask (3-D arrays pass through)."""
    mask = np.asarray(mask_img.dataobj) > 0
    values = np.asarray(values, float)
    if values.shape == mask.shape:
        return np.nan_to_num(values)
    vol = np.zeros(mask.shape)
    vol[mask] = np.nan_to_num(values)
    return vol


def false_positive_peaks(stat, logp, affine, network, alpha, radius_mm) -> tuple[int, int]:
    """FWE-significant local maxima of a signed map (as :func:`msnet.report.
    compare_with_published` finds them) and how many lie farther than ``radius_mm`` from
    every planted location of ``network`` with their sign (the simulation plants effects at
    :func:`msnet.atlas.published_findings` and nowhere else).

    Returns
    -------
    (n_peaks, n_false)
    """
    from msnet.atlas import published_findings
    from msnet.report import fwe_significant, signed_local_maxima

    truth = published_findings().query("network == @network")
    sig = fwe_significant(logp, alpha).ravel()
    ijk = np.indices(stat.shape).reshape(3, -1).T
    n_peaks = n_false = 0
    for sign, (_, local) in signed_local_maxima(stat).items():
        idx = np.flatnonzero(local & sig)
        xyz = ijk[idx] @ affine[:3, :3].T + affine[:3, 3]
        planted = truth.loc[truth["direction"] == sign, ["x", "y", "z"]].to_numpy(float)
        dist = (np.linalg.norm(xyz[:, None] - planted[None], axis=2).min(axis=1)
                if len(planted) else np.full(len(idx), np.inf))
        n_peaks += len(idx)
        n_false += int((dist > radius_mm).sum())
    return n_peaks, n_false


def compare_methods(results: dict, ibma_maps: dict, alpha: float, radius_mm: float,
                    simulated: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each method against the image-based meta-analysis of the same studies and the truth.

    Per network and method (the image-based one, ``ibma``, included): the published
    locations recovered (:func:`msnet.report.compare_with_published`: an FWE-significant
    local maximum of the published sign within ``radius_mm``, its distance and statistic),
    the Dice overlap of the FWE-significant voxels (same sign) with the image-based result,
    and, when ``simulated``, the significant peaks farther than ``radius_mm`` from every
    planted location of their sign (:func:`false_positive_peaks`).

    Parameters
    ----------
    results : dict
        Network -> method -> (signed z, signed -log10 FWE p, mask image), values over the
        mask or 3-D (ALE and MKDA: both directions combined).
    ibma_maps : dict
        Network -> ``{"z": path, "logpfwe": path}`` (the meta stage's maps, same grid).

    Returns
    -------
    summary : pandas.DataFrame
        :data:`COMPARISON_COLUMNS`, one row per method and network.
    recovery : pandas.DataFrame
        ``method`` + :func:`msnet.report.compare_with_published`'s columns, one row per
        method and published finding.
    """
    import nibabel as nib

    from msnet.report import compare_with_published, fwe_significant

    summary, recovery = [], []
    for net, methods in results.items():
        mask_img = next(iter(methods.values()))[2]
        z_img, l_img = (nib.load(str(ibma_maps[net][k])) for k in ("z", "logpfwe"))
        if z_img.shape[:3] != mask_img.shape[:3]:
            raise MsnetInputError(
                f"{ibma_maps[net]['z']}: the image-based meta-analysis map {z_img.shape} is "
                f"not on the literature grid {mask_img.shape}; give both the same network "
                "masks.")
        rows = {"ibma": (np.asarray(z_img.dataobj, float), np.asarray(l_img.dataobj, float))}
        rows.update({m: (_volume(z, mask_img), _volume(lp, mask_img))
                     for m, (z, lp, _) in methods.items()})
        ref = np.sign(rows["ibma"][0]) * fwe_significant(rows["ibma"][1], alpha)
        for method, (z, logp) in rows.items():
            sig = np.sign(z) * fwe_significant(logp, alpha)
            both = np.count_nonzero(sig) + np.count_nonzero(ref)
            dice = 2.0 * np.count_nonzero((sig == ref) & (sig != 0)) / both if both else np.nan
            table = compare_with_published(nib.Nifti1Image(z, mask_img.affine),
                                           nib.Nifti1Image(logp, mask_img.affine), net,
                                           alpha, radius_mm)
            n_peaks, n_false = false_positive_peaks(z, logp, mask_img.affine, net, alpha,
                                                    radius_mm)
            summary.append({"method": method, "network": net,
                            "significant_voxels": int(np.count_nonzero(sig)),
                            "n_findings": len(table), "recovered": int(table["found"].sum()),
                            "dice_ibma": dice, "significant_peaks": n_peaks,
                            "false_positive_peaks": n_false if simulated else np.nan})
            recovery.append(table.assign(method=method))
    recovery = pd.concat(recovery, ignore_index=True)
    return (pd.DataFrame(summary, columns=COMPARISON_COLUMNS),
            recovery[["method", *[c for c in recovery.columns if c != "method"]]])
