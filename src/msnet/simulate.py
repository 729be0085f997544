"""Synthetic multi-study fMRIPrep-like dataset with known ground truth.

The embedded default of msnet: 25 studies whose group sizes mirror the ICA rs-fMRI MS
studies of the reference meta-analysis (1,524 MS / 886 HC at ``scale=1``), each written as
an fMRIPrep derivatives tree (preprocessed BOLD in MNI space, brain mask, confounds TSV and
JSON, BOLD sidecar) with a BIDS ``participants.tsv``.

Signal model (all amplitudes in percent of a voxel-varying baseline of about 1000)::

    BOLD(t, v) = baseline(v) * nss(t) * (1 - drop(t))
                 * (1 + 0.01 * [sum_k M_sk(v) s_sk(t)      networks (12, atlas templates)
                                + global + physiological  (WM/CSF-weighted patterns)
                                + motion artefacts        (params and derivatives)
                                + linear drift + white noise])

``M_sk = (w * template_k + planted nodes [+ MS effect]) * (1 + smooth perturbation) * a_sk``:
the network templates of :func:`msnet.atlas.network_templates` weighted by
``w = 1 - WM probability`` (0 in CSF), a baseline node at every
published finding so the location belongs to its network in both groups, and for MS
subjects ``direction * delta_j * blob`` with ``delta_j ~ N(effect_size, effect_tau)`` per
study. ``a_sk ~ N(1, amplitude_sd)``; MS amplitudes of the analysis networks are scaled by
``1 + clinical_slope * z`` (``z`` = clinical variable standardised with fixed population
moments, see :func:`clinical_population_moments`). A scanner (site) effect per study,
``m_i * M_sk + a_i * base map`` (``simulate.site_effect``, default off), lets tests check
ComBat harmonisation (:func:`site_effects`, :func:`apply_site_effect`).

Randomness: every draw comes from ``numpy.random.SeedSequence(seed, spawn_key=...)`` with a
key of (stream, study index[, subject index]), so studies can be simulated in any order or in
parallel and give the same bytes.

Ground truth: ``ground_truth.json`` (study level) and, per study,
``study-<id>/ground_truth_subjects.tsv`` (per-subject amplitudes, generating map values at
each planted location, motion level). The generating network time courses of a subject are
not written; :func:`iter_study_subjects` recomputes them exactly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from msnet import ANALYSIS_NETWORKS, __version__, atlas
from msnet.errors import MsnetInputError
from msnet.io.atomic import atomic_path, write_json, write_text, write_tsv

logger = logging.getLogger("msnet.simulate")

STUDY_SIZES = (
    (18, 14), (45, 41), (13, 14), (42, 30), (85, 40), (22, 15), (16, 16), (60, 30),
    (20, 20), (332, 96), (24, 20), (215, 98), (14, 12), (30, 25), (19, 19), (120, 50),
    (35, 30), (12, 11), (55, 30), (18, 18), (26, 21), (40, 36), (15, 15), (100, 60),
    (148, 125),
)  # fmt: skip
"""(n_MS, n_HC) of the 25 simulated studies (sum 1,524 / 886), mirroring the mix of small
single-centre and a few large ICA rs-fMRI MS studies in the reference meta-analysis."""

STUDY_PROTOCOLS = (
    (150, 3.0), (200, 2.0), (120, 3.0), (180, 2.5), (240, 2.0), (150, 2.5), (200, 3.0),
    (180, 2.0), (140, 3.0), (200, 2.0), (160, 2.5), (180, 2.0), (130, 3.0), (190, 2.0),
    (150, 2.5), (200, 2.2), (140, 3.0), (240, 2.5), (180, 2.0), (120, 3.0), (150, 2.5),
    (200, 2.0), (160, 3.0), (180, 2.0), (210, 2.0),
)  # fmt: skip
"""(volumes, TR in s) of each simulated study's resting-state run when ``simulate.n_volumes``
/ ``simulate.tr`` are null (the default): 6 to 10 minutes at TR 2 to 3 s, the range of the
ICA rs-fMRI MS studies of the period (illustrative protocols, not taken study by study from
the papers). Shorter runs leave too few effective degrees of freedom to tell the networks apart:
at 140 volumes x 2 s (4.7 min) about 13 % of low-motion subjects fail the VIF rule of
:mod:`msnet.connectivity`; at 6 minutes or more none did (52 subjects each, 140 x 3 s and
200 x 2 s)."""

STUDY_IDS = tuple(f"S{i + 1:02d}" for i in range(len(STUDY_SIZES)))
"""Study identifiers ``S01`` .. ``S25``."""

TASK = "rest"
SPACE = "MNI152NLin2009cAsym"

SIM_DEFAULTS = {
    "scale": 0.05,
    "n_studies": 25,
    "min_per_group": 3,
    "resolution_mm": 4,
    "n_volumes": None,
    "tr": None,
    "n_dummy": 2,
    "effect_size": 0.5,
    "effect_tau": 0.08,
    "clinical_slope": 0.0,
    "clinical_variable": "edss",
    "high_motion_fraction": 0.05,
    "signal_pct": 1.0,
    "noise_pct": 0.8,
    "physio_pct": 0.5,
    "global_pct": 0.5,
    "drift_pct": 1.0,
    "motion_pct_per_mm": 1.5,
    "amplitude_sd": 0.15,
    "map_noise_sd": 0.15,
    "site_effect": 0.0,
    "motion_artifact": 0.0,
    "edge_effect": 0.0,
}
"""Default simulation config (the demo). See :data:`SIM_RANGES` for allowed values."""

SIM_RANGES = {
    "scale": (1e-3, 4.0),
    "n_studies": (1, 25),
    "min_per_group": (2, 1000),
    "resolution_mm": (2, 8),
    "n_volumes": (30, 2000),
    "tr": (0.3, 6.0),
    "n_dummy": (0, 10),
    "effect_size": (-1.0, 1.0),
    "effect_tau": (0.0, 1.0),
    "clinical_slope": (-0.5, 0.5),
    "high_motion_fraction": (0.0, 0.5),
    "signal_pct": (0.0, 10.0),
    "noise_pct": (0.01, 20.0),
    "physio_pct": (0.0, 10.0),
    "global_pct": (0.0, 10.0),
    "drift_pct": (0.0, 10.0),
    "motion_pct_per_mm": (0.0, 10.0),
    "amplitude_sd": (0.0, 0.5),
    "map_noise_sd": (0.0, 0.5),
    "site_effect": (0.0, 1.0),
    "motion_artifact": (0.0, 10.0),
    "edge_effect": (0.0, 0.9),
}
"""Inclusive (min, max) of every numeric config key."""

CLINICAL_VARIABLES = ("edss", "disease_duration")

NODE_WEIGHT = 0.9
"""Peak of the baseline node added to a network's generating map at each planted location."""

FIELD_SIGMA_MM = 6.0
"""Smoothness (Gaussian sigma) of the random spatial fields (map perturbations, motion
artefact patterns, physiological patterns)."""

QUANT_STEP_FRACTION = 0.5
"""BOLD is stored as int16 with ``scl_slope`` = this fraction of the white-noise SD at the
baseline of 1000 (adds about 2% to the noise variance; keeps the gzip files small)."""

HIGH_MOTION_SPIKES = 0.16
"""Fraction of spike volumes of a high-motion subject (mean FD about 0.75 mm vs 0.14 mm)."""

N_COMPCOR = {"combined": 10, "CSF": 5, "WM": 5}
"""aCompCor components written per mask (numbered a_comp_cor_00.. in this order)."""

HIGHPASS_PERIOD_S = 128.0
"""Cut-off period of fMRIPrep's DCT high-pass basis (``cosineXX``) and CompCor pre-filter."""

_STREAM_PLAN, _STREAM_EFFECT, _STREAM_SUBJECT = 0, 1, 2
_STREAM_SITE = 3
_POPULATION_SEED = 20180426
_PHENOTYPES = ("RRMS", "SPMS", "PPMS", "CIS")
_PHENOTYPE_P = (0.80, 0.10, 0.06, 0.04)
_DURATION_MEAN = (7.0, 16.0, 8.0, 0.8)
_EDSS_BASE = (1.2, 3.8, 3.2, 0.6)
_MOTION_NAMES = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
_HEAD_RADIUS_MM = 50.0
_N_PHYSIO = 3
_FIELDS = {"global": 0, "physio": slice(1, 1 + _N_PHYSIO), "motion": slice(4, 16), "drift": 16,
           "baseline": 17}  # fmt: skip
"""Row of each nuisance pattern in the block of random fields drawn after the network ones."""
_N_NUISANCE_FIELDS = 18


# --------------------------------------------------------------------------- config


def sim_config(sim: dict | None) -> dict:
    """Return the full simulation config: defaults updated with ``sim``, validated.

    Parameters
    ----------
    sim : dict or None
        The ``simulate`` config section (any subset of :data:`SIM_DEFAULTS`).

    Returns
    -------
    dict
        All keys of :data:`SIM_DEFAULTS`.

    Raises
    ------
    MsnetInputError
        Unknown key, wrong type or value out of :data:`SIM_RANGES`.
    """
    sim = dict(sim or {})
    unknown = sorted(set(sim) - set(SIM_DEFAULTS))
    if unknown:
        raise MsnetInputError(
            f"config simulate: unknown key(s) {unknown}; known keys are {sorted(SIM_DEFAULTS)}"
        )
    cfg = {**SIM_DEFAULTS, **sim}
    for key, (lo, hi) in SIM_RANGES.items():
        value = cfg[key]
        if value is None and key in _PER_STUDY:
            continue
        integer = isinstance(SIM_DEFAULTS[key], int) or key == "n_volumes"
        ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(
            value, (int, float, np.integer, np.floating)
        )
        if isinstance(value, bool) or not ok_type or not lo <= value <= hi:
            kind = "an integer" if integer else "a number"
            raise MsnetInputError(
                f"config simulate.{key}={value!r}: must be {kind} in [{lo}, {hi}]"
            )
    if cfg["clinical_variable"] not in CLINICAL_VARIABLES:
        raise MsnetInputError(
            f"config simulate.clinical_variable={cfg['clinical_variable']!r}: "
            f"must be one of {CLINICAL_VARIABLES}"
        )
    shortest = min(volumes for volumes, _ in study_protocols(cfg))
    if cfg["n_dummy"] >= shortest - 20:
        raise MsnetInputError(
            f"config simulate.n_dummy={cfg['n_dummy']}: leaves fewer than 20 steady-state "
            f"volumes of n_volumes={shortest}; lower n_dummy or raise n_volumes"
        )
    return cfg


_PER_STUDY = ("n_volumes", "tr")
"""Simulation keys that may be null: each study then uses its :data:`STUDY_PROTOCOLS` entry."""


def study_protocols(cfg: dict) -> list[tuple[int, float]]:
    """(volumes, TR) of each simulated study: :data:`STUDY_PROTOCOLS`, with
    ``simulate.n_volumes`` / ``simulate.tr`` replacing every study's value when set."""
    return [(cfg["n_volumes"] or volumes, cfg["tr"] or tr)
            for volumes, tr in STUDY_PROTOCOLS[: cfg["n_studies"]]]


def study_config(cfg: dict, study_id: str) -> dict:
    """The simulation config of one study: ``n_volumes`` and ``tr`` set to its protocol."""
    volumes, tr = study_protocols(cfg)[study_index(study_id)]
    return {**cfg, "n_volumes": volumes, "tr": tr}


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Return an independent generator for ``(seed, key)`` (SeedSequence spawn key)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MsnetInputError(f"simulation seed={seed!r}: must be a non-negative integer")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


# --------------------------------------------------------------------------- plan


def group_sizes(sim: dict) -> list[tuple[int, int]]:
    """Return the simulated (n_MS, n_HC) per study: ``max(min_per_group, round(n * scale))``."""
    cfg = sim_config(sim)

    def scaled(n):
        return max(cfg["min_per_group"], int(np.floor(n * cfg["scale"] + 0.5)))

    return [(scaled(n_ms), scaled(n_hc)) for n_ms, n_hc in STUDY_SIZES[: cfg["n_studies"]]]


def study_ids(sim: dict) -> tuple[str, ...]:
    """Return the simulated study ids (the first ``n_studies`` of :data:`STUDY_IDS`)."""
    return STUDY_IDS[: sim_config(sim)["n_studies"]]


def _study_offsets(rng: np.random.Generator, n: int = 1):
    """Draw study-level shifts: mean age (years) and a disease-duration multiplier."""
    return rng.normal(0.0, 3.0, n), rng.lognormal(0.0, 0.25, n)


def _draw_ms_clinical(rng, n, age_shift, duration_mult) -> dict:
    """Draw MS clinical variables (vectorised; offsets may be scalars or length-n arrays).

    Phenotype mostly RRMS; disease duration gamma (shape 2, phenotype-specific mean, about
    8 y overall); age increases with duration; EDSS grows with duration (0.15 / year) from a
    phenotype-specific base, rounded to 0.5 steps in [0, 9.5]; T2 lesion volume lognormal
    (median about 4 ml) increasing with EDSS.
    """
    pheno = rng.choice(len(_PHENOTYPES), size=n, p=_PHENOTYPE_P)
    duration = rng.gamma(2.0, np.take(_DURATION_MEAN, pheno) / 2.0) * duration_mult
    age = np.clip(38.0 + age_shift + 0.35 * (duration - 8.0) + rng.normal(0, 8.0, n), 18, 70)
    age = np.round(age)
    duration = np.round(np.minimum(duration, age - 12.0), 1)
    edss = np.take(_EDSS_BASE, pheno) + 0.15 * duration + rng.normal(0.0, 0.8, n)
    edss = np.clip(np.round(edss * 2.0) / 2.0, 0.0, 9.5)
    t2lv = np.round(rng.lognormal(np.log(4.0) + 0.2 * (edss - 2.5), 0.8), 2)
    female = rng.random(n) < 0.70
    return {
        "age": age,
        "sex": np.where(female, "F", "M"),
        "disease_duration": duration,
        "edss": edss,
        "t2lv": t2lv,
        "phenotype": np.take(_PHENOTYPES, pheno),
    }


def _draw_hc(rng, n, age_shift) -> dict:
    """Draw healthy-control demographics (about 62% female, age matched to MS)."""
    age = np.round(np.clip(36.0 + age_shift + rng.normal(0.0, 9.0, n), 18, 70))
    female = rng.random(n) < 0.62
    return {"age": age, "sex": np.where(female, "F", "M")}


@lru_cache(maxsize=1)
def clinical_population_moments() -> dict:
    """Return the fixed population mean and SD of each clinical variable of the generator.

    Computed once from 200,000 MS draws with a fixed seed (including the study-level
    offsets), so the clinical effect uses the same z-scale in every study and run.

    Returns
    -------
    dict
        ``{"edss": (mean, sd), "disease_duration": (mean, sd)}``.
    """
    rng = np.random.default_rng(_POPULATION_SEED)
    n = 200_000
    age_shift, mult = _study_offsets(rng, n)
    ms = _draw_ms_clinical(rng, n, age_shift, mult)
    return {v: (float(ms[v].mean()), float(ms[v].std())) for v in CLINICAL_VARIABLES}


def _high_motion(rng, groups: np.ndarray, fraction: float) -> np.ndarray:
    """Flag high-motion subjects (Bernoulli), keeping at least 2 low-motion per group."""
    flags = rng.random(len(groups)) < fraction
    for group in ("MS", "HC"):
        in_group = groups == group
        flagged = np.flatnonzero(in_group & flags)
        flags[flagged[max(0, int(in_group.sum()) - 2) :]] = False
    return flags


def _plan_study(cfg: dict, seed: int, index: int, n_ms: int, n_hc: int) -> pd.DataFrame:
    """Draw the participants of one study (see :func:`plan_dataset`)."""
    rng = _rng(seed, _STREAM_PLAN, index)
    study = STUDY_IDS[index]
    age_shift, mult = (v[0] for v in _study_offsets(rng))
    ms = pd.DataFrame(_draw_ms_clinical(rng, n_ms, age_shift, mult))
    hc = pd.DataFrame(_draw_hc(rng, n_hc, age_shift))
    ms.insert(0, "group", "MS")
    hc.insert(0, "group", "HC")
    ms.insert(0, "participant_id", [f"sub-{study}MS{i + 1:03d}" for i in range(n_ms)])
    hc.insert(0, "participant_id", [f"sub-{study}HC{i + 1:03d}" for i in range(n_hc)])
    table = pd.concat([ms, hc], ignore_index=True)
    table.insert(0, "study_id", study)
    table["age"] = table["age"].astype(int)
    table["site"] = f"site{index + 1:02d}"
    table["high_motion"] = _high_motion(
        rng, table["group"].to_numpy(), cfg["high_motion_fraction"]
    )
    return table


PLAN_COLUMNS = (
    "study_id", "participant_id", "group", "age", "sex", "disease_duration", "edss",
    "t2lv", "phenotype", "site", "high_motion",
)  # fmt: skip
"""Columns of :func:`plan_dataset`; ``site`` and ``high_motion`` are not in participants.tsv."""


def plan_dataset(sim: dict, seed: int) -> pd.DataFrame:
    """Plan the participants of all 25 studies (cheap: numpy/pandas only).

    Parameters
    ----------
    sim : dict
        Simulation config (see :data:`SIM_DEFAULTS`).
    seed : int
        Master seed.

    Returns
    -------
    pandas.DataFrame
        One row per participant, columns :data:`PLAN_COLUMNS`; clinical columns
        (``disease_duration``, ``edss``, ``t2lv``, ``phenotype``) are NaN for HC.
        ``participant_id`` is ``sub-<study><group><nnn>`` (e.g. ``sub-S01MS001``), unique
        across the dataset. ``high_motion`` marks subjects simulated with large motion.
    """
    cfg = sim_config(sim)
    tables = [
        _plan_study(cfg, seed, i, n_ms, n_hc) for i, (n_ms, n_hc) in enumerate(group_sizes(cfg))
    ]
    return pd.concat(tables, ignore_index=True)[list(PLAN_COLUMNS)]


def plan_effects(sim: dict, seed: int) -> pd.DataFrame:
    """Draw the per-study MS effect at every planted location.

    Parameters
    ----------
    sim : dict
        Simulation config.
    seed : int
        Master seed.

    Returns
    -------
    pandas.DataFrame
        One row per (study, finding): ``study_id``, ``finding``, ``network``,
        ``direction`` and ``delta`` (``~ N(effect_size, effect_tau)``, the change of the
        generating map at the location is ``direction * delta``).
    """
    cfg = sim_config(sim)
    findings = atlas.published_findings()
    rows = []
    for i, study in enumerate(study_ids(cfg)):
        delta = _rng(seed, _STREAM_EFFECT, i).normal(
            cfg["effect_size"], cfg["effect_tau"], len(findings)
        )
        rows.append(
            findings[["finding", "network", "direction"]].assign(study_id=study, delta=delta)
        )
    table = pd.concat(rows, ignore_index=True)
    return table[["study_id", "finding", "network", "direction", "delta"]]


def site_effects(sim: dict, seed: int) -> pd.DataFrame:
    """Draw each study's scanner (site) effect on the subjects' generating network maps.

    With ``s = simulate.site_effect``, study ``i`` gets an additive effect ``a_i ~ N(0, s)``
    and a multiplicative one ``m_i = exp(N(0, s))``, applied by :func:`apply_site_effect`.
    ``s = 0`` (default): ``a = 0``, ``m = 1`` and nothing changes (the draws use their own
    random stream, so no other draw moves either).

    Returns
    -------
    pandas.DataFrame
        ``study_id``, ``site``, ``additive``, ``multiplicative`` (one row per study).
    """
    cfg = sim_config(sim)
    rows = []
    for i, study in enumerate(study_ids(cfg)):
        add, log_mult = _rng(seed, _STREAM_SITE, i).normal(0.0, 1.0, 2) * cfg["site_effect"]
        rows.append({"study_id": study, "site": f"site{i + 1:02d}", "additive": float(add),
                     "multiplicative": float(np.exp(log_mult))})
    return pd.DataFrame(rows)


def apply_site_effect(maps, base_maps, additive: float, multiplicative: float):
    """A subject's generating maps as its study's scanner records them.

    ``multiplicative * maps + additive * base_maps``: the multiplicative effect scales the
    whole map (its mean and the between-subject spread: ComBat's scale effect, and a location
    effect proportional to the map), the additive one shifts every subject of the study by the
    same multiple of the network's base map (a location effect). Unchanged when ``additive``
    is 0 and ``multiplicative`` 1.
    """
    if additive == 0.0 and multiplicative == 1.0:
        return maps
    return np.float32(multiplicative) * maps + np.float32(additive) * base_maps


def _clinical_factor(cfg: dict, row) -> float:
    """Return the MS amplitude factor ``max(0.05, 1 + slope * z)`` for one participant."""
    if row["group"] != "MS" or cfg["clinical_slope"] == 0:
        return 1.0
    mean, sd = clinical_population_moments()[cfg["clinical_variable"]]
    z = (float(row[cfg["clinical_variable"]]) - mean) / sd
    return max(0.05, 1.0 + cfg["clinical_slope"] * z)


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class Grid:
    """The simulation grid and everything derived from it once per resolution.

    Attributes
    ----------
    mask_img : nibabel.Nifti1Image
        MNI152 brain mask (nilearn) at the resolution.
    mask : numpy.ndarray
        3-D boolean mask; maps over the mask are ``data[mask]`` (C order).
    coords : numpy.ndarray, shape (n_voxels, 3)
        MNI coordinates of the in-mask voxels.
    gm, wm, csf : numpy.ndarray, shape (n_voxels,)
        Grey-matter probability; white-matter (probability > 0.9, i.e. eroded) and CSF
        proxy (in-brain, GM and WM probability < 0.2, within 45 mm of the ventricles)
        boolean masks.
    edge : numpy.ndarray, shape (n_voxels,)
        1 on the mask boundary, 0.5 inside (motion artefacts are largest at edges).
    names : list of str
        Network names (analysis networks first).
    base_maps : numpy.ndarray, shape (n_networks, n_voxels)
        Generating maps of HC: templates weighted by ``1 - WM probability`` (0 in the CSF
        proxy; neural signal lives in grey matter, so the WM/CSF confounds carry none) plus
        a baseline node at each finding.
    blobs : numpy.ndarray, shape (n_findings, n_voxels)
        Gaussian blob (peak 1, ``atlas.TEMPLATE_SIGMA_MM``) at each finding.
    finding_network : numpy.ndarray of int
        Network index of each finding.
    finding_voxel : numpy.ndarray of int
        In-mask voxel index nearest to each finding's coordinate.
    bbox : tuple of slice
        Bounding box of the mask (random fields are smoothed inside it).
    fortran_index : numpy.ndarray of int
        Position of each in-mask voxel in the Fortran-ordered (on-disk NIfTI) volume.
    field_norm : float
        L2 norm of the smoothing kernel (normalises fields to unit variance).
    """

    mask_img: object
    mask: np.ndarray
    coords: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    edge: np.ndarray
    names: list
    base_maps: np.ndarray
    blobs: np.ndarray
    finding_network: np.ndarray
    finding_voxel: np.ndarray
    bbox: tuple
    fortran_index: np.ndarray
    field_norm: float

    @property
    def resolution(self) -> float:
        """Voxel size in mm."""
        return float(self.mask_img.header.get_zooms()[0])


@lru_cache(maxsize=2)
def load_grid(resolution_mm: int) -> Grid:
    """Build the simulation :class:`Grid` at ``resolution_mm`` (cached per process)."""
    from nilearn import datasets
    from scipy import ndimage

    mask_img = datasets.load_mni152_brain_mask(resolution=resolution_mm)
    mask = np.asarray(mask_img.dataobj).astype(bool)
    coords = atlas.mask_coordinates(mask_img)
    gm = datasets.load_mni152_gm_template(resolution=resolution_mm).get_fdata()[mask]
    wm_prob = datasets.load_mni152_wm_template(resolution=resolution_mm).get_fdata()[mask]
    near_centre = np.linalg.norm(coords - np.array([0.0, -10.0, 15.0]), axis=1) < 45.0
    csf = (gm < 0.2) & (wm_prob < 0.2) & near_centre
    edge = np.where((mask & ~ndimage.binary_erosion(mask))[mask], 1.0, 0.5)
    names, templates = atlas.network_templates(mask_img)
    neural = np.where(csf, 0.0, 1.0 - wm_prob).astype(np.float32)
    base_maps, blobs, net_idx, vox_idx = _planted_nodes(names, templates * neural, coords)
    bbox = ndimage.find_objects(mask.astype(np.int8))[0]
    return Grid(
        mask_img=mask_img,
        mask=mask,
        coords=coords,
        gm=gm.astype(np.float32),
        wm=wm_prob > 0.9,
        csf=csf,
        edge=edge.astype(np.float32),
        names=names,
        base_maps=base_maps,
        blobs=blobs,
        finding_network=net_idx,
        finding_voxel=vox_idx,
        bbox=bbox,
        fortran_index=np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F"),
        field_norm=_kernel_norm(FIELD_SIGMA_MM / resolution_mm),
    )


def _planted_nodes(names, templates, coords):
    """Add a baseline node (peak :data:`NODE_WEIGHT`) to each finding's network map."""
    base = templates.copy()
    findings = atlas.published_findings()
    blobs = np.zeros((len(findings), len(coords)), np.float32)
    net_idx = np.zeros(len(findings), int)
    vox_idx = np.zeros(len(findings), int)
    for j, f in findings.iterrows():
        xyz = (f["x"], f["y"], f["z"])
        blobs[j] = atlas.gaussian_blob(coords, xyz, atlas.TEMPLATE_SIGMA_MM)
        net_idx[j] = names.index(f["network"])
        vox_idx[j] = int(np.argmin(np.sum((coords - np.asarray(xyz)) ** 2, axis=1)))
        np.maximum(base[net_idx[j]], NODE_WEIGHT * blobs[j], out=base[net_idx[j]])
    return base, blobs, net_idx, vox_idx


def _kernel_norm(sigma_vox: float) -> float:
    """Return the L2 norm of the truncated Gaussian kernel used by :func:`_smooth_fields`."""
    from scipy import ndimage

    size = 2 * int(np.ceil(3 * sigma_vox)) + 3
    delta = np.zeros((size,) * 3, np.float32)
    delta[(size // 2,) * 3] = 1.0
    return float(np.sqrt(np.sum(ndimage.gaussian_filter(delta, sigma_vox, truncate=3.0) ** 2)))


def _smooth_fields(rng, grid: Grid, n: int) -> np.ndarray:
    """Draw ``n`` unit-variance smooth Gaussian random fields over the mask, (n, n_voxels)."""
    from scipy import ndimage

    sigma = FIELD_SIGMA_MM / grid.resolution
    shape = tuple(s.stop - s.start for s in grid.bbox)
    noise = rng.standard_normal((n, *shape), dtype=np.float32)
    ndimage.gaussian_filter(noise, (0, sigma, sigma, sigma), output=noise, truncate=3.0)
    return noise[:, grid.mask[grid.bbox]] / np.float32(grid.field_norm)


# --------------------------------------------------------------------------- subject


@dataclass
class SubjectSim:
    """One simulated subject (arrays over the mask, time first).

    Attributes
    ----------
    codes : numpy.ndarray, shape (n_volumes, n_voxels), int16
        The stored BOLD values; the data are ``codes * quant_step`` (see :attr:`bold`).
    quant_step : float
        The int16 quantisation step (``scl_slope`` of the BOLD file).
    confounds : pandas.DataFrame
        The confounds table as written (NaN = ``n/a``).
    confounds_meta : dict
        The confounds JSON.
    timecourses : numpy.ndarray, shape (n_volumes, n_networks)
        Generating network time courses (unit variance).
    maps : numpy.ndarray, shape (n_networks, n_voxels)
        Generating maps including the subject amplitude (percent signal per unit time course
        is ``signal_pct * maps``).
    amplitude : numpy.ndarray, shape (n_networks,)
        Subject amplitudes ``a_sk`` (including the clinical factor).
    clinical_factor : float
        Factor applied to the analysis-network amplitudes (1 for HC / no clinical effect).
    motion : numpy.ndarray, shape (n_volumes, 6)
        Realignment parameters (mm, rad).
    """

    codes: np.ndarray
    quant_step: float
    confounds: pd.DataFrame
    confounds_meta: dict
    timecourses: np.ndarray
    maps: np.ndarray
    amplitude: np.ndarray
    clinical_factor: float
    motion: np.ndarray

    @property
    def bold(self) -> np.ndarray:
        """The BOLD data exactly as written, (n_volumes, n_voxels) float32."""
        return self.codes * np.float32(self.quant_step)


def _bandlimited(rng, n_time: int, n_series: int, tr: float, band=(0.01, 0.1)) -> np.ndarray:
    """Draw unit-variance time series with power only in ``band`` (Hz), (n_time, n_series)."""
    freqs = np.fft.rfftfreq(n_time, tr)
    spec = rng.standard_normal((len(freqs), n_series)) + 1j * rng.standard_normal(
        (len(freqs), n_series)
    )
    spec[(freqs < band[0]) | (freqs > band[1])] = 0.0
    series = np.fft.irfft(spec, n=n_time, axis=0)
    series -= series.mean(axis=0)
    return series / series.std(axis=0)


def _motion_params(rng, n_time: int, high: bool) -> np.ndarray:
    """Draw realignment parameters (mm, rad): slow random walks plus brief spikes.

    A spike displaces the head for one volume (0.2-0.6 mm per axis, 0.003-0.009 rad).
    Low-motion subjects have about 1% spike volumes and a mean FD of about 0.14 mm (0.04 to
    0.35); high-motion subjects a 1.5x random walk and :data:`HIGH_MOTION_SPIKES` spike
    volumes, mean FD 0.6-0.95 mm, so FD-based QC (mean FD > 0.5 mm) excludes them.
    """
    level = rng.lognormal(0.0, 0.3) * (1.5 if high else 1.0)
    step_sd = np.array([0.02, 0.02, 0.02, 4e-4, 4e-4, 4e-4]) * level
    steps = rng.normal(0.0, 1.0, (n_time, 6)) * step_sd
    steps[0] = 0.0
    params = np.cumsum(steps, axis=0)
    n_spikes = int(np.ceil(HIGH_MOTION_SPIKES * n_time)) if high else rng.binomial(n_time, 0.01)
    where = rng.choice(n_time, size=n_spikes, replace=False)
    size = rng.uniform(0.5, 1.5, (n_spikes, 6)) * rng.choice([-1.0, 1.0], (n_spikes, 6))
    params[where] += size * np.array([0.4] * 3 + [0.006] * 3)
    return params


def framewise_displacement(motion: np.ndarray) -> np.ndarray:
    """Power FD as fMRIPrep/nipype: sum |d trans| + 50 mm * sum |d rot|; first value NaN."""
    diff = np.abs(np.diff(motion, axis=0))
    fd = diff[:, :3].sum(axis=1) + _HEAD_RADIUS_MM * diff[:, 3:].sum(axis=1)
    return np.r_[np.nan, fd]


def _rmsd(motion: np.ndarray, radius: float = 80.0) -> np.ndarray:
    """Relative RMS displacement (Jenkinson 1999, small-angle form, 80 mm sphere); first NaN.

    fMRIPrep takes this from MCFLIRT; here it is computed from the simulated parameters.
    """
    diff = np.diff(motion, axis=0)
    rot = 0.4 * radius**2 * np.sum(diff[:, 3:] ** 2, axis=1)
    return np.r_[np.nan, np.sqrt(np.sum(diff[:, :3] ** 2, axis=1) + rot)]


def _subject_maps(cfg, grid, row, deltas, fields, rng):
    """Return generating maps (K, V), amplitudes (K,) and the clinical factor of a subject."""
    n_net = len(grid.names)
    amplitude = np.clip(rng.normal(1.0, cfg["amplitude_sd"], n_net), 0.1, None)
    factor = _clinical_factor(cfg, row)
    amplitude[: len(ANALYSIS_NETWORKS)] *= factor
    maps = grid.base_maps.copy()
    if row["group"] == "MS":
        for j, (k, delta) in enumerate(zip(grid.finding_network, deltas)):
            maps[k] += np.float32(delta) * grid.blobs[j]
    maps *= 1.0 + np.float32(cfg["map_noise_sd"]) * fields
    maps *= amplitude[:, None].astype(np.float32)
    return maps, amplitude, factor


def _percent_signal(cfg, grid, rng, maps, timecourses, motion, fields) -> np.ndarray:
    """Sum every percent-signal component, (T, V) float32 (``fields`` laid out as _FIELDS)."""
    n_time = timecourses.shape[0]
    tissue = np.where(grid.csf, 1.0, np.where(grid.wm, 0.7, 0.4)).astype(np.float32)
    x = (timecourses.astype(np.float32) * np.float32(cfg["signal_pct"])) @ maps
    glob = _bandlimited(rng, n_time, 1, cfg["tr"], (0.0, 0.1))[:, 0] * cfg["global_pct"]
    x += np.outer(glob, 1.0 + 0.2 * fields[_FIELDS["global"]]).astype(np.float32)
    physio = rng.standard_normal((n_time, _N_PHYSIO)) * cfg["physio_pct"]
    x += physio.astype(np.float32) @ (tissue * (1.0 + 0.5 * fields[_FIELDS["physio"]]))
    disp = motion * np.array([1.0] * 3 + [_HEAD_RADIUS_MM] * 3)
    disp = np.hstack([disp - disp.mean(axis=0), np.vstack([np.zeros(6), np.diff(disp, axis=0)])])
    patterns = fields[_FIELDS["motion"]] * (grid.edge * np.float32(cfg["motion_pct_per_mm"]))
    x += disp.astype(np.float32) @ patterns
    drift = np.linspace(-1.0, 1.0, n_time, dtype=np.float32)
    x += np.outer(drift, cfg["drift_pct"] * fields[_FIELDS["drift"]]).astype(np.float32)
    noise_sd = np.float32(cfg["noise_pct"]) * np.where(grid.csf, 1.5, 1.0).astype(np.float32)
    x += rng.standard_normal(x.shape, dtype=np.float32) * noise_sd
    return x


ARTIFACT_FIELDS = 4
"""Independent spatial patterns of the FD-driven artefact (:func:`motion_artifact`)."""

ARTIFACT_SIGMA_MM = 15.0
"""Smoothness (Gaussian sigma) of the artefact's patterns: their correlation between two voxels
is exp(-d^2 / (4 sigma^2)), 0.78 at 15 mm, 0.17 at 40 mm, 0.02 at 60 mm, so the artefact
raises short-distance FC most."""

ARTIFACT_DECAY_S = 2.0
"""Time constant of the artefact's decay after each volume's displacement (spin history)."""


def _child_rng(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator derived from ``rng`` without drawing from it."""
    if hasattr(rng, "spawn"):
        return rng.spawn(1)[0]
    return np.random.default_rng(rng.bit_generator._seed_seq.spawn(1)[0])  # numpy < 1.25


def motion_artifact(cfg: dict, grid: Grid, rng: np.random.Generator, motion) -> np.ndarray:
    """FD-driven, spatially smooth BOLD artefact (``simulate.motion_artifact``), % signal.

    Motion leaves signal changes that realignment and the 24 motion regressors do not model
    (spin history, interpolation; Power et al. 2012, 2014): each volume's framewise
    displacement ``FD(t)`` (mm) starts a disturbance ``(FD(t) / 1 mm)^2 * e_k(t)``,
    ``e_k ~ N(0, 1)``, decaying with :data:`ARTIFACT_DECAY_S`, in each of
    :data:`ARTIFACT_FIELDS` smooth random spatial patterns (sigma :data:`ARTIFACT_SIGMA_MM`,
    unit variance, over the whole brain mask, white matter and CSF included) and in the whole
    brain (a global component)::

        artefact(t, v) = motion_artifact * sum_k (h * (FD^2 e_k))(t) * pattern_k(v)

    Its variance grows with the subject's motion (mostly with its large movements), and nearby
    voxels share it, so it raises the FC of short edges most in subjects who move more: a QC-FC
    artefact with Power's distance dependence. It is not linear in the motion parameters (24P
    leaves it); the global part goes with the WM/CSF means or the global signal, and the rest
    largely with the censoring of high-FD volumes (where the disturbances start) and with
    aCompCor (the patterns extend into WM and CSF).

    Parameters
    ----------
    cfg : dict
        Full config (:func:`sim_config`); ``motion_artifact`` in % signal per mm^2 of FD,
        ``tr``.
    grid : Grid
    rng : numpy.random.Generator
    motion : numpy.ndarray, shape (n_volumes, 6)

    Returns
    -------
    numpy.ndarray, shape (n_volumes, n_voxels), float32
    """
    from scipy import ndimage

    n_time = motion.shape[0]
    fd = np.nan_to_num(framewise_displacement(motion))
    drive = (fd**2)[:, None] * rng.standard_normal((n_time, ARTIFACT_FIELDS + 1))
    lag = np.arange(n_time)
    kernel = np.exp(-lag * cfg["tr"] / ARTIFACT_DECAY_S)
    courses = np.stack([np.convolve(drive[:, k], kernel)[:n_time]
                        for k in range(drive.shape[1])], axis=1)
    sigma = ARTIFACT_SIGMA_MM / grid.resolution
    shape = tuple(s.stop - s.start for s in grid.bbox)
    noise = rng.standard_normal((ARTIFACT_FIELDS, *shape), dtype=np.float32)
    ndimage.gaussian_filter(noise, (0, sigma, sigma, sigma), output=noise, truncate=3.0)
    fields = noise[:, grid.mask[grid.bbox]]
    fields /= fields.std(axis=1, keepdims=True)
    patterns = np.vstack([fields, np.ones((1, fields.shape[1]), np.float32)])
    return (courses.astype(np.float32) * np.float32(cfg["motion_artifact"])) @ patterns


EDGE_EFFECT_NETWORKS = ("DMN", "SMN")
"""The network pair whose FC ``simulate.edge_effect`` lowers in MS (DMN-SMN hypo-connectivity)."""


def edge_effect_timecourses(timecourses: np.ndarray, names, edge_effect: float) -> np.ndarray:
    """Plant the edge-level MS effect (``simulate.edge_effect`` = r) in generating time courses.

    The SMN course becomes ``-r * DMN + sqrt(1 - r^2) * SMN``: still unit variance, with a
    population correlation of -r with the DMN course (0 in HC, whose courses are independent).
    Every edge between a DMN and an SMN ROI of the 300-ROI matrix (the ROIs the network
    templates are made of) therefore has lower FC in MS, while the network maps (amplitudes,
    the published voxelwise findings) are unchanged: dual regression's stage 2 regresses on
    all network courses together. The edges it lowers are those of
    :func:`planted_edges`.

    Parameters
    ----------
    timecourses : numpy.ndarray, shape (n_volumes, n_networks)
        Unit-variance generating courses in the order of ``names``.
    names : list of str
        Network names (:attr:`Grid.names`).
    edge_effect : float
        r in [0, 0.9].
    """
    a, b = (list(names).index(n) for n in EDGE_EFFECT_NETWORKS)
    out = timecourses.copy()
    r = float(edge_effect)
    out[:, b] = -r * timecourses[:, a] + np.sqrt(1.0 - r * r) * timecourses[:, b]
    return out


def planted_edges(rois: pd.DataFrame | None = None) -> np.ndarray:
    """Whether each edge of the 300-ROI matrix (``numpy.triu_indices`` order) joins a DMN and
    an SMN ROI: the edges ``simulate.edge_effect`` lowers in MS."""
    rois = atlas.seitzman_rois() if rois is None else rois
    net = rois["network"].to_numpy()
    i, j = np.triu_indices(len(net), 1)
    a, b = EDGE_EFFECT_NETWORKS
    return ((net[i] == a) & (net[j] == b)) | ((net[i] == b) & (net[j] == a))


def _scale_in_time(cfg, motion) -> np.ndarray:
    """Volume-wise multiplicative factor: non-steady-state brightening and spin-history drops."""
    n_time, n_dummy = motion.shape[0], cfg["n_dummy"]
    scale = np.ones(n_time)
    scale[:n_dummy] += 0.5 * (n_dummy - np.arange(n_dummy)) / n_dummy
    fd = np.nan_to_num(framewise_displacement(motion))
    scale[fd > 0.5] *= 1.0 - 0.02 * fd[fd > 0.5]
    return scale


def simulate_subject(cfg: dict, grid: Grid, row, deltas, rng, site=(0.0, 1.0)) -> SubjectSim:
    """Simulate one subject's BOLD data and confounds.

    Parameters
    ----------
    cfg : dict
        Full config (:func:`sim_config`).
    grid : Grid
        From :func:`load_grid`.
    row : mapping
        The subject's row of :func:`plan_dataset`.
    deltas : numpy.ndarray, shape (n_findings,)
        Signed MS effects of the subject's study (``direction * delta``).
    rng : numpy.random.Generator
        The subject's generator (see :func:`subject_rng`).
    site : (float, float)
        The study's (additive, multiplicative) site effect (:func:`site_effects`).

    Returns
    -------
    SubjectSim

    Notes
    -----
    BLAS is limited to one thread here (threadpoolctl) so the bytes written do not depend
    on the number of threads.
    """
    with _blas_controller().limit(limits=1):
        return _simulate_subject(cfg, grid, row, deltas, rng, site)


@lru_cache(maxsize=1)
def _blas_controller():
    """threadpoolctl controller (BLAS runs single-threaded while simulating, so summation
    order, hence every written byte, does not depend on the machine's thread count)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _simulate_subject(cfg, grid, row, deltas, rng, site=(0.0, 1.0)) -> SubjectSim:
    """Body of :func:`simulate_subject`."""
    n_time = cfg["n_volumes"]
    n_net = len(grid.names)
    fields = _smooth_fields(rng, grid, n_net + _N_NUISANCE_FIELDS)
    maps, amplitude, factor = _subject_maps(cfg, grid, row, deltas, fields[:n_net], rng)
    maps = apply_site_effect(maps, grid.base_maps, *site)
    timecourses = _bandlimited(rng, n_time, n_net, cfg["tr"])
    if row["group"] == "MS" and cfg["edge_effect"]:  # no draw: 0 gives the data of before
        timecourses = edge_effect_timecourses(timecourses, grid.names, cfg["edge_effect"])
    motion = _motion_params(rng, n_time, bool(row["high_motion"]))
    x = _percent_signal(cfg, grid, rng, maps, timecourses, motion, fields[n_net:])
    if cfg["motion_artifact"]:  # its own stream: with 0 the data are those of before
        x += motion_artifact(cfg, grid, _child_rng(rng), motion)
    bias = fields[n_net + _FIELDS["baseline"]]
    baseline = 1000.0 * (1.0 + 0.25 * grid.csf - 0.15 * grid.wm + 0.03 * bias)
    x *= np.float32(0.01)
    x += np.float32(1.0)
    x *= baseline.astype(np.float32)
    x *= _scale_in_time(cfg, motion)[:, None].astype(np.float32)
    step = max(QUANT_STEP_FRACTION * 10.0 * cfg["noise_pct"], float(np.abs(x).max()) / 32000)
    codes = np.rint(x / np.float32(step)).astype(np.int16)
    confounds, meta = fmriprep_confounds(codes, grid, motion, cfg["tr"], cfg["n_dummy"], step)
    return SubjectSim(
        codes, step, confounds, meta, timecourses, maps, amplitude, factor, motion
    )


def _median_int(values: np.ndarray) -> float:
    """Median of an integer array by counting (no sort, unlike ``np.median``)."""
    low = int(values.min())
    counts = np.cumsum(np.bincount((values.ravel().astype(np.int64) - low)))
    middle = np.searchsorted(counts, [(values.size - 1) // 2 + 1, values.size // 2 + 1])
    return low + 0.5 * float(middle.sum())


def subject_rng(seed: int, study_index: int, subject_index: int) -> np.random.Generator:
    """Return the generator of one subject (independent of every other subject and study)."""
    return _rng(seed, _STREAM_SUBJECT, study_index, subject_index)


# --------------------------------------------------------------------------- confounds


def cosine_basis(n_time: int, tr: float, period_cut: float = HIGHPASS_PERIOD_S) -> np.ndarray:
    """DCT high-pass basis as fMRIPrep writes it (``cosineXX``), without the constant.

    Same formula as nipype's ``_cosine_drift`` (rewritten to avoid importing nipype, about
    1 s, in every simulation job): ``order = max(floor(2 n tr / period_cut), 1)`` and
    ``order - 1`` columns ``sqrt(2/n) cos(pi (t + 0.5) k / n)``.
    """
    order = max(int(np.floor(2 * n_time * tr / period_cut)), 1)
    t = np.arange(n_time)[:, None] + 0.5
    k = np.arange(1, order)[None, :]
    return np.sqrt(2.0 / n_time) * np.cos(np.pi / n_time * t * k)


def dvars(data: np.ndarray):
    """DVARS and standardised DVARS exactly as nipype's ``compute_dvars`` (fMRIPrep).

    Vectorised rewrite: nipype loops over voxels for the AR(1) estimate and needs nitime
    (not a dependency). Intensity normalisation to a median of 1000, zero-variance voxels
    removed, robust SD from the interquartile range (numpy's ``lower`` percentile, taken
    from one sort along time), AR(1) by Yule-Walker. Integer input (stored int16 values)
    takes a faster median and sort; the result does not depend on the data's scale.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_volumes, n_voxels)
        In-mask time series (float, or the integers stored in an int16 NIfTI).

    Returns
    -------
    dvars, std_dvars : numpy.ndarray, shape (n_volumes,)
        First value NaN (as in fMRIPrep's confounds).
    """
    data = np.asarray(data)
    integer = np.issubdtype(data.dtype, np.integer)
    median = _median_int(data) if integer else np.median(data.astype(np.float32))
    scale = np.float32(1000.0 / median)
    i25, i75 = (int(np.floor(q * (data.shape[0] - 1))) for q in (0.25, 0.75))
    ordered = np.sort(data, axis=0)
    sd = (ordered[i75] - ordered[i25]).astype(np.float32) * scale / np.float32(1.349)
    m = data.astype(np.float32)
    m *= scale
    if not np.all(sd > 0):
        m, sd = m[:, sd > 0], sd[sd > 0]
    centred = m - m.mean(axis=0)
    ar1 = np.sum(centred[1:] * centred[:-1], axis=0) / np.sum(centred**2, axis=0)
    diff_sd_mean = np.mean(np.sqrt((1.0 - ar1.astype(np.float64)) * 2) * sd)
    raw = np.sqrt(np.mean(np.square(np.diff(m, axis=0)), axis=1))
    return np.r_[np.nan, raw], np.r_[np.nan, raw / diff_sd_mean]


def _acompcor(data_ss: np.ndarray, grid: Grid, basis: np.ndarray):
    """aCompCor as nipype/fMRIPrep: DCT pre-filter, variance normalisation, SVD per mask.

    The left singular vectors are taken from the eigen-decomposition of the small
    time-by-time Gram matrix (same components, far cheaper than an SVD of the
    time-by-voxel matrix when voxels outnumber volumes). Voxels are variance-normalised, so nothing depends on the data's
    scale. Returns a list of (values over steady-state volumes, metadata).
    """
    combined = grid.wm | grid.csf
    q, _ = np.linalg.qr(np.column_stack([basis, np.ones(len(basis))]))
    m = data_ss[:, combined].astype(np.float64)
    m -= q @ (q.T @ m)
    sd = m.std(axis=0)
    m /= np.where(sd == 0, 1.0, sd)
    out = []
    for mask_name, n_comp in N_COMPCOR.items():
        sel = {"combined": combined, "CSF": grid.csf, "WM": grid.wm}[mask_name][combined]
        eigval, eigvec = np.linalg.eigh(m[:, sel] @ m[:, sel].T)
        s = np.sqrt(np.clip(eigval[::-1], 0.0, None))
        u = eigvec[:, ::-1]
        var = s**2 / np.sum(s**2)
        cum = np.cumsum(var)
        for i in range(min(n_comp, int(sel.sum()))):
            meta = {
                "Method": "aCompCor",
                "Mask": mask_name,
                "SingularValue": float(s[i]),
                "VarianceExplained": float(var[i]),
                "CumulativeVarianceExplained": float(cum[i]),
                "Retained": True,
            }
            out.append((u[:, i], meta))
    return out


def _expand(name: str, values: np.ndarray) -> dict:
    """Return ``name`` with fMRIPrep's _derivative1, _power2, _derivative1_power2 variants."""
    deriv = np.r_[np.nan, np.diff(values)]
    return {
        name: values,
        f"{name}_derivative1": deriv,
        f"{name}_power2": values**2,
        f"{name}_derivative1_power2": deriv**2,
    }


def fmriprep_confounds(stored, grid: Grid, motion, tr: float, n_dummy: int, slope=1.0):
    """Compute an fMRIPrep-style confounds table and its JSON from simulated data.

    Parameters
    ----------
    stored : numpy.ndarray, shape (n_volumes, n_voxels)
        In-mask BOLD data as stored (the data are ``stored * slope``), e.g. int16 codes.
    grid : Grid
        Provides the WM and CSF masks.
    motion : numpy.ndarray, shape (n_volumes, 6)
        Realignment parameters (mm, rad).
    tr : float
        Repetition time (s).
    n_dummy : int
        Number of initial non-steady-state volumes.
    slope : float
        Scale of ``stored`` (the NIfTI ``scl_slope``).

    Returns
    -------
    confounds : pandas.DataFrame
        Columns as fMRIPrep (>= 20.2) names them; NaN where fMRIPrep writes ``n/a``
        (first row of derivatives, FD, DVARS, std_DVARS, rmsd). CompCor and cosine rows
        of non-steady-state volumes are 0, as nipype pads them.
    meta : dict
        Confounds JSON: aCompCor metadata (Method, Mask, SingularValue, VarianceExplained,
        CumulativeVarianceExplained, Retained) and cosine metadata.
    """
    n_time = stored.shape[0]
    cols = {}
    masks = {"global_signal": slice(None), "csf": grid.csf, "white_matter": grid.wm}
    for name, sel in masks.items():
        cols.update(_expand(name, stored[:, sel].mean(axis=1, dtype=np.float64) * slope))
    cols["dvars"], cols["std_dvars"] = dvars(stored)
    cols["framewise_displacement"] = framewise_displacement(motion)
    cols["rmsd"] = _rmsd(motion)
    basis = cosine_basis(n_time - n_dummy, tr)
    meta = {}
    for i, (values, info) in enumerate(_acompcor(stored[n_dummy:], grid, basis)):
        cols[f"a_comp_cor_{i:02d}"] = np.r_[np.zeros(n_dummy), values]
        meta[f"a_comp_cor_{i:02d}"] = info
    for i in range(basis.shape[1]):
        cols[f"cosine{i:02d}"] = np.r_[np.zeros(n_dummy), basis[:, i]]
        meta[f"cosine{i:02d}"] = {"Method": "DCT", "CutoffPeriod": HIGHPASS_PERIOD_S}
    for i in range(n_dummy):
        cols[f"non_steady_state_outlier{i:02d}"] = (np.arange(n_time) == i).astype(int)
    for j, name in enumerate(_MOTION_NAMES):
        cols.update(_expand(name, motion[:, j]))
    return pd.DataFrame(cols), meta


# --------------------------------------------------------------------------- writing


def _entities(label: str) -> str:
    """BIDS entities shared by a subject's files (``sub-<label>_task-rest``)."""
    return f"sub-{label}_task-{TASK}"


def subject_paths(study_dir, participant_id: str, resolution_mm: int) -> dict:
    """Return the fMRIPrep-style paths of one simulated subject.

    Returns
    -------
    dict
        Keys ``bold``, ``bold_json``, ``mask``, ``confounds``, ``confounds_json``.
    """
    label = participant_id.removeprefix("sub-")
    func = Path(study_dir) / f"sub-{label}" / "func"
    space = f"{_entities(label)}_space-{SPACE}_res-{resolution_mm}"
    return {
        "bold": func / f"{space}_desc-preproc_bold.nii.gz",
        "bold_json": func / f"{space}_desc-preproc_bold.json",
        "mask": func / f"{space}_desc-brain_mask.nii.gz",
        "confounds": func / f"{_entities(label)}_desc-confounds_timeseries.tsv",
        "confounds_json": func / f"{_entities(label)}_desc-confounds_timeseries.json",
    }


def _nifti_header(grid: Grid, dtype, n_time: int | None, tr: float | None, slope: float):
    """Return a NIfTI-1 header for mask values on the grid (MNI sform/qform, mm/s units)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(grid.mask.shape + ((n_time,) if n_time else ()))
    header.set_data_dtype(dtype)
    header.set_sform(grid.mask_img.affine, code=4)
    header.set_qform(grid.mask_img.affine, code=4)
    header.set_xyzt_units("mm", "sec")
    zooms = tuple(grid.mask_img.header.get_zooms()[:3])
    header.set_zooms(zooms + ((float(tr),) if n_time else ()))
    header.set_slope_inter(slope, 0.0)
    header["vox_offset"] = 352
    return header


def nifti_gz_bytes(stored, grid: Grid, tr: float | None = None, slope: float = 1.0) -> bytes:
    """Encode values over the mask as a gzipped single-file NIfTI (reproducible bytes).

    Written here rather than with nibabel's ``to_filename`` because nibabel recomputes the
    int16 scaling from the data (we want a fixed quantisation step, ``slope``, which keeps
    files small) and its chunked writer is slower; gzip uses ``isal`` (faster than
    zlib) with the zlib-style gzip header (``mtime`` 0, no file name), so equal
    data give equal bytes.

    Parameters
    ----------
    stored : numpy.ndarray, shape (n_volumes, n_voxels) or (n_voxels,)
        Values over the mask (time first) as stored on disk; their dtype is the file's.
    grid : Grid
        The grid.
    tr : float, optional
        Repetition time (pixdim[4], seconds); given = write a 4-D image.
    slope : float
        ``scl_slope`` of the file (the data are ``stored * slope``).

    Returns
    -------
    bytes
    """
    from isal import isal_zlib

    stored = np.atleast_2d(stored)
    header = _nifti_header(grid, stored.dtype, stored.shape[0] if tr else None, tr, slope)
    data = np.zeros((stored.shape[0], grid.mask.size), stored.dtype)
    data[:, grid.fortran_index] = stored
    gzip = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)
    head = gzip.compress(header.binaryblock + b"\0\0\0\0")
    return head + gzip.compress(memoryview(data).cast("B")) + gzip.flush()


@lru_cache(maxsize=2)
def _mask_bytes(resolution_mm: int) -> bytes:
    """The brain-mask NIfTI (uint8) of the grid, encoded once per resolution."""
    grid = load_grid(resolution_mm)
    return nifti_gz_bytes(np.ones(int(grid.mask.sum()), np.uint8), grid)


def _write_bytes(data: bytes, path) -> None:
    """Write bytes atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_subject(sub: SubjectSim, grid: Grid, paths: dict, tr: float, study_id: str) -> None:
    """Write one subject's BOLD, mask, sidecar and confounds."""
    bold = nifti_gz_bytes(sub.codes, grid, tr=tr, slope=sub.quant_step)
    _write_bytes(bold, paths["bold"])
    _write_bytes(_mask_bytes(int(round(grid.resolution))), paths["mask"])
    sidecar = {
        "RepetitionTime": float(tr),
        "TaskName": TASK,
        "SkullStripped": True,
        "SliceTimingCorrected": False,
        "Manufacturer": "msnet simulation",
        "Sources": [f"msnet.simulate study {study_id}"],
    }
    write_json(sidecar, paths["bold_json"])
    write_tsv(sub.confounds, paths["confounds"], float_format="%.8g")
    write_json(sub.confounds_meta, paths["confounds_json"])


PARTICIPANT_COLUMNS = (
    "participant_id", "group", "age", "sex", "disease_duration", "edss", "t2lv", "phenotype",
)  # fmt: skip

_PARTICIPANTS_JSON = {
    "group": {"Description": "Diagnostic group", "Levels": {"MS": "multiple sclerosis",
                                                             "HC": "healthy control"}},
    "age": {"Description": "Age at scan", "Units": "year"},
    "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
    "disease_duration": {"Description": "Years since MS onset (MS only)", "Units": "year"},
    "edss": {"Description": "Expanded Disability Status Scale, 0-10 in 0.5 steps (MS only)"},
    "t2lv": {"Description": "T2 lesion volume (MS only)", "Units": "ml"},
    "phenotype": {"Description": "MS phenotype (MS only)",
                  "Levels": {p: p for p in _PHENOTYPES}},
}  # fmt: skip


def _write_study_tables(study_dir: Path, study_id: str, plan: pd.DataFrame) -> None:
    """Write dataset_description.json, .bidsignore, participants.json and (last) .tsv."""
    description = {
        "Name": f"msnet synthetic rs-fMRI study {study_id}",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "msnet",
                "Version": __version__,
                "Description": "Synthetic fMRIPrep-like derivatives (msnet.simulate)",
            }
        ],
    }
    write_json(description, study_dir / "dataset_description.json")
    write_text("ground_truth_subjects.tsv\n", study_dir / ".bidsignore")
    write_json(_PARTICIPANTS_JSON, study_dir / "participants.json")
    write_tsv(plan[list(PARTICIPANT_COLUMNS)], study_dir / "participants.tsv")


def _truth_row(sub: SubjectSim, grid: Grid, row, mean_fd: float) -> dict:
    """Per-subject ground truth: amplitudes and generating map values at the findings."""
    truth = {
        "participant_id": row["participant_id"],
        "group": row["group"],
        "high_motion": bool(row["high_motion"]),
        "mean_fd": mean_fd,
        "clinical_factor": sub.clinical_factor,
    }
    truth.update({f"amplitude_{n}": float(a) for n, a in zip(grid.names, sub.amplitude)})
    for j, name in enumerate(atlas.published_findings()["finding"]):
        k, v = grid.finding_network[j], grid.finding_voxel[j]
        truth[f"map_{name}"] = float(sub.maps[k, v])
    return truth


def study_index(study_id: str) -> int:
    """Return the 0-based index of ``study_id`` in :data:`STUDY_IDS`."""
    if study_id not in STUDY_IDS:
        raise MsnetInputError(
            f"simulate: unknown study_id {study_id!r}; expected one of S01..S{len(STUDY_IDS):02d}"
        )
    return STUDY_IDS.index(study_id)


def iter_study_subjects(sim: dict, seed: int, study_id: str):
    """Simulate the subjects of one study in order, without writing anything.

    This is exactly what :func:`simulate_study` writes, so tests and analyses can recover
    each subject's generating network time courses and maps.

    Parameters
    ----------
    sim : dict
        Simulation config.
    seed : int
        Master seed.
    study_id : str
        One of :data:`STUDY_IDS`.

    Yields
    ------
    row : pandas.Series
        The subject's row of :func:`plan_dataset`.
    subject : SubjectSim
        The simulated arrays.
    """
    cfg = sim_config(sim)
    index = study_index(study_id)
    plan = plan_dataset(cfg, seed)
    cfg = study_config(cfg, study_id)
    plan = plan[plan["study_id"] == study_id].reset_index(drop=True)
    effects = plan_effects(cfg, seed)
    effects = effects[effects["study_id"] == study_id]
    deltas = (effects["direction"] * effects["delta"]).to_numpy()
    site = site_effects(cfg, seed).iloc[index]
    site = (site["additive"], site["multiplicative"])
    grid = load_grid(cfg["resolution_mm"])
    for i, row in plan.iterrows():
        yield row, simulate_subject(cfg, grid, row, deltas, subject_rng(seed, index, i), site)


def simulate_study(sim: dict, seed: int, study_id: str, out_dir) -> None:
    """Simulate one study and write it as fMRIPrep derivatives under ``out_dir/study-<id>``.

    Writes ``dataset_description.json``, ``participants.tsv`` (+ ``.json``),
    ``ground_truth_subjects.tsv`` (listed in ``.bidsignore``) and per subject, under
    ``sub-<label>/func/``: ``*_space-MNI152NLin2009cAsym_res-<R>_desc-preproc_bold.nii.gz``
    (int16 with a fixed ``scl_slope``, gzip reproducible byte for byte) with its ``.json``
    sidecar, ``*_desc-brain_mask.nii.gz`` and ``*_desc-confounds_timeseries.tsv`` (+ ``.json``).
    ``participants.tsv`` is written last, so its presence means the study is complete.
    Logs one line per subject (logger ``msnet.simulate``).

    Parameters
    ----------
    sim : dict
        Simulation config (see :data:`SIM_DEFAULTS`).
    seed : int
        Master seed; subject draws use ``SeedSequence(seed, (2, study, subject))``.
    study_id : str
        One of :data:`STUDY_IDS`.
    out_dir : str or Path
        Dataset root (the directory of ``studies.tsv``).
    """
    cfg = study_config(sim_config(sim), study_id)
    grid = load_grid(cfg["resolution_mm"])
    study_dir = Path(out_dir) / f"study-{study_id}"
    rows, truth = [], []
    start = time.perf_counter()
    for row, sub in iter_study_subjects(cfg, seed, study_id):
        paths = subject_paths(study_dir, row["participant_id"], cfg["resolution_mm"])
        _write_subject(sub, grid, paths, cfg["tr"], study_id)
        mean_fd = float(np.nanmean(sub.confounds["framewise_displacement"]))
        truth.append(_truth_row(sub, grid, row, mean_fd))
        rows.append(row)
        logger.info(
            "study %s: subject %d %s (%s, mean FD %.2f mm) written, %.1f s elapsed",
            study_id, len(rows), row["participant_id"], row["group"], mean_fd,
            time.perf_counter() - start,
        )  # fmt: skip
    write_tsv(pd.DataFrame(truth), study_dir / "ground_truth_subjects.tsv", float_format="%.6g")
    _write_study_tables(study_dir, study_id, pd.DataFrame(rows))


# --------------------------------------------------------------------------- index


def write_dataset_index(sim: dict, seed: int, out_dir) -> None:
    """Write ``studies.tsv`` and ``ground_truth.json`` for the simulated dataset.

    ``studies.tsv`` paths (``fmriprep_dir``, ``participants_tsv``) are relative to the
    directory holding ``studies.tsv``. Does not need the studies to exist.

    ``ground_truth.json`` holds the seed, full config, per-study sizes and site, every
    planted finding (network, direction, published MNI coordinate, nearest in-mask voxel's
    coordinate, HC generating-map value there, mean effect, tau, per-study delta), the
    clinical effect (variable, slope, population mean/SD used for z) and the pattern of the
    per-subject truth files.

    Parameters
    ----------
    sim : dict
        Simulation config.
    seed : int
        Master seed.
    out_dir : str or Path
        Dataset root.
    """
    cfg = sim_config(sim)
    out_dir = Path(out_dir)
    sizes = group_sizes(cfg)
    ids = study_ids(cfg)
    studies = pd.DataFrame(
        {
            "study_id": ids,
            "fmriprep_dir": [f"study-{s}" for s in ids],
            "participants_tsv": [f"study-{s}/participants.tsv" for s in ids],
            "task": TASK,
            "space": SPACE,
            "site": [f"site{i + 1:02d}" for i in range(len(ids))],
        }
    )
    write_tsv(studies, out_dir / "studies.tsv")
    truth = {
        "seed": int(seed),
        "sim": cfg,
        "task": TASK,
        "space": SPACE,
        "studies": [
            {"study_id": s, "site": site, "n_ms": n_ms, "n_hc": n_hc,
             "site_additive": eff.additive, "site_multiplicative": eff.multiplicative}
            for s, site, (n_ms, n_hc), eff in zip(
                ids, studies["site"], sizes, site_effects(cfg, seed).itertuples()
            )
        ],
        "findings": _findings_truth(cfg, seed),
        "clinical": _clinical_truth(cfg),
        "edge_effect": {
            "networks": list(EDGE_EFFECT_NETWORKS),
            "correlation_ms": -float(cfg["edge_effect"]),
            "correlation_hc": 0.0,
            "model": "MS: SMN generating course = -r * DMN + sqrt(1 - r^2) * SMN, "
                     "r = edge_effect; lowers the FC of every DMN-SMN ROI pair",
        },
        "subjects_truth": "study-{study_id}/ground_truth_subjects.tsv",
        "subjects_truth_columns": {
            "amplitude_<network>": "subject amplitude a_sk (includes clinical_factor for "
            "analysis networks)",
            "map_<finding>": "generating map value of the finding's network at the voxel "
            "nearest the planted coordinate, times the amplitude (percent signal per unit "
            "network time course = signal_pct * value)",
            "clinical_factor": "1 + clinical_slope * z (MS; 1 for HC)",
            "high_motion": "simulated with large motion (QC should exclude: mean FD > 0.5)",
        },
    }
    write_json(truth, out_dir / "ground_truth.json")


def _findings_truth(cfg: dict, seed: int) -> list:
    """Planted findings with per-study effects and the HC map value at each location."""
    grid = load_grid(cfg["resolution_mm"])
    effects = plan_effects(cfg, seed)
    out = []
    for j, f in atlas.published_findings().iterrows():
        per_study = effects[effects["finding"] == f["finding"]]
        voxel = grid.finding_voxel[j]
        out.append(
            {
                "finding": f["finding"],
                "network": f["network"],
                "direction": int(f["direction"]),
                "label": f["label"],
                "mni": [float(f["x"]), float(f["y"]), float(f["z"])],
                "voxel_mni": [float(c) for c in grid.coords[voxel]],
                "hc_map_value": float(grid.base_maps[grid.finding_network[j], voxel]),
                "blob_sigma_mm": atlas.TEMPLATE_SIGMA_MM,
                "mean_effect": cfg["effect_size"],
                "tau": cfg["effect_tau"],
                "per_study_effect": dict(zip(per_study["study_id"], per_study["delta"])),
            }
        )
    return out


def _clinical_truth(cfg: dict) -> dict:
    """The planted clinical effect (none by default)."""
    mean, sd = clinical_population_moments()[cfg["clinical_variable"]]
    return {
        "variable": cfg["clinical_variable"],
        "slope": cfg["clinical_slope"],
        "networks": list(ANALYSIS_NETWORKS),
        "population_mean": mean,
        "population_sd": sd,
        "model": "MS amplitude of each analysis network *= max(0.05, 1 + slope * z), "
        "z = (value - population_mean) / population_sd",
    }
