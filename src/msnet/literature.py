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
