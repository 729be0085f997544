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
from msnet.config import load_schema
from msnet.errors import MsnetInputError, MsnetInputErrors
from msnet.io.tables import _coerce, _raise, _validate_rows, read_tsv

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
    schema = load_schema("literature_studies")
    problems = []
    table = _coerce(read_tsv(path, "literature studies table"), schema, path, problems)
    if not _validate_rows(table, schema, path, problems):
        _raise(problems, path)
    dup = table["study_id"].duplicated(keep=False)
    if dup.any():
        rows = [int(i) + 1 for i in np.flatnonzero(dup.to_numpy())]
        problems.append(f"{path}: duplicate study_id "
                        f"{', '.join(sorted(set(table.loc[dup, 'study_id'])))} (rows {rows}). "
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
    schema = load_schema("peaks")
    problems = []
    table = _coerce(read_tsv(path, "peaks table"), schema, path, problems)
    if not _validate_rows(table, schema, path, problems):
        _raise(problems, path)
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
