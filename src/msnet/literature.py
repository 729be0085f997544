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
"""

from __future__ import annotations

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


def _brain_distance():
    """(distance-to-brain map in mm, affine) for nilearn's 2 mm MNI152 brain mask (cached)."""
    global _BRAIN_DISTANCE
    if _BRAIN_DISTANCE is None:
        from nilearn import datasets
        from scipy import ndimage

        img = datasets.load_mni152_brain_mask(resolution=2)
        mask = np.asarray(img.dataobj) > 0
        zooms = img.header.get_zooms()[:3]
        _BRAIN_DISTANCE = (ndimage.distance_transform_edt(~mask, sampling=zooms), img.affine)
    return _BRAIN_DISTANCE


_BRAIN_DISTANCE = None


def distance_outside_brain(coords_mni) -> np.ndarray:
    """Distance in mm from each MNI coordinate to the MNI152 brain mask (0 inside; inf off
    the template's field of view)."""
    dist, affine = _brain_distance()
    coords = np.asarray(coords_mni, float).reshape(-1, 3)
    ijk = np.rint(np.c_[coords, np.ones(len(coords))] @ np.linalg.inv(affine).T)[:, :3]
    ijk = ijk.astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(dist.shape)), axis=1)
    out = np.full(len(coords), np.inf)
    out[inside] = dist[tuple(ijk[inside].T)]
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

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        studyset = Studyset(source, target="mni152_2mm", mask=mask_img)
        result = _nimare_estimator(method, seed).fit(studyset)
        corrected = FWECorrector(method="montecarlo", n_iters=int(n_iters), vfwe_only=True,
                                 n_cores=1).transform(result)

    def get(name):
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

    from msnet.atlas import network_names, network_templates

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
                        return_maps: bool = False):
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
    ``scale`` sets the sample sizes (1.0: the published 1,524 MS / 886 HC): at the demo's 5 %
    (2-17 subjects per group) almost no cluster survives p < 0.001, as in the demo's own
    per-study t maps.

    Returns
    -------
    peaks : pandas.DataFrame
        peaks.tsv rows (``study_id, network, x, y, z, space, stat, stat_type, direction``).
    studies : pandas.DataFrame
        Literature studies table rows (``study_id, n_ms, n_hc, threshold_p, coverage``).
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
                    signal += f["direction"] * d * grid.blobs[j]
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
                           "threshold_p": threshold_p, "coverage": "whole_brain"})
    peaks = pd.concat(rows, ignore_index=True)
    for col in ("x", "y", "z"):
        peaks[col] = peaks[col].round(1)
    peaks["stat"] = peaks["stat"].round(3)
    if return_maps:
        return peaks, pd.DataFrame(study_rows), maps
    return peaks, pd.DataFrame(study_rows)
