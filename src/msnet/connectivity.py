"""Network connectivity for one subject: dual regression, ROI matrices, network summaries, seeds.

Input is a subject's cleaned BOLD over the analysis mask (``CleanedBold`` from
:mod:`msnet.denoise`: array ``(n_kept, n_voxels)``, voxels in C order of ``mask_img``). Lesion
voxels are not in the analysis mask, so they never enter a time course, a sphere or a map.

Outputs per subject (names from the caller's ``out_paths``):

* four dual-regression stage-2 maps (DMN, SMN, VN, SN), float32 NIfTI on the analysis grid,
  0 outside the analysis mask, NaN at voxels without signal (constant BOLD); see
  :func:`dual_regression` for the statistic they hold;
* Seitzman-300 sphere time series and their Fisher-z correlation matrix (TSV), each with a
  BIDS-style JSON sidecar (same name, ``.json``) describing every ROI column: MNI coordinate,
  network, sphere size and whether the sphere was empty and fell back to the nearest voxel;
* a long within/between-network table (mean Fisher z over edges);
* optionally seed-to-voxel Fisher-z maps from the canonical seeds;
* the QC JSON: denoising's QC extended with ``dr_template_r`` (spatial correlation of each
  stage-2 map with its template), ``dr_vif`` (variance inflation of each network's stage-2
  coefficient, see :func:`design_vif`; above ``max_vif`` the subject is excluded),
  ``dr_n_flat_voxels`` (voxels whose cleaned series is constant; they and the voxels whose
  raw BOLD is constant, ``n_flat_voxels`` from denoising, are NaN in the maps),
  ``roi_fallback`` / ``roi_missing`` (ROI names), ``seed_n_voxels`` (with seed maps),
  ``study_id`` and ``connectivity`` (options used). Written last, so its
  presence means every other output of the subject is complete. Non-finite numbers are
  written as ``null``.

A subject QC excludes is still processed (``include`` false); one whose data cannot be
processed (no data, or too few volumes for 12 networks) gets NaN maps inside the mask, a
time-series table without rows, an all-n/a matrix and ``n_edges`` 0: excluded with its
reason, never a crash.

The array functions (:func:`dual_regression`, :func:`roi_timeseries`, :func:`relmat`,
:func:`network_summary`, :func:`seed_maps`) take plain arrays and are tested on small
synthetic data; :func:`compute_subject_connectivity` is the one function the workflow calls.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from msnet import ANALYSIS_NETWORKS, atlas
from msnet.errors import MsnetInputError

logger = logging.getLogger("msnet.connectivity")

DEFAULT_OPTIONS = {
    "seed_maps": False,
    "seed_radius_mm": 6.0,
    "roi_radius_mm": None,
    "roi_max_fallback_mm": 10.0,
    "template_sigma_mm": atlas.TEMPLATE_SIGMA_MM,
    "max_vif": 10.0,
    "stage2_units": "psc",
}
"""Defaults of the ``connectivity`` config section (see :func:`validate_options`)."""

CHUNK_VOXELS = 16384
"""Voxels per block in voxelwise loops: work arrays stay near 20 MB each at 300 volumes."""

R_MAX = 1.0 - 1e-7
"""Correlations at or beyond this magnitude are treated as identical signals (see
:func:`relmat`, :func:`seed_maps`); arctanh(R_MAX) is about 8.4."""


# --------------------------------------------------------------------------- options


def validate_options(options: dict | None) -> dict:
    """Fill defaults into the ``connectivity`` config section and check every value.

    Parameters
    ----------
    options : dict or None
        Keys (all optional): ``seed_maps`` (bool), ``seed_radius_mm`` (float > 0),
        ``roi_radius_mm`` (float > 0 or None = the atlas radius, 5 mm; 4 mm for a few
        subcortical ROIs), ``roi_max_fallback_mm`` (float > 0 or None = no limit),
        ``template_sigma_mm`` (float > 0), ``max_vif`` (float >= 1 or None = never exclude),
        ``stage2_units`` (``psc`` or ``standardized``, see :func:`dual_regression`).

    Returns
    -------
    dict
        A new dict with every key present.

    Raises
    ------
    MsnetInputError
        For an unknown key or a value of the wrong type or range.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise MsnetInputError(
            f"connectivity options: unknown key(s) {unknown}. Allowed: {sorted(DEFAULT_OPTIONS)}."
        )
    merged = {**DEFAULT_OPTIONS, **options}
    if merged["stage2_units"] not in ("psc", "standardized"):
        raise MsnetInputError(
            f"connectivity.stage2_units = {merged['stage2_units']!r} must be psc or standardized."
        )
    if not isinstance(merged["seed_maps"], bool):
        raise MsnetInputError(
            f"connectivity.seed_maps = {merged['seed_maps']!r} must be true or false."
        )
    nullable = ("roi_radius_mm", "roi_max_fallback_mm", "max_vif")
    for key, low in (("seed_radius_mm", 0.0), ("roi_radius_mm", 0.0), ("roi_max_fallback_mm", 0.0),
                     ("template_sigma_mm", 0.0), ("max_vif", 1.0)):
        value = merged[key]
        if value is None and key in nullable:
            continue
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not (value > low if low == 0 else value >= low)):
            raise MsnetInputError(
                f"connectivity.{key} = {value!r} must be a number "
                + ("above 0" if low == 0 else f">= {low:g}")
                + (" (or null)." if key in nullable else ".")
            )
        merged[key] = float(value)
    return merged


# --------------------------------------------------------------------------- dual regression


def _chunks(n: int, size: int = CHUNK_VOXELS):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _is_varying(sd, mean):
    """A series is constant when its SD is at most 1e-6 of |mean| (float32 cannot resolve
    less; rounding in the mean would otherwise turn a constant into unit-variance noise)."""
    return np.isfinite(sd) & (sd > 1e-6 * np.abs(mean))


def _zscore_columns(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z-score the columns of a small array over rows (ddof 0) in float64.

    Returns the z-scores (constant and non-finite columns set to 0) and a boolean per column
    saying whether it varies.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    sd = np.sqrt(np.mean(centred**2, axis=0))
    varies = _is_varying(sd, mean)
    z = np.divide(centred, sd, out=np.zeros_like(centred), where=varies)
    return z, varies


def _voxel_blocks(data: np.ndarray, size: int = CHUNK_VOXELS, means: np.ndarray | None = None):
    """Yield ``(slice, centred block, sd, varies)`` over blocks of voxels (columns).

    The block is demeaned over time in the data's floating precision (float32 BLAS is 5-10x
    faster than float64 here) with the mean accumulated in float64; subtracting a float32
    mean from values of similar size is exact, so no precision is lost to large baselines.
    With ``means`` (an array over all voxels), each block's float64 means are stored in it.
    """
    dtype = np.result_type(data.dtype, np.float32)
    for sl in _chunks(data.shape[1], size):
        y = data[:, sl]
        mean = y.mean(axis=0, dtype=np.float64)
        if means is not None:
            means[sl] = mean
        centred = y.astype(dtype, copy=False) - mean.astype(dtype)
        sd = np.sqrt(np.einsum("tv,tv->v", centred, centred).astype(np.float64) / len(y))
        yield sl, centred, sd, _is_varying(sd, mean)


def flat_voxels(data) -> np.ndarray:
    """Boolean per voxel: the time series is constant (see ``_is_varying``)."""
    flat = np.zeros(data.shape[1], dtype=bool)
    for sl, _, _, varies in _voxel_blocks(np.asarray(data)):
        flat[sl] = ~varies
    return flat


def dual_regression(data, templates, n_analysis: int = len(ANALYSIS_NETWORKS), voxel_mean=None):
    """Dual regression of a subject's cleaned BOLD on network templates.

    Stage 1 (spatial): every volume is regressed on ALL ``templates`` at once (multiple
    regression over the in-mask voxels, volume and templates spatially demeaned), giving one
    subject time course per network. Because nuisance networks (FrontoParietal,
    CinguloOpercular, ...) are in the model, their signal is not absorbed into the time
    courses of the analysis networks that overlap them spatially.

    Stage 2 (temporal): every voxel's time series is regressed on the z-scored time courses
    of ALL networks at once; the coefficients of the first ``n_analysis`` networks are
    returned as maps. The voxel series is either scaled to percent signal change
    (``voxel_mean`` given, msnet's default ``connectivity.stage2_units: psc``) or z-scored
    over time (``voxel_mean=None``, ``stage2_units: standardized``).

    **Percent-signal-change amplitude (default).** With ``voxel_mean`` (the voxel's mean
    signal before cleaning) the map is the network's amplitude at the voxel in % of the
    voxel's mean signal per SD of the network time course, with the other networks held
    fixed. This is FSL's stage 2 (``fsl_glm --demean --des_norm``) on data scaled to % of
    its mean, so it is free of scanner units, and it is linear in the network's amplitude:
    a local change of amplitude shows at its true place. The standardised coefficient below
    saturates where the network signal is strong (it is bounded by 1), so a change at the
    centre of a strong node peaks on the node's flank; on the msnet simulation that moved
    group-difference peaks by 8-11 mm and halved the sensitivity to increases.

    **Standardised coefficients (option).** Partial standardised regression
    coefficients: the expected change, in voxel standard deviations, of the voxel's signal per
    standard deviation of the network's time course with all other networks held fixed.
    Unitless; with a single network it would equal the Pearson correlation of the voxel with
    the network's time course, and values lie near [-1, 1].

    Neither form is a Z statistic (no standard error, degrees of freedom or p-value is
    involved), which is why the files are named ``stat-amplitude`` and must not be
    thresholded as Z-scores.

    **Why this statistic.** Group and meta-analysis pool subjects from studies with different
    scanners, TRs, run lengths and censoring. A Z (or t) statistic grows with the square root of
    the degrees of freedom, so the same connectivity would look stronger in a long run than in
    a short one; a raw regression coefficient carries the scanner's arbitrary BOLD units.
    Both forms above have neither dependence: their expected value does not change with the
    number of volumes or the intensity scale, only their precision does.

    **Compared with FSL ``dual_regression``** (FSL 6): stage 1 is the same as
    ``fsl_glm --demean`` with the group maps as design (FSL uses all group ICA components; here
    all 12 templates). FSL's stage 2 is ``fsl_glm --demean --des_norm``: time courses
    variance-normalised (as here) but voxel data only demeaned, so FSL's
    ``dr_stage2_subject*.nii.gz`` (the input to ``randomise``) is this coefficient multiplied
    by the voxel's temporal SD (units of the data), and ``dr_stage2_*_Z`` is the t statistic
    of that coefficient converted to Z (grows with sqrt(dof)). msnet's maps are FSL's stage-2
    beta divided by the voxel's mean / 100 (``psc``) or by the voxel's temporal SD
    (``standardized``).

    Written with normal equations on voxel blocks instead of nilearn/FSL because nilearn has
    no dual regression and a voxel-by-voxel GLM is much slower (``bench_subject.py`` times
    the whole stage against the nilearn route). Small K x K systems are solved with the
    pseudo-inverse, so an all-zero template (a network absent from the mask) gives 0, not NaN.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_volumes, n_voxels)
        Cleaned BOLD over the mask (not standardised; any float dtype). Not modified.
    templates : numpy.ndarray, shape (n_networks, n_voxels)
        Network templates over the same voxels, analysis networks first
        (:func:`msnet.atlas.network_templates`).
    n_analysis : int
        Number of leading templates whose stage-2 maps are returned.
    voxel_mean : numpy.ndarray, shape (n_voxels,), optional
        Each voxel's mean signal before cleaning (``CleanedBold.voxel_mean``): stage 2 then
        works on percent signal change; None: on z-scored series.

    Returns
    -------
    timecourses : numpy.ndarray, shape (n_volumes, n_networks), float64
        Stage-1 coefficients (data units per template unit) with each voxel's temporal mean
        removed first, so every time course has mean 0; not variance-normalised.
    maps : numpy.ndarray, shape (n_analysis, n_voxels), float32
        Stage-2 maps: % signal change per SD of the network time course (``voxel_mean``
        given) or partial standardised coefficients. Voxels whose time series is constant
        (SD <= 1e-6 x |mean|) or whose mean is not positive get 0.

    Raises
    ------
    MsnetInputError
        If shapes do not match or there are not more volumes than networks + 1.
    """
    timecourses, maps, _ = _dual_regression(data, templates, n_analysis, voxel_mean)
    return timecourses, maps


def _dual_regression(data, templates, n_analysis, voxel_mean):
    """:func:`dual_regression` plus :func:`flat_voxels` of ``data``.

    Two passes over the data: the first centres each voxel block (float64 mean), takes its
    SD and accumulates stage 1; the second re-centres with the stored means (the same
    float32 values as the first pass) for stage 2.
    """
    data = np.asarray(data)
    templates = np.asarray(templates, dtype=np.float64)
    if data.ndim != 2 or templates.ndim != 2 or data.shape[1] != templates.shape[1]:
        raise MsnetInputError(
            f"dual_regression: data {data.shape} must be (volumes, voxels) and templates "
            f"{templates.shape} (networks, voxels) over the same voxels."
        )
    n_t, n_v = data.shape
    n_k = templates.shape[0]
    if not 1 <= n_analysis <= n_k:
        raise MsnetInputError(f"dual_regression: n_analysis={n_analysis} not in 1..{n_k}.")
    if n_t <= n_k + 1:
        raise MsnetInputError(
            f"dual_regression: {n_t} volumes are too few for {n_k} networks "
            f"(need at least {n_k + 2})."
        )
    # Stage 1 on data demeaned over time (adds a constant per network to the time courses,
    # which stage 2 removes). Rows of x sum to zero, so x @ (y - spatial mean of y) == x @ y:
    # the spatial demeaning of each volume is implicit and the data are never copied whole.
    x = templates - templates.mean(axis=1, keepdims=True)
    dtype = np.result_type(data.dtype, np.float32)
    x_work = x.astype(dtype)
    xy = np.zeros((x.shape[0], n_t))
    means = np.empty(n_v)
    sds = np.empty(n_v)
    varying = np.empty(n_v, dtype=bool)
    for sl, centred, sd, varies in _voxel_blocks(data, means=means):
        xy += x_work[:, sl] @ centred.T
        sds[sl], varying[sl] = sd, varies
    timecourses = (np.linalg.pinv(x @ x.T, hermitian=True) @ xy).T
    # Stage 2: coefficients of z-scored voxel series on z-scored time courses.
    proj = np.linalg.pinv(_zscore_columns(timecourses)[0])[:n_analysis].astype(dtype)
    maps = np.zeros((n_analysis, n_v), dtype=np.float32)
    for sl in _chunks(n_v):
        centred = data[:, sl].astype(dtype, copy=False) - means[sl].astype(dtype)
        scale = sds[sl] if voxel_mean is None else np.asarray(voxel_mean, np.float64)[sl] / 100.0
        varies = varying[sl] & (scale > 0)
        maps[:, sl] = np.where(varies, (proj @ centred) / np.where(varies, scale, 1.0), 0.0)
    return timecourses, maps, ~varying


def spatial_correlation(a, b) -> float:
    """Pearson correlation of two maps over the same voxels (NaN if either is constant)."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 0 else float("nan")


def design_vif(timecourses, n_analysis: int = len(ANALYSIS_NETWORKS)) -> np.ndarray:
    """Variance inflation factor of each network's stage-2 coefficient.

    ``VIF_k = [R^-1]_kk`` with ``R`` the correlation matrix of the stage-1 time courses: the
    factor by which collinearity with the other networks inflates the sampling variance of
    network k's stage-2 map (1 = independent). Large values mean the cleaned data have too few
    effective degrees of freedom (short run, heavy censoring, narrow band-pass after many
    confound regressors) to tell the networks apart, and the maps are noise of large
    amplitude. A constant time course (network absent from the mask) or an exactly
    collinear design gives infinity.

    Parameters
    ----------
    timecourses : numpy.ndarray, shape (n_volumes, n_networks)
        Stage-1 time courses from :func:`dual_regression`.
    n_analysis : int
        Number of leading networks to report.

    Returns
    -------
    numpy.ndarray, shape (n_analysis,)
    """
    z, varies = _zscore_columns(timecourses)
    vif = np.full(z.shape[1], np.inf)
    idx = np.flatnonzero(varies)
    corr = z[:, idx].T @ z[:, idx] / len(z)
    if len(idx) and np.linalg.cond(corr) < 1e12:
        vif[idx] = np.diag(np.linalg.inv(corr))
    return vif[:n_analysis]


# --------------------------------------------------------------------------- spheres / ROIs


def _mask_array(mask_img) -> np.ndarray:
    return np.asarray(mask_img.dataobj).astype(bool)


def sphere_membership(mask_img, centers, radius_mm, max_fallback_mm=None):
    """Find the in-mask voxels of spheres as nilearn's ``NiftiSpheresMasker`` does, with a fallback.

    A sphere holds every in-mask voxel whose centre lies within ``radius_mm`` (inclusive) of
    the seed, plus the voxel containing the seed (rounded voxel index) if it is in the mask;
    this is nilearn's rule (``apply_mask_and_get_affinity``), so means match
    ``NiftiSpheresMasker(allow_overlap=True)`` for every radius of 3.5 mm or more. Where nilearn
    raises on an empty sphere (coarse grids, seeds at the mask edge or in a lesion) this uses
    the nearest in-mask voxel, if it lies within ``max_fallback_mm``; otherwise the sphere is
    left empty ("missing"). Written here because nilearn needs a 4-D image (a copy of the
    cleaned data) and has no fallback.

    Parameters
    ----------
    mask_img : nibabel.Nifti1Image
        3-D analysis mask; voxel columns are in its C order.
    centers : array-like, shape (n_seeds, 3)
        MNI coordinates in mm.
    radius_mm : float or array-like of shape (n_seeds,)
        Sphere radius per seed.
    max_fallback_mm : float or None
        Largest distance allowed to the fallback voxel (None: no limit).

    Returns
    -------
    membership : scipy.sparse.csr_matrix, shape (n_seeds, n_voxels), float64
        1 for member voxels.
    info : pandas.DataFrame
        Per seed: ``n_voxels``, ``fallback`` (bool), ``fallback_distance_mm`` (NaN when no
        fallback was needed), ``missing`` (bool: no voxel at all).
    """
    from scipy import sparse
    from scipy.spatial import cKDTree

    mask = _mask_array(mask_img)
    coords = atlas.mask_coordinates(mask_img)
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    radius = np.broadcast_to(np.asarray(radius_mm, dtype=np.float64), (len(centers),))
    if len(coords) == 0:
        raise MsnetInputError("sphere_membership: the analysis mask is empty.")
    tree = cKDTree(coords)
    members = [set(m) for m in tree.query_ball_point(centers, radius)]
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(len(coords))
    ijk = np.round(
        (np.c_[centers, np.ones(len(centers))] @ np.linalg.inv(mask_img.affine).T)[:, :3]
    ).astype(int)
    inside = np.all((ijk >= 0) & (ijk < mask.shape), axis=1)
    for i in np.flatnonzero(inside):
        own = index[tuple(ijk[i])]
        if own >= 0:
            members[i].add(int(own))
    fallback_dist = np.full(len(centers), np.nan)
    empty = [i for i, m in enumerate(members) if not m]
    if empty:
        dist, nearest = tree.query(centers[empty])
        for i, d, v in zip(empty, dist, nearest):
            if max_fallback_mm is None or d <= max_fallback_mm:
                members[i].add(int(v))
                fallback_dist[i] = d
    rows = np.repeat(np.arange(len(centers)), [len(m) for m in members])
    cols = np.fromiter((v for m in members for v in sorted(m)), dtype=np.int64, count=len(rows))
    membership = sparse.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(len(centers), len(coords))
    )
    n_vox = np.array([len(m) for m in members])
    info = pd.DataFrame(
        {
            "n_voxels": n_vox,
            "fallback": np.isfinite(fallback_dist),
            "fallback_distance_mm": fallback_dist,
            "missing": n_vox == 0,
        }
    )
    return membership, info


def sphere_means(data, membership) -> np.ndarray:
    """Mean time series of each sphere; NaN for an empty sphere.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_volumes, n_voxels)
    membership : scipy.sparse matrix, shape (n_spheres, n_voxels)
        From :func:`sphere_membership`.

    Returns
    -------
    numpy.ndarray, shape (n_volumes, n_spheres), float64
    """
    membership = membership.tocsc()
    used = np.flatnonzero(np.diff(membership.indptr))
    sizes = np.asarray(membership.sum(axis=1)).ravel()
    sums = (membership[:, used] @ data[:, used].T.astype(np.float64)).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(sums) / np.where(sizes > 0, sizes, np.nan)


def roi_timeseries(data, mask_img, rois=None, radius_mm=None, max_fallback_mm=None):
    """Mean cleaned signal in each Seitzman sphere.

    Equals ``NiftiSpheresMasker(seeds, radius, mask_img=mask_img, allow_overlap=True)`` applied
    without any cleaning to the cleaned data as a 4-D image (see :func:`sphere_membership` for
    the empty-sphere fallback nilearn lacks).

    Parameters
    ----------
    data : numpy.ndarray, shape (n_volumes, n_voxels)
        Cleaned BOLD over ``mask_img`` (C order).
    mask_img : nibabel.Nifti1Image
        Analysis mask (lesions already removed).
    rois : pandas.DataFrame or None
        Columns ``roi``, ``x``, ``y``, ``z``, ``radius`` (plus any others, kept in ``info``);
        default :func:`msnet.atlas.seitzman_rois`.
    radius_mm : float or None
        One radius for every sphere; None uses the ``radius`` column.
    max_fallback_mm : float or None
        See :func:`sphere_membership`.

    Returns
    -------
    timeseries : pandas.DataFrame, shape (n_volumes, n_rois)
        Columns = ROI names; a missing ROI is all NaN.
    info : pandas.DataFrame
        ``rois`` with ``n_voxels``, ``fallback``, ``fallback_distance_mm``, ``missing`` added.
    """
    rois = atlas.seitzman_rois() if rois is None else rois
    radius = rois["radius"].to_numpy(float) if radius_mm is None else float(radius_mm)
    membership, sphere_info = sphere_membership(
        mask_img, rois[["x", "y", "z"]].to_numpy(float), radius, max_fallback_mm
    )
    info = pd.concat([rois.reset_index(drop=True), sphere_info], axis=1)
    if radius_mm is not None:
        info["radius"] = float(radius_mm)
    series = pd.DataFrame(sphere_means(data, membership), columns=list(rois["roi"]))
    return series, info


# --------------------------------------------------------------------------- matrices


def relmat(timeseries) -> pd.DataFrame:
    """Fisher-z (arctanh) of the Pearson correlation between ROI time series.

    Conventions: the diagonal is NaN (self-connections are undefined, and NaN cannot be
    averaged in by mistake); edges involving a missing or constant ROI are NaN; an
    off-diagonal |r| >= :data:`R_MAX` (two ROIs sharing the same voxels, possible on coarse
    grids) is NaN instead of infinite. Off-diagonal values equal
    ``arctanh(ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance()))``
    (nilearn's default estimator, Ledoit-Wolf, shrinks the correlations).

    Parameters
    ----------
    timeseries : pandas.DataFrame, shape (n_volumes, n_rois)
        ROI names as columns.

    Returns
    -------
    pandas.DataFrame, shape (n_rois, n_rois)
        Index and columns = ROI names, index named ``roi``.
    """
    names = list(timeseries.columns)
    x = timeseries.to_numpy(np.float64)
    z, varies = _zscore_columns(x)
    bad = ~varies | ~np.all(np.isfinite(x), axis=0) | (len(x) < 3)
    r = z.T @ z / max(len(z), 1)
    r[bad, :] = np.nan
    r[:, bad] = np.nan
    r[np.abs(r) >= R_MAX] = np.nan
    np.fill_diagonal(r, np.nan)
    return pd.DataFrame(np.arctanh(r), index=pd.Index(names, name="roi"), columns=names)


def network_order(networks) -> list[str]:
    """Networks present in ``networks`` in msnet order (analysis first), ``unassigned`` dropped."""
    present = set(networks) - {"unassigned"}
    ordered = [n for n in atlas.network_names() if n in present]
    return ordered + sorted(present - set(ordered))


def network_summary(relmat_z, rois) -> pd.DataFrame:
    """Mean Fisher z within and between networks.

    For each unordered pair of networks (a listed before b in :func:`network_order`; a == b is
    within-network): the mean of the finite Fisher-z edges between an ROI of a and an ROI of b,
    excluding self-connections (within a network, each edge i<j counted once). ROIs labelled
    ``unassigned`` are left out.

    Parameters
    ----------
    relmat_z : pandas.DataFrame or numpy.ndarray, shape (n_rois, n_rois)
        Fisher-z matrix (:func:`relmat`); a DataFrame is aligned to ``rois["roi"]``, an array
        must be in the order of ``rois``.
    rois : pandas.DataFrame
        Columns ``roi`` and ``network`` (msnet names: DMN/SMN/VN/SN, else Seitzman names).

    Returns
    -------
    pandas.DataFrame
        Columns ``network_a``, ``network_b``, ``fc_z`` (NaN when no finite edge),
        ``n_edges`` (number of finite edges averaged).
    """
    if isinstance(relmat_z, pd.DataFrame):
        z = relmat_z.reindex(index=rois["roi"], columns=rois["roi"]).to_numpy(np.float64)
    else:
        z = np.asarray(relmat_z, dtype=np.float64)
    labels = rois["network"].to_numpy()
    if z.shape != (len(labels), len(labels)):
        raise MsnetInputError(
            f"network_summary: matrix {z.shape} does not match {len(labels)} ROIs."
        )
    order = network_order(labels)
    rows = []
    for i, a in enumerate(order):
        ia = np.flatnonzero(labels == a)
        for b in order[i:]:
            ib = np.flatnonzero(labels == b)
            block = z[np.ix_(ia, ib)]
            if a == b:
                block = block[np.triu_indices(len(ia), k=1)]
            edges = block[np.isfinite(block)]
            fc = float(edges.mean()) if edges.size else float("nan")
            rows.append({"network_a": a, "network_b": b, "fc_z": fc, "n_edges": int(edges.size)})
    return pd.DataFrame(rows, columns=["network_a", "network_b", "fc_z", "n_edges"])


def seed_maps(data, mask_img, seeds=None, radius_mm=6.0, max_fallback_mm=None):
    """Seed-to-voxel Fisher-z correlation maps.

    The seed time series is the mean over the seed sphere (same rule as
    :func:`sphere_membership`); each voxel's value is arctanh of its Pearson correlation with
    it. |r| is clipped at :data:`R_MAX` so voxels of a one-voxel seed get about 8.4, not
    infinity; constant voxels get 0; a seed with no voxel gives an all-NaN map.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_volumes, n_voxels)
    mask_img : nibabel.Nifti1Image
    seeds : dict or None
        Network -> (seed name, (x, y, z) MNI mm); default :data:`msnet.atlas.CANONICAL_SEEDS`.
    radius_mm : float
    max_fallback_mm : float or None

    Returns
    -------
    maps : dict
        Network -> float32 array over the mask.
    info : pandas.DataFrame
        One row per seed: ``network``, ``seed``, ``x``, ``y``, ``z`` plus the sphere columns.
    """
    seeds = atlas.CANONICAL_SEEDS if seeds is None else seeds
    nets = list(seeds)
    centers = np.array([seeds[n][1] for n in nets], dtype=np.float64)
    membership, sphere_info = sphere_membership(mask_img, centers, radius_mm, max_fallback_mm)
    seed_z = _zscore_columns(sphere_means(data, membership))[0]
    seed_z = (seed_z / len(data)).astype(np.result_type(data.dtype, np.float32))
    maps = np.zeros((len(nets), data.shape[1]), dtype=np.float32)
    for sl, centred, sd, varies in _voxel_blocks(data):
        r = np.where(varies, (seed_z.T @ centred) / np.where(varies, sd, 1.0), 0.0)
        maps[:, sl] = np.arctanh(np.clip(r, -R_MAX, R_MAX))
    maps[sphere_info["missing"].to_numpy()] = np.nan
    info = pd.DataFrame(
        {"network": nets, "seed": [seeds[n][0] for n in nets],
         "x": centers[:, 0], "y": centers[:, 1], "z": centers[:, 2]}
    )
    return dict(zip(nets, maps)), pd.concat([info, sphere_info], axis=1)


# --------------------------------------------------------------------------- QC helpers


def _json_safe(value):
    """Replace non-finite floats by None (strict JSON has no NaN) throughout a structure."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --------------------------------------------------------------------------- subject level


@dataclass
class SubjectConnectivity:
    """Everything the subject stage writes, in memory.

    Attributes
    ----------
    mask_img : nibabel.Nifti1Image
        Analysis mask; all maps are over its voxels.
    maps : dict
        Analysis network -> stage-2 map (float32 over the mask; NaN if unprocessable).
    timeseries : pandas.DataFrame
        Kept volumes x ROIs (no rows if unprocessable).
    rois : pandas.DataFrame
        Atlas table with sphere sizes and fallbacks.
    relmat : pandas.DataFrame
        Fisher-z matrix (:func:`relmat`).
    networks : pandas.DataFrame
        :func:`network_summary` table.
    seed_maps : dict or None
        Network -> Fisher-z seed map over the mask, when enabled.
    qc : dict
        Denoising QC extended with connectivity QC.
    tr : float or None
    sample_mask : numpy.ndarray or None
        Indices of the kept volumes in the original run.
    qc_traces : msnet.qcpage.QcTraces or None
        What the subject's QC page draws over time (from denoising), carpet voxels labelled
        by network.
    """

    mask_img: object
    maps: dict
    timeseries: pd.DataFrame
    rois: pd.DataFrame
    relmat: pd.DataFrame
    networks: pd.DataFrame
    seed_maps: dict | None
    qc: dict
    tr: float | None = None
    sample_mask: np.ndarray | None = None
    qc_traces: object = None


def subject_connectivity(cleaned, options: dict | None = None) -> SubjectConnectivity:
    """Compute all connectivity outputs from one subject's cleaned data (no file I/O).

    Parameters
    ----------
    cleaned : CleanedBold-like
        Attributes ``data`` ((n_kept, n_voxels) or None when unprocessable), ``mask_img``,
        ``tr``, ``sample_mask``, ``qc`` (denoising's QC dict with ``include`` and
        ``exclusion_reason``; kept as is, including ``lesion_voxels``/``lesion_overlap``).
    options : dict or None
        The ``connectivity`` config section (:func:`validate_options`).

    Returns
    -------
    SubjectConnectivity
    """
    opts = validate_options(options)
    mask_img = cleaned.mask_img
    if mask_img is None:
        raise MsnetInputError("subject_connectivity: the cleaned data carry no analysis mask.")
    qc = dict(cleaned.qc or {})
    rois = atlas.seitzman_rois()
    data = cleaned.data
    traces = getattr(cleaned, "qc_traces", None)
    reason = _unprocessable_reason(data, len(atlas.network_names()))
    if reason:
        if data is not None or not qc.get("exclusion_reason"):
            _exclude(qc, reason)
        qc["include"] = False
        logger.warning("unprocessable (%s): writing NaN outputs", qc["exclusion_reason"])
        result = _empty_connectivity(mask_img, rois, opts, qc)
    else:
        t0 = time.perf_counter()
        _, templates = atlas.network_templates(mask_img, opts["template_sigma_mm"])
        logger.info("templates over %d voxels (%.1f s)", templates.shape[1],
                    time.perf_counter() - t0)
        if traces is not None:  # the QC page's carpet rows, grouped by network
            from msnet.qcpage import network_labels

            traces.labels = network_labels(templates, atlas.network_names(), traces.voxels)
        result = _connectivity(data, mask_img, templates, rois, opts, qc,
                               getattr(cleaned, "voxel_mean", None),
                               getattr(cleaned, "flat_voxels", None))
    result.tr, result.sample_mask = cleaned.tr, getattr(cleaned, "sample_mask", None)
    result.qc_traces = traces
    result.qc["connectivity"] = dict(opts)
    return result


def _unprocessable_reason(data, n_networks: int) -> str | None:
    if data is None:
        return "no usable BOLD data after denoising"
    if data.shape[0] <= n_networks + 1:
        return (f"only {data.shape[0]} volumes kept; dual regression needs at least "
                f"{n_networks + 2}")
    return None


def _connectivity(data, mask_img, templates, rois, opts, qc, voxel_mean=None,
                  flat=None) -> SubjectConnectivity:
    t0 = time.perf_counter()
    if opts["stage2_units"] == "psc" and voxel_mean is None:
        raise MsnetInputError("connectivity.stage2_units is 'psc' but the cleaned data carry no "
                              "voxel means; use stage2_units: standardized.")
    timecourses, maps, no_signal = _dual_regression(
        data, templates, len(ANALYSIS_NETWORKS), voxel_mean if opts["stage2_units"] == "psc" else None)
    qc["dr_template_r"] = {
        net: spatial_correlation(maps[k], templates[k]) for k, net in enumerate(ANALYSIS_NETWORKS)
    }
    qc["dr_vif"] = dict(zip(ANALYSIS_NETWORKS, design_vif(timecourses).tolist()))
    qc["dr_n_flat_voxels"] = int(np.count_nonzero(no_signal))
    if flat is not None:  # raw BOLD constant there (msnet.denoise): smoothing only leaks
        no_signal |= np.asarray(flat, bool)  # neighbours in, and its psc scale is meaningless
    maps[:, no_signal] = np.nan  # not a value: left out downstream (msnet.group)
    logger.info("dual regression: %s x %s (%.2f s); template r %s; VIF %s", *data.shape,
                time.perf_counter() - t0,
                {k: round(v, 2) for k, v in qc["dr_template_r"].items()},
                {k: round(v, 1) for k, v in qc["dr_vif"].items()})
    worst = max(qc["dr_vif"], key=qc["dr_vif"].get)
    if opts["max_vif"] is not None and qc["dr_vif"][worst] > opts["max_vif"]:
        _exclude(qc, f"dual regression ill-conditioned: VIF {worst} = {qc['dr_vif'][worst]:.3g} "
                     f"> connectivity.max_vif {opts['max_vif']:g} (network time courses nearly "
                     "collinear: too few effective degrees of freedom; a longer run, less "
                     "censoring or no low-pass filter helps)")
    series, info = roi_timeseries(
        data, mask_img, rois, opts["roi_radius_mm"], opts["roi_max_fallback_mm"]
    )
    _record_rois(qc, info)
    z = relmat(series)
    networks = network_summary(z, rois)
    seeds = None
    if opts["seed_maps"]:
        seeds, seed_info = seed_maps(
            data, mask_img, radius_mm=opts["seed_radius_mm"],
            max_fallback_mm=opts["roi_max_fallback_mm"],
        )
        qc["seed_n_voxels"] = dict(zip(seed_info["network"], seed_info["n_voxels"]))
        for values in seeds.values():
            values[no_signal] = np.nan
    logger.info("ROI and network connectivity done (%.2f s)", time.perf_counter() - t0)
    return SubjectConnectivity(
        mask_img, dict(zip(ANALYSIS_NETWORKS, maps)), series, info, z, networks, seeds, qc
    )


def _exclude(qc: dict, reason: str) -> None:
    """Mark the subject excluded, appending ``reason`` to any earlier one."""
    logger.warning("excluded: %s", reason)
    earlier = qc.get("exclusion_reason")
    qc["exclusion_reason"] = f"{earlier}; {reason}" if earlier else reason
    qc["include"] = False


def _record_rois(qc: dict, info: pd.DataFrame) -> None:
    qc["roi_fallback"] = list(info.loc[info["fallback"], "roi"])
    qc["roi_missing"] = list(info.loc[info["missing"], "roi"])
    if qc["roi_fallback"] or qc["roi_missing"]:
        logger.warning("%d empty spheres used the nearest voxel, %d ROIs missing",
                       len(qc["roi_fallback"]), len(qc["roi_missing"]))


def _empty_connectivity(mask_img, rois, opts, qc) -> SubjectConnectivity:
    """NaN outputs of the right shape for a subject whose data cannot be processed."""
    nan_map = np.full(int(_mask_array(mask_img).sum()), np.nan, dtype=np.float32)
    names = list(rois["roi"])
    info = rois.assign(n_voxels=0, fallback=False, fallback_distance_mm=np.nan, missing=True)
    z = pd.DataFrame(np.nan, index=pd.Index(names, name="roi"), columns=names)
    qc.update(dr_template_r={net: None for net in ANALYSIS_NETWORKS},
              dr_vif={net: None for net in ANALYSIS_NETWORKS}, dr_n_flat_voxels=None,
              roi_fallback=[], roi_missing=names)
    seeds = ({net: nan_map for net in atlas.CANONICAL_SEEDS} if opts["seed_maps"] else None)
    return SubjectConnectivity(
        mask_img, {net: nan_map for net in ANALYSIS_NETWORKS},
        pd.DataFrame(columns=names, dtype=float), info, z, network_summary(z, rois), seeds, qc,
    )


# --------------------------------------------------------------------------- writing


def sidecar_path(tsv_path) -> Path:
    """JSON sidecar of a TSV output: same name with ``.json`` instead of ``.tsv``."""
    tsv_path = Path(tsv_path)
    return tsv_path.with_name(tsv_path.name.removesuffix(".tsv") + ".json")


def map_image(values, mask_img):
    """Put a map over the mask into a float32 3-D image on the mask's grid, 0 outside."""
    import nibabel as nib

    mask = _mask_array(mask_img)
    vol = np.zeros(mask.shape, dtype=np.float32)
    vol[mask] = values
    img = nib.Nifti1Image(vol, mask_img.affine)
    img.header.set_xyzt_units("mm")
    return img


def _roi_coverage(info: pd.DataFrame) -> dict:
    """This subject's sphere coverage: voxel count per ROI (atlas order) and the fallbacks.

    The atlas itself (coordinates, networks, regions) is one file for the whole results
    folder (:data:`msnet.derivatives.ATLAS_FILE`), not repeated in every subject's sidecar.
    """
    fallback = info[info["fallback"]]
    return {
        "ROIVoxelCounts": [int(n) for n in info["n_voxels"]],
        "ROIFallbackDistanceMM": dict(zip(fallback["roi"], fallback["fallback_distance_mm"])),
        "ROIMissing": list(info.loc[info["missing"], "roi"]),
    }


def _sidecars(result: SubjectConnectivity) -> tuple[dict, dict]:
    from msnet.derivatives import ATLAS_URI

    common = {
        "Atlas": ATLAS_URI,
        "AtlasDescription": "Seitzman et al. (2018) 300 ROIs; the columns (and relmat rows) "
                            "are the atlas table's 'name' column, in its order",
        "CoordinateSpace": "MNI152NLin2009cAsym (mm)",
        "SphereRule": "in-mask voxels within the radius plus the voxel containing the seed "
                      "(nilearn NiftiSpheresMasker); an empty sphere uses the nearest in-mask "
                      "voxel (ROIFallbackDistanceMM) within connectivity.roi_max_fallback_mm, "
                      "else all n/a (ROIMissing)",
        **_roi_coverage(result.rois),
    }
    sample = None if result.sample_mask is None else np.asarray(result.sample_mask).tolist()
    ts = {
        **common,
        "Description": "Mean cleaned (not standardised) BOLD signal in each ROI sphere; one "
                       "row per kept volume (censored volumes removed).",
        "Units": "BOLD signal (arbitrary units)",
        "RepetitionTime": result.tr,
        "SampleMask": sample,
    }
    rel = {
        **common,
        "Description": "Fisher z (arctanh) of the Pearson correlation between ROI time "
                       "series. Diagonal n/a; edges with a missing or constant ROI n/a.",
        "Units": "Fisher z",
        "roi": {"Description": "Row ROI name (columns are the same ROIs)."},
    }
    return ts, rel


def _check_out_paths(out_paths: dict, seed_enabled: bool) -> None:
    required = ["qc", "maps", "timeseries", "relmat", "networks"]
    missing = [k for k in required if k not in out_paths]
    if missing:
        raise MsnetInputError(f"compute_subject_connectivity: out_paths lacks {missing}.")
    absent = [n for n in ANALYSIS_NETWORKS if n not in out_paths["maps"]]
    if absent:
        raise MsnetInputError(f"compute_subject_connectivity: out_paths['maps'] lacks {absent}.")
    if seed_enabled != ("seed_maps" in out_paths):
        raise MsnetInputError(
            "compute_subject_connectivity: connectivity.seed_maps is "
            f"{str(seed_enabled).lower()} but out_paths "
            + ("has no 'seed_maps' entry." if seed_enabled else "has a 'seed_maps' entry.")
            + " Declare seed-map outputs exactly when the option is enabled."
        )
    if seed_enabled:
        absent = [n for n in atlas.CANONICAL_SEEDS if n not in out_paths["seed_maps"]]
        if absent:
            raise MsnetInputError(
                f"compute_subject_connectivity: out_paths['seed_maps'] lacks {absent}."
            )


def _all_paths(out_paths: dict) -> list:
    """Every file path of ``out_paths`` (map dicts flattened), sidecars included."""
    paths = []
    for value in out_paths.values():
        paths += list(value.values()) if isinstance(value, dict) else [value]
    return paths + [sidecar_path(out_paths[k]) for k in ("timeseries", "relmat")]


def _write_tsv(df: pd.DataFrame, path, float_format: str = "%.7g") -> None:
    """``msnet.io.atomic.write_tsv(df, path, float_format=...)``, the same bytes, faster.

    pandas formats a 300 x 300 matrix value by value; formatting a
    whole row with one ``%`` operation does the same work in C. Frames with anything but
    float, integer and plain string columns (or strings pandas would quote) go to pandas.
    """
    from msnet.io.atomic import write_text, write_tsv

    formats = []
    for name in df.columns:
        kind = df[name].dtype.kind
        if kind == "f":
            formats.append(float_format)
        elif kind in "iu" or (kind == "O" and all(isinstance(v, str) and v != "nan" and not _needs_quotes(v)
                                                 for v in df[name])):
            formats.append("%s")
        else:
            formats.append(None)
    if None in formats or any(_needs_quotes(str(name)) for name in df.columns):
        write_tsv(df, path, float_format=float_format)
        return
    row = "\t".join(formats)
    lines = ["\t".join(map(str, df.columns))]
    lines += [row % tuple(values) for values in df.astype(object).itertuples(index=False, name=None)]
    text = "\n".join(lines) + "\n"
    if "nan" in text:  # pandas writes missing values as n/a (whole fields only)
        text = "\n".join("\t".join("n/a" if f == "nan" else f for f in line.split("\t"))
                         for line in text.split("\n"))
    write_text(text, path)


def _needs_quotes(text: str) -> bool:
    return any(c in text for c in '\t\n\r"')


def write_subject_outputs(result: SubjectConnectivity, out_paths: dict) -> None:
    """Write every output of :func:`subject_connectivity` atomically, the QC JSON last.

    Parameters
    ----------
    result : SubjectConnectivity
    out_paths : dict
        ``qc``, ``maps`` (network -> path), ``timeseries``, ``relmat``, ``networks``,
        optionally ``page`` (the subject's QC page, :mod:`msnet.qcpage`) and, exactly
        when seed maps were computed, ``seed_maps`` (network -> path). The time-series and
        matrix sidecars go to :func:`sidecar_path` of their TSV.
    """
    from msnet.derivatives import save_map, table_sidecar
    from msnet.io.atomic import write_json

    _check_out_paths(out_paths, result.seed_maps is not None)
    units = result.qc.get("connectivity", {}).get("stage2_units")
    amplitude = {"Units": {"psc": "% signal change per SD of the network time course",
                           "standardized": "standardised coefficient (data and time courses "
                                           "z-scored)"}.get(units, units)} if units else {}
    for net in ANALYSIS_NETWORKS:
        save_map(map_image(result.maps[net], result.mask_img), out_paths["maps"][net],
                 amplitude)
    for net, values in (result.seed_maps or {}).items():
        save_map(map_image(values, result.mask_img), out_paths["seed_maps"][net],
                 {"Description": "Fisher z of the correlation between the seed's mean time "
                                 "series and each voxel's.", "Units": "Fisher z"})
    ts_meta, rel_meta = _sidecars(result)
    _write_tsv(result.timeseries, out_paths["timeseries"])
    write_json(_json_safe(ts_meta), sidecar_path(out_paths["timeseries"]))
    _write_tsv(result.relmat.reset_index(), out_paths["relmat"])
    write_json(_json_safe(rel_meta), sidecar_path(out_paths["relmat"]))
    _write_tsv(result.networks, out_paths["networks"])
    write_json(table_sidecar(result.networks.columns), sidecar_path(out_paths["networks"]))
    if out_paths.get("page"):
        from msnet.qcpage import write_subject_page

        c0 = time.process_time()
        write_subject_page(out_paths["page"], _json_safe(result.qc), result.maps,
                           result.mask_img, result.qc_traces, result.tr)
        logger.info("QC page %s (%.3f s CPU)", Path(out_paths["page"]).name,
                    time.process_time() - c0)
    write_json(_json_safe(result.qc), out_paths["qc"])
    logger.info("wrote %s (include=%s)", out_paths["qc"], result.qc.get("include"))


def compute_subject_connectivity(
    fmriprep_dir,
    participant_id,
    out_paths: dict,
    denoise_options: dict | None = None,
    qc_options: dict | None = None,
    connectivity_options: dict | None = None,
    task: str = "rest",
    space: str = "MNI152NLin2009cAsym",
    multi_run: str = "first",
    lesion_mask=None,
    study_id=None,
    threads: int | None = None,
    qcfc_options: dict | None = None,
) -> dict:
    """Subject stage: find files, denoise, QC, network connectivity, write every output.

    The one function the ``compute_subject_connectivity`` rule calls per subject. A subject
    that QC excludes is still processed (its outputs serve sensitivity analyses; ``include``
    is false in its QC); one whose data cannot be processed at all gets NaN maps inside the
    mask, an empty time-series table, NaN matrices and a QC file saying why - never a crash.

    Parameters
    ----------
    fmriprep_dir : str or Path
        The study's fMRIPrep derivatives folder.
    participant_id : str
        ``sub-XXX`` as in participants.tsv.
    out_paths : dict
        See :func:`write_subject_outputs`.
    denoise_options, qc_options : dict or None
        The ``denoise`` and ``qc`` config sections, passed to :func:`msnet.denoise.clean_subject`.
    connectivity_options : dict or None
        The ``connectivity`` config section (:func:`validate_options`).
    task, space, multi_run : str
        Passed to :func:`msnet.io.fmriprep.find_subject_files`.
    lesion_mask : path or None
        The participant's lesion mask (participants.tsv ``lesion_mask``), passed to denoising.
    study_id : str or None
        Recorded in the QC file.
    threads : int or None
        BLAS/OpenMP threads (the job's ``threads``; see :func:`thread_limits`); None leaves
        the thread pools as they are.
    qcfc_options : dict or None
        The ``qcfc`` config section. With a ``qcfc`` entry in ``out_paths``, the subject's
        edge FC and tDOF loss under every QC-FC strategy are written there
        (:mod:`msnet.qcfc`): the ROI means of the uncleaned BOLD are kept while it is read,
        and each strategy cleans those (no second read of the BOLD).

    Returns
    -------
    dict
        The QC dictionary as written.
    """
    from msnet.denoise import clean_subject
    from msnet.io.fmriprep import find_subject_files

    from msnet.io.atomic import check_writable

    with thread_limits(threads):
        opts = validate_options(connectivity_options)
        _check_out_paths(out_paths, opts["seed_maps"])
        check_writable(Path(p).parent for p in _all_paths(out_paths))  # before the work, not after
        denoise_options = dict(denoise_options or {})
        if denoise_options.setdefault("multi_run", multi_run) != multi_run:
            raise MsnetInputError(
                f"multi_run is {multi_run!r} but denoise options say "
                f"{denoise_options['multi_run']!r}; set one value."
            )
        strategies = None
        if out_paths.get("qcfc"):
            from msnet import qcfc

            strategies = qcfc.resolve_strategies(qcfc_options, denoise_options)
        t0, c0 = time.perf_counter(), time.process_time()
        logger.info("%s: finding files in %s", participant_id, fmriprep_dir)
        files = find_subject_files(fmriprep_dir, participant_id, task, space, multi_run)
        extra = {} if strategies is None else {"roi_membership": _roi_membership(opts)}
        cleaned = clean_subject(files, denoise_options, qc_options or {}, lesion_mask=lesion_mask,
                                progress=lambda message: logger.info("%s: %s", participant_id, message),
                                threads=threads, **extra)
        logger.info("%s: denoised (%.1f s)", participant_id, time.perf_counter() - t0)
        result = subject_connectivity(cleaned, opts)
        if study_id is not None:
            result.qc["study_id"] = study_id
        result.qc.setdefault("participant_id", participant_id)
        if strategies is not None:
            c1 = time.process_time()
            edges = qcfc.subject_edges(cleaned, strategies, result.relmat.to_numpy())
            qcfc.write_subject_edges(edges, out_paths["qcfc"], strategies)
            logger.info("%s: QC-FC edges of %d strategies (%.2f s CPU)%s", participant_id,
                        len(strategies), time.process_time() - c1,
                        "".join(f"; {n}: {r}" for n, r in zip(edges["strategies"], edges["reason"])
                                if r))
        write_subject_outputs(result, out_paths)
        logger.info("%s: done (%.1f s, %.1f s CPU)", participant_id, time.perf_counter() - t0,
                    time.process_time() - c0)
        return _json_safe(result.qc)


def _roi_membership(opts: dict):
    """For :func:`msnet.denoise.clean_subject`: the Seitzman spheres over an analysis mask,
    built exactly as :func:`roi_timeseries` builds them, so the ROI means are the same."""
    rois = atlas.seitzman_rois()
    radius = rois["radius"].to_numpy(float) if opts["roi_radius_mm"] is None else float(
        opts["roi_radius_mm"])

    def membership(mask_img):
        return sphere_membership(mask_img, rois[["x", "y", "z"]].to_numpy(float), radius,
                                 opts["roi_max_fallback_mm"])[0]

    return membership


def compute_subjects(subjects: list, options: dict, threads: int | None = None) -> list:
    """Run :func:`compute_subject_connectivity` for each subject of one job, in order.

    One subject-stage job handles several subjects (config ``resources.subjects_per_job``) so
    that Python start-up and Snakemake's per-job bookkeeping are paid once per job.

    Parameters
    ----------
    subjects : list of dict
        Per subject: ``fmriprep_dir``, ``participant_id``, ``out_paths``, ``task``, ``space``,
        ``lesion_mask`` (path or None) and ``study_id``.
    options : dict
        ``denoise``, ``qc``, ``connectivity`` (config sections), ``multi_run`` and, with
        QC-FC outputs in the subjects' ``out_paths``, ``qcfc``.
    threads : int or None
        The job's threads (see :func:`thread_limits`).

    Returns
    -------
    list of dict
        Each subject's QC dictionary.
    """
    from msnet.logs import subject_context

    age = _process_age()
    logger.info("job start-up (Python, Snakemake's preamble, imports): %s, %.2f s CPU",
                "unknown wall time" if age is None else f"{age:.2f} s", time.process_time())
    results = []
    with thread_limits(threads):
        for i, subject in enumerate(subjects, start=1):
            logger.info("subject %d of %d in this job: %s", i, len(subjects),
                        subject["participant_id"])
            with subject_context(subject["participant_id"]):
                results.append(compute_subject_connectivity(
                    subject["fmriprep_dir"], subject["participant_id"], subject["out_paths"],
                    denoise_options=options["denoise"], qc_options=options["qc"],
                    connectivity_options=options["connectivity"], task=subject["task"],
                    space=subject["space"], multi_run=options["multi_run"],
                    lesion_mask=subject["lesion_mask"], study_id=subject["study_id"],
                    qcfc_options=options.get("qcfc"),
                ))
    return results


def _process_age() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere)."""
    import os

    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def thread_limits(threads: int | None):
    """Context limiting BLAS and OpenMP thread pools to ``threads`` (None: no change).

    A job should use the threads it declares: OpenBLAS's default (a thread per core) let
    two BLAS threads take 6x the CPU time of one for dual regression on a loaded 2-core
    machine (their worker threads spin while other jobs hold the cores), and the whole
    subject stage took 1.2-1.3x as long as with one.
    """
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, int(threads)))
