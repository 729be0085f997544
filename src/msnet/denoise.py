"""Denoising of fMRIPrep BOLD runs with nilearn's semantics, at a few seconds per subject.

What is computed is what ``NiftiMasker(mask_img, smoothing_fwhm, detrend, high_pass,
low_pass, t_r, standardize_confounds).fit_transform(bold, confounds, sample_mask)`` computes
with the confounds and sample mask of ``nilearn.interfaces.fmriprep.load_confounds``
(before standardisation, which is left to the caller):

1. confound selection and the sample mask (non-steady-state volumes, scrubbing) are those
   of nilearn's ``load_confounds`` / ``load_confounds_strategy``, through a port tested
   against them (:func:`nilearn_load_confounds`);
2. spatial smoothing is nilearn's ``smooth_array`` (``gaussian_filter1d`` along x, y, z in
   float32, non-finite values set to 0), restricted to the mask's bounding box plus the
   kernel radius, which gives the same values at every in-mask voxel;
3. the temporal cleaning of ``nilearn.signal.clean`` (nilearn 0.13, ``extrapolate=False``):
   crop to the first..last kept volume, cubic-spline interpolation of censored volumes,
   detrend, 5th-order Butterworth filtering of signals and confounds (scipy's ``butter``
   and ``sosfiltfilt``, ported: :func:`_butter_sos`), censoring, z-scored confounds
   projected out through a pivoted QR (or, without filtering: censor, detrend, project).

These ports, and that of scipy's ``CubicSpline`` for the interpolation
(:func:`_cubic_spline`), keep nilearn's fMRIPrep interface (which imports scikit-learn),
``scipy.signal`` (scipy.stats) and ``scipy.interpolate`` (scipy.optimize) out of the subject
jobs: together over 1 s of CPU per job start-up, about a demo subject's whole work.

Why msnet does not just call nilearn (measured in ``benchmarks/bench_denoise.py``):
``NiftiMasker`` decompresses the ``.nii.gz`` more than once and holds several float copies
of the 4-D image (about 9 GB at 2 mm), and ``signal.clean`` runs the Butterworth filter voxel
by voxel (about 70 s). Every step of the temporal cleaning is linear in the signal and the
same for all voxels, so msnet applies it to the identity matrix once per run to obtain an
operator ``M`` (n_kept x n_volumes) and cleans every voxel with one matrix product. The BOLD
is streamed once from its gzip (``isal``), volume chunk by chunk, and smoothed and gathered on
the fly, so only the masked time series are held in memory.

Deliberate difference: nilearn 0.13.1's ``signal._interpolate_volumes`` indexes with
``~sample_mask`` on an *integer* index array (bitwise NOT = negative indices), so it only
interpolates the censored volumes whose mirror position ``n-1-i`` is kept, and leaves the
others at their raw value (and may keep censored edge volumes in the filtered segment).
msnet interpolates every censored volume, as nilearn documents (Lindquist et al. 2018).
Where no censored volume is affected (e.g. no censoring, or every censored volume's
mirror kept), the two agree to float32 precision; the tests check both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from msnet import ANALYSIS_NETWORKS
from msnet import qc as qcmod
from msnet.errors import MsnetInputError
from msnet.io.fmriprep import (
    MOTION_COLUMNS,
    SubjectFiles,
    open_bold,
    open_lesion_mask,
    open_mask,
    read_confounds,
    read_mask_data,
)
from msnet.qcpage import QcTraces, carpet_voxels

PRESET_STRATEGIES = ("simple", "scrubbing", "compcor", "ica_aroma")
"""nilearn ``load_confounds_strategy`` presets, used with nilearn's preset parameters."""

_EXPANSIONS = ("basic", "derivatives", "power2", "full")
_COMPCOR = ("anat_combined", "anat_separated", "temporal", "temporal_anat_combined",
            "temporal_anat_separated")

DEFAULT_OPTIONS = {
    "strategy": "custom",
    "motion": "full",
    "wm_csf": "basic",
    "global_signal": None,
    "compcor": None,
    "n_compcor": "all",
    "scrub": 5,
    "fd_threshold": 0.5,
    "std_dvars_threshold": 1.5,
    "detrend": True,
    "high_pass": 0.01,
    "low_pass": 0.08,
    "smoothing_fwhm": 6.0,
    "standardize_confounds": True,
    "multi_run": "first",
}
"""Denoising options (config section ``denoise``). The confound keys ``motion`` to
``std_dvars_threshold`` apply to ``strategy: custom``; presets use nilearn's values."""

BUTTERWORTH_ORDER = 5
"""nilearn's default Butterworth order."""

_CHUNK_BYTES = 64 * 2**20
_VOXEL_BLOCK = 8192


@dataclass
class CleanedBold:
    """Cleaned, masked BOLD of one subject.

    Attributes
    ----------
    data : numpy.ndarray or None
        (n_kept, n_voxels) float32, confounds regressed, filtered, censored volumes
        removed, NOT standardised; None when the subject could not be processed.
    mask_img : nibabel.Nifti1Image
        Analysis mask (brain mask(s) minus lesion voxels); columns of ``data`` are its
        voxels in C order.
    tr : float
        Repetition time (s).
    sample_mask : numpy.ndarray
        Indices of the kept volumes. With several runs, run ``r``'s indices are offset by
        the total number of volumes of runs ``0..r-1`` (indices into the concatenation of
        the original runs).
    qc : dict
        JSON-serialisable QC metrics (see :func:`clean_subject`).
    lesion_mask : numpy.ndarray or None
        Boolean over the brain-mask voxels (C order): those removed as lesion.
    voxel_mean : numpy.ndarray or None
        (n_voxels,) mean of the smoothed signal over the post-dummy volumes before cleaning
        (averaged over runs), for scaling to percent signal change; None when unprocessable.
    flat_voxels : numpy.ndarray or None
        (n_voxels,) bool over the analysis voxels: the raw (unsmoothed) BOLD is constant over
        the post-dummy volumes there (no signal: dropout, zero-filled or damaged data). Their
        connectivity maps are NaN (:mod:`msnet.connectivity`), so they never enter group
        statistics as values; ``qc`` records their number and percentage.
    qc_traces : msnet.qcpage.QcTraces or None
        FD, DVARS, censoring and a few hundred voxels' raw and cleaned series: what the
        subject's QC page draws (:mod:`msnet.qcpage`).
    runs : list of RunSignals
        Per run, the ROI means of the smoothed, not yet cleaned BOLD with the run's
        (completed) confounds table, when :func:`clean_subject` was given ``roi_membership``
        (else empty): what :func:`clean_signals` denoises again with other strategies.
    """

    data: np.ndarray | None
    mask_img: object
    tr: float
    sample_mask: np.ndarray
    qc: dict
    lesion_mask: np.ndarray | None = None
    voxel_mean: np.ndarray | None = None
    flat_voxels: np.ndarray | None = None
    qc_traces: object = None
    runs: list = field(default_factory=list)


@dataclass
class RunSignals:
    """One run's ROI signals before cleaning, with what cleaning them again needs.

    Attributes
    ----------
    raw : numpy.ndarray
        (n_volumes, n_rois) float64: the mean of the smoothed BOLD (before any temporal
        cleaning, dummy volumes included) over each ROI's voxels; NaN for an ROI without
        voxels.
    table : pandas.DataFrame
        The run's confounds, with FD and DVARS completed as the subject stage completed them.
    meta : dict or None
        The confounds JSON sidecar.
    source : Path
        The confounds TSV (for messages).
    n_dummy : int
        Non-steady-state volumes at the start of the run.
    """

    raw: np.ndarray
    table: object
    meta: dict | None
    source: Path
    n_dummy: int

    @property
    def columns(self) -> dict:
        """The confounds as column name -> float64 array (built once)."""
        if not hasattr(self, "_columns"):
            self._columns = confound_columns(self.table)
        return self._columns


@dataclass
class StrategySignals:
    """ROI signals of one subject cleaned with one denoising strategy (:func:`clean_signals`).

    Attributes
    ----------
    series : numpy.ndarray or None
        (n_kept, n_rois) float64, runs concatenated; None when no run could be cleaned.
    n_regressors : int
        Confound regressors projected out (the rank of each run's standardised confound
        matrix, summed over the usable runs).
    n_censored : int
        Post-dummy volumes the strategy removed (censoring), usable runs.
    n_volumes : int
        Post-dummy volumes of the usable runs.
    reason : str or None
        Why no run (or a run) could be cleaned.
    """

    series: np.ndarray | None
    n_regressors: int
    n_censored: int
    n_volumes: int
    reason: str | None = None

    @property
    def tdof_loss(self) -> int:
        """Temporal degrees of freedom lost: regressors + censored volumes (Parkes et al.
        2018; Ciric et al. 2017). Dummy volumes and the band-pass filter are not counted."""
        return self.n_regressors + self.n_censored


class _Unprocessable(Exception):
    """A run whose data cannot be cleaned (recorded as an exclusion, not raised)."""


def resolve_options(options=None) -> dict:
    """Merge ``options`` over :data:`DEFAULT_OPTIONS` and validate every value.

    Raises
    ------
    MsnetInputError
        Unknown key or invalid value, naming ``denoise.<key>`` and what is allowed.
    """
    opts = dict(DEFAULT_OPTIONS)
    for key, value in (options or {}).items():
        if key not in DEFAULT_OPTIONS:
            raise MsnetInputError(f"Unknown denoise option {key!r}; known: {sorted(DEFAULT_OPTIONS)}.")
        opts[key] = value

    def bad(key, allowed):
        return MsnetInputError(f"denoise.{key} must be {allowed}, got {opts[key]!r}.")

    def number(key, low=0.0, allow_none=False):
        value = opts[key]
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > low:
            raise bad(key, f"a number > {low}" + (" or null" if allow_none else ""))

    choices = {
        "strategy": ("custom",) + PRESET_STRATEGIES,
        "motion": _EXPANSIONS + (None,),
        "wm_csf": _EXPANSIONS + (None,),
        "global_signal": _EXPANSIONS + (None,),
        "compcor": _COMPCOR + (None,),
        "multi_run": ("first", "concatenate"),
    }
    for key, allowed in choices.items():
        if opts[key] not in allowed:
            raise bad(key, f"one of {list(allowed)}")
    for key in ("detrend", "standardize_confounds"):
        if not isinstance(opts[key], bool):
            raise bad(key, "true or false")
    n_comp = opts["n_compcor"]
    if n_comp != "all" and (isinstance(n_comp, bool) or not isinstance(n_comp, int) or n_comp < 1):
        raise bad("n_compcor", "'all' or an integer >= 1")
    scrub = opts["scrub"]
    if scrub is not None and (isinstance(scrub, bool) or not isinstance(scrub, int) or scrub < 0):
        raise bad("scrub", "null (no scrubbing) or an integer >= 0 (minimum segment length)")
    number("fd_threshold")
    number("std_dvars_threshold")
    number("high_pass", allow_none=True)
    number("low_pass", allow_none=True)
    number("smoothing_fwhm", low=-1e-12, allow_none=True)
    if opts["high_pass"] is not None and opts["low_pass"] is not None and opts["high_pass"] >= opts["low_pass"]:
        raise MsnetInputError(
            f"denoise.high_pass ({opts['high_pass']} Hz) must be below denoise.low_pass ({opts['low_pass']} Hz)."
        )
    return opts


# --------------------------------------------------------------------------- confounds


def _custom_load_kwargs(opts: dict) -> dict:
    """``load_confounds`` keyword arguments for ``strategy: custom``."""
    strategy = [c for c in ("motion", "wm_csf", "global_signal") if opts[c]]
    if opts["compcor"]:
        strategy += ["high_pass", "compcor"]  # nilearn: fMRIPrep's CompCor needs its cosines
    if opts["scrub"] is not None:
        strategy.append("scrub")
    return {
        "strategy": tuple(strategy),
        "motion": opts["motion"] or "full",
        "wm_csf": opts["wm_csf"] or "basic",
        "global_signal": opts["global_signal"] or "basic",
        "compcor": opts["compcor"] or "anat_combined",
        "n_compcor": opts["n_compcor"],
        "scrub": opts["scrub"] or 0,
        "fd_threshold": opts["fd_threshold"],
        "std_dvars_threshold": opts["std_dvars_threshold"],
        "demean": True,
    }


def select_confounds(table, meta, opts: dict, source: Path):
    """Select confounds and build the sample mask as nilearn's ``load_confounds`` does.

    The selection is :func:`nilearn_load_confounds`, a port of nilearn 0.13's
    ``load_confounds`` / ``load_confounds_strategy`` applied to the harmonised table (see
    :func:`msnet.io.fmriprep.read_confounds`), so legacy tables and recomputed FD/DVARS go
    through the same rules as current ones; the tests check it against nilearn's own
    functions on the same tables.

    Parameters
    ----------
    table : pandas.DataFrame or dict
        Harmonised confounds (with ``framewise_displacement`` and ``std_dvars``), or the same
        as column name -> float64 array (:func:`confound_columns`; faster when one table is
        selected from several times).
    meta : dict or None
        Companion JSON (CompCor metadata).
    opts : dict
        Resolved denoise options.
    source : Path
        The original TSV, for error messages.

    Returns
    -------
    confounds : numpy.ndarray or None
        (n_volumes, n_regressors) float64, demeaned over the kept volumes.
    names : list of str
        Regressor names.
    sample_mask : numpy.ndarray
        Indices of the kept volumes (all volumes when nothing is removed).
    """
    _check_compcor_sidecar(meta, opts, source)
    columns = confound_columns(table)
    try:
        conf, sample_mask = nilearn_load_confounds(columns, meta, load_confounds_kwargs(opts))
    except (KeyError, ValueError) as exc:
        raise MsnetInputError(
            f"Confounds table {source} lacks what denoise strategy {opts['strategy']!r} needs: "
            f"{exc.args[0] if exc.args else exc} Pick a strategy/option the table supports "
            "(e.g. compcor needs fMRIPrep >= 1.4)."
        ) from exc
    n = len(next(iter(columns.values()))) if columns else 0
    sample_mask = np.arange(n) if sample_mask is None else np.asarray(sample_mask, dtype=int)
    if conf is None or conf.shape[1] == 0:
        return None, [], sample_mask
    _check_finite_confounds(conf, columns, opts, source)
    return conf.to_numpy(dtype=float), list(conf.columns), sample_mask


def confound_columns(table) -> dict:
    """A confounds table as column name -> float64 array (a dict is returned as it is)."""
    if isinstance(table, dict):
        return table
    return {c: table[c].to_numpy(dtype=np.float64) for c in table.columns}


def nilearn_load_confounds(table, meta, kwargs: dict):
    """nilearn 0.13's ``load_confounds`` on an in-memory fMRIPrep confounds table.

    A port of what ``nilearn.interfaces.fmriprep.load_confounds(img, **kwargs)`` does once
    it has read the table and its JSON sidecar (``_load_single_confounds_file``): the
    non-steady-state columns, each component of ``kwargs["strategy"]`` (motion, wm_csf,
    global_signal with their expansions; fMRIPrep's cosines for high_pass; CompCor columns
    chosen from the sidecar; ICA-AROMA regressors for ``ica_aroma: basic``; scrubbing
    outliers with nilearn's segment rule), the sample mask from the outlier columns,
    regressors sorted by name, n/a in the first row filled from the second, and demeaning
    over the kept volumes. Ported because importing nilearn's fMRIPrep interface costs a
    subject job about 1 s of CPU (it imports scikit-learn, and through it scipy.stats) for
    column selection; the tests check it against nilearn's own function on the same tables.
    What nilearn refuses is refused the same way: ``ValueError`` listing the missing
    components, ``KeyError`` for a partial set (:func:`check_confounds_columns` says both
    earlier, in msnet's words).

    Parameters
    ----------
    table : pandas.DataFrame or dict
        Harmonised confounds table (or :func:`confound_columns` of it).
    meta : dict or None
        Its JSON sidecar.
    kwargs : dict
        ``load_confounds`` arguments (:func:`load_confounds_kwargs`).

    Returns
    -------
    confounds : pandas.DataFrame or None
        None when the strategy is empty (as nilearn).
    sample_mask : numpy.ndarray or None
        None when no volume is removed (as nilearn).
    """
    import pandas as pd

    kwargs = {**_LOAD_CONFOUNDS_DEFAULTS, **kwargs}
    strategy = tuple(kwargs["strategy"])
    # numpy columns instead of nilearn's DataFrame operations (the same selection and values;
    # a subject's QC-FC strategies select confounds several times, msnet.qcfc)
    raw = confound_columns(table)
    selected = [c for c in raw if "non_steady_state" in c]  # names, in nilearn's frame order
    extra = {}  # scrubbing regressors
    missing_params, missing_keywords = [], []

    def found(params):  # nilearn's check_params_confounds: False, True or the absent ones
        absent = [c for c in params if c not in raw]
        return False if len(absent) == len(params) else (absent or True)

    for component in strategy:
        if component in ("motion", "wm_csf", "global_signal", "compcor"):
            if component == "compcor":
                params, problem = _compcor_columns(meta or {}, kwargs["compcor"], kwargs["n_compcor"])
                if problem:  # nilearn fails looking the Mask up
                    raise KeyError(problem)
            else:
                base = {"motion": list(MOTION_COLUMNS), "wm_csf": ["csf", "white_matter"],
                        "global_signal": ["global_signal"]}[component]
                params = base + [f"{b}_{x}" for b in base for x in _SUFFIXES[kwargs[component]]]
            check = found(params)
            if component == "motion" and isinstance(check, list):
                missing_params += check
            elif isinstance(check, list):  # a partial set: pandas' KeyError in nilearn
                raise KeyError(f"{check} not in index")
            elif check:
                selected += params
            else:
                missing_keywords.append(component)
        elif component == "high_pass":
            selected += [c for c in raw if "cosine" in c]
        elif component == "ica_aroma":
            if kwargs["ica_aroma"] == "basic":
                aroma = [c for c in raw if "aroma" in c]
                if aroma:
                    selected += aroma
                else:
                    missing_keywords.append(component)
        elif component == "scrub":
            extra = _scrub_regressors(raw, kwargs["scrub"], kwargs["fd_threshold"],
                                      kwargs["std_dvars_threshold"])
            selected += list(extra)
        else:
            raise ValueError(f"unknown confound component {component!r}")
    if missing_params or missing_keywords:
        raise ValueError(f"The following keywords or parameters are missing: {missing_params} "
                         f"{missing_keywords}. You may want to try a different denoising strategy.")
    columns = {**raw, **extra}
    outlier_cols = sorted({c for c in selected if "motion_outlier" in c or "non_steady_state" in c})
    keep_cols = sorted(set(selected) - set(outlier_cols))
    sample_mask = None
    n = len(next(iter(raw.values()))) if raw else 0
    if outlier_cols:
        # nilearn: outliers.T.drop_duplicates().T, then the rows summing to 0 (NaN skipped)
        outliers = np.column_stack([columns[c] for c in selected if c in outlier_cols])
        sample_mask = np.where(np.nansum(np.unique(outliers, axis=1), axis=1) == 0)[0]
    names = [c for c in keep_cols for _ in range(selected.count(c))]  # pandas .loc keeps repeats
    values = (np.column_stack([columns[c] for c in names]) if names
              else np.zeros((n, 0))).astype(np.float64, copy=True)
    if values.size != 0:
        first_na = np.isnan(values[0, :])
        values[0, first_na] = values[1, first_na]
        if sample_mask is None:  # sklearn.preprocessing.scale(with_std=False)
            values -= np.nanmean(values, axis=0)
            residual = np.nanmean(values, axis=0)
            if not np.allclose(residual, 0):
                values -= residual
        elif sample_mask.size:
            values -= np.nanmean(values[sample_mask], axis=0)
        else:  # every volume censored: pandas' mean of no rows is NaN (cleaning then stops)
            values[:] = np.nan
    confounds = pd.DataFrame(values, columns=names)
    return (None if not strategy else confounds), sample_mask


_LOAD_CONFOUNDS_DEFAULTS = {
    "motion": "full", "scrub": 5, "fd_threshold": 0.5, "std_dvars_threshold": 1.5, "wm_csf": "basic",
    "global_signal": "basic", "compcor": "anat_combined", "n_compcor": "all", "ica_aroma": "full",
}
"""Defaults of nilearn 0.13's ``load_confounds`` arguments."""


def _scrub_regressors(raw: dict, scrub: int, fd_threshold: float,
                      std_dvars_threshold: float) -> dict:
    """nilearn's ``_load_scrub``: one-hot ``motion_outlier_<k>`` columns of the censored
    volumes (FD or standardised DVARS above threshold, then segments shorter than ``scrub``
    volumes and the run's short ends), as name -> array."""
    n_scans = len(raw["framewise_displacement"])
    with np.errstate(invalid="ignore"):
        fd = np.where(raw["framewise_displacement"] > fd_threshold)[0]
        dvars = np.where(raw["std_dvars"] > std_dvars_threshold)[0]
    index = np.sort(np.unique(np.concatenate((fd, dvars))))
    if scrub > 0 and len(index) > 0:
        index = _optimize_scrub(index, n_scans, scrub)
    out = {}
    for k, volume in enumerate(index):
        column = np.zeros(n_scans)
        column[volume] = 1.0
        out[f"motion_outlier_{k}"] = column
    return out


def _optimize_scrub(index: np.ndarray, n_scans: int, scrub: int) -> np.ndarray:
    """nilearn's ``optimize_scrub``: add segments shorter than ``scrub`` between or around
    the outliers."""
    if index[0] < scrub:
        index = np.asarray(list(range(index[0])) + list(index))
    if n_scans - (index[-1] + 1) < scrub:
        index = np.asarray(list(index) + list(range(index[-1], n_scans)))
    gaps = np.diff(index)
    for k in np.where(np.logical_and(gaps > 1, gaps < scrub + 1))[0]:
        index = np.asarray(list(index) + list(range(index[k] + 1, index[k + 1])))
    return np.sort(np.unique(index))


def _check_compcor_sidecar(meta, opts: dict, source) -> None:
    """CompCor components are chosen from the confounds JSON sidecar: say when it is missing
    (rather than letting nilearn read an empty one and blame the table's fMRIPrep version)."""
    uses_compcor = opts["strategy"] == "compcor" or (opts["strategy"] == "custom"
                                                       and bool(opts["compcor"]))
    if uses_compcor and meta is None:
        raise MsnetInputError(
            f"denoise strategy {opts['strategy']!r} uses CompCor, which needs the confounds "
            f"JSON sidecar {Path(source).with_suffix('.json')} (fMRIPrep writes it beside the "
            "TSV with each component's mask and variance), and it is missing. Copy it from the "
            "fMRIPrep output, or choose a strategy without CompCor (denoise.compcor: null)."
        )


def _check_finite_confounds(conf, table, opts: dict, source: Path) -> None:
    """Refuse selected regressors holding n/a beyond what fMRIPrep writes (the first row of
    derivative columns, which nilearn fills from the second): a regressor with missing values
    cannot be projected out (and would fail deep inside the interpolation)."""
    table = confound_columns(table)
    bad = [c for c in conf.columns if c in table and np.isnan(table[c][1:]).any()]
    if not bad:
        return
    details = []
    for col in bad[:5]:
        na = np.flatnonzero(np.isnan(table[col]))
        n_rows = len(table[col])
        where = (f"in all {n_rows} rows" if na.size == n_rows else
                 f"at volume(s) {', '.join(map(str, na[:10]))}" + (" ..." if na.size > 10 else ""))
        details.append(f"'{col}' is n/a {where}")
    raise MsnetInputError(
        f"Confounds table {source}: regressor(s) that denoise strategy {opts['strategy']!r} "
        f"uses hold n/a: {'; '.join(details)}"
        + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else "")
        + ". fMRIPrep writes n/a only in the first row of derivative columns; re-run fMRIPrep "
        "for this subject, or choose a strategy that does not use these columns."
    )


NILEARN_PRESETS = {
    "simple": {"strategy": ("high_pass", "motion", "wm_csf"), "motion": "full", "wm_csf": "basic"},
    "scrubbing": {"strategy": ("high_pass", "motion", "wm_csf", "scrub"), "motion": "full",
                  "wm_csf": "full", "scrub": 5, "fd_threshold": 0.5, "std_dvars_threshold": 1.5},
    "compcor": {"strategy": ("high_pass", "motion", "compcor"), "motion": "full",
                "n_compcor": "all", "compcor": "anat_combined"},
    "ica_aroma": {"strategy": ("high_pass", "wm_csf", "ica_aroma"), "wm_csf": "basic",
                  "ica_aroma": "full"},
}
"""The confound parameters of nilearn's ``load_confounds_strategy`` presets (nilearn 0.13;
the tests check them against nilearn's own table)."""

_COMPCOR_PREFIXES = {"temporal_anat_combined": "ta", "temporal_anat_separated": "tawc",
                     "temporal": "t", "anat_combined": "a", "anat_separated": "awc"}
_SUFFIXES = {"basic": (), "derivatives": ("derivative1",), "power2": ("power2",),
             "full": ("derivative1", "power2", "derivative1_power2")}


def confound_counts(opts: dict) -> dict:
    """Regressors of each confound set a custom strategy uses, in order: ``motion``,
    ``wm_csf``, ``global_signal`` (base signals times the expansion's terms) and ``compcor``
    (``n_compcor``); sets it does not use are left out (for the methods text and labels)."""
    base = {"motion": 6, "wm_csf": 2, "global_signal": 1}
    counts = {k: n * (1 + len(_SUFFIXES[opts[k]])) for k, n in base.items() if opts[k]}
    if opts["compcor"]:
        counts["compcor"] = opts["n_compcor"]
    return counts


def load_confounds_kwargs(opts: dict) -> dict:
    """The confound selection of resolved denoise options, as ``load_confounds`` arguments."""
    if opts["strategy"] == "custom":
        return _custom_load_kwargs(opts)
    return dict(NILEARN_PRESETS[opts["strategy"]])


def check_confounds_columns(columns, meta, opts: dict, source) -> None:
    """Check that a confounds table has every column the denoise strategy selects.

    The same rules as nilearn's ``load_confounds`` (which :func:`select_confounds` then applies),
    applied to the column names alone: the preflight (:mod:`msnet.io.preflight`) checks
    thousands of tables from their header line, and importing nilearn's fMRIPrep interface
    costs seconds (it pulls in scikit-learn). Columns msnet fills in itself count as present:
    the derivative/power expansions (:func:`msnet.io.fmriprep.read_confounds`), and
    ``framewise_displacement``/``dvars``/``std_dvars`` (computed from the motion parameters and
    the data). Unlike nilearn, a partial set (``csf`` without ``white_matter``) is reported
    here rather than failing inside pandas with a KeyError.

    Parameters
    ----------
    columns : iterable of str
        Harmonised column names of the table.
    meta : dict or None
        Its JSON sidecar (CompCor metadata).
    opts : dict
        Resolved denoise options.
    source : str or Path
        The table, for the message.

    Raises
    ------
    MsnetInputError
        Naming the table, the strategy and every missing column or component.
    """
    from msnet.io.fmriprep import EXPANDABLE_COLUMNS

    _check_compcor_sidecar(meta, opts, source)
    kwargs = load_confounds_kwargs(opts)
    have = set(columns) | {"framewise_displacement", "dvars", "std_dvars"}
    have |= {f"{c}_{suffix}" for c in EXPANDABLE_COLUMNS if c in have for suffix in _SUFFIXES["full"]}
    missing = []

    def need(params, keyword):
        absent = [p for p in params if p not in have]
        if params and len(absent) < len(params):
            missing.extend(absent)
        elif absent or not params:
            missing.append(f"the {keyword} regressors ({', '.join(params) or 'none selected'})")

    for component in kwargs["strategy"]:
        if component in ("motion", "wm_csf", "global_signal"):
            base = {"motion": list(MOTION_COLUMNS), "wm_csf": ["csf", "white_matter"],
                    "global_signal": ["global_signal"]}[component]
            need(base + [f"{b}_{x}" for x in _SUFFIXES[kwargs[component]] for b in base], component)
        elif component == "compcor":
            columns_meta, problem = _compcor_columns(meta or {}, kwargs["compcor"], kwargs["n_compcor"])
            if problem:
                missing.append(problem)
            elif not columns_meta:
                missing.append(f"the {kwargs['compcor']} CompCor components (the confounds JSON "
                               "sidecar lists none)")
            else:
                need(columns_meta, "compcor")
        elif component == "ica_aroma" and kwargs.get("ica_aroma") == "basic":
            if not any("aroma" in c for c in have):
                missing.append("the ICA-AROMA regressors (aroma_motion_*)")
    if missing:
        raise MsnetInputError(
            f"Confounds table {source} lacks what denoise strategy {opts['strategy']!r} needs: "
            f"{'; '.join(missing)}. Pick a strategy/option the table supports (e.g. compcor "
            "needs fMRIPrep >= 1.4 and its confounds JSON sidecar), or copy the complete table."
        )


def _compcor_columns(meta: dict, compcor: str, n_compcor) -> tuple[list, str | None]:
    """The CompCor columns nilearn's ``find_compcor`` selects from the confounds JSON."""
    parts = compcor.split("_")
    masks = {"combined": ["combined"], "separated": ["WM", "CSF"]}.get(parts[-1]) if len(parts) > 1 else None
    selected = []
    for prefix in _COMPCOR_PREFIXES[compcor]:
        n_all = sum(f"{prefix}_comp_cor" in key for key in meta)
        names = [f"{prefix}_comp_cor_{i:02d}" for i in range(n_all)]
        groups = [names]
        if prefix == "a":
            lacking = [n for n in names if not isinstance(meta.get(n), dict)
                       or not isinstance(meta[n].get("Mask"), str)]
            if lacking:
                return [], (f"the Mask of {lacking[0]} in the confounds JSON sidecar (its "
                            "a_comp_cor entries must be numbered from 00 with a Mask each)")
            groups = [[n for n in names if meta[n]["Mask"] in mask] for mask in masks]
        for group in groups:
            selected += group if n_compcor == "all" or n_compcor >= len(group) else group[:n_compcor]
    return selected, None


def _dummy_count(table) -> int:
    cols = [c for c in table.columns if c.startswith("non_steady_state_outlier")]
    return int((table[cols].fillna(0).to_numpy().sum(axis=1) > 0).sum()) if cols else 0


# ---------------------------------------------------------------- temporal operator


@lru_cache(maxsize=32)
def _butterworth_sos(tr: float, high_pass, low_pass):
    """Second-order sections of nilearn's Butterworth filter (None: no filtering).

    Cut-offs at or above Nyquist are lowered just below it and negative ones raised to
    ~0, as ``nilearn.signal._check_wn`` does. The sections are those of
    ``scipy.signal.butter(N=5, Wn, btype, output="sos", fs)`` (:func:`_butter_sos`).
    """
    if high_pass is None and low_pass is None:
        return None
    fs = 1.0 / tr
    nyq = fs / 2.0
    eps = np.finfo(np.float32).eps

    def check(freq):
        if freq >= nyq:
            return nyq - nyq * 10 * eps
        return nyq * eps if freq < 0 else freq

    freqs = [check(f) for f in (high_pass, low_pass) if f is not None]
    if len(freqs) == 2:
        if freqs[0] == freqs[1]:
            return None
        btype, wn = "band", freqs
    else:
        btype, wn = ("high" if high_pass is not None else "low"), freqs[0]
    sos = _butter_sos(BUTTERWORTH_ORDER, wn, btype, fs)
    sos.flags.writeable = False  # cached: shared by every call with these arguments
    return sos


# Butterworth design and zero-phase filtering: ports of scipy.signal's butter (second-order
# sections, "nearest" pairing) and sosfiltfilt (odd padding, steady-state initial
# conditions), equal to scipy's to rounding (tested). Importing scipy.signal costs a subject
# job about 0.8 s of CPU (it loads scipy.stats, scipy.optimize, ...) for a few dozen lines of
# arithmetic on a 5th-order filter.


def _butter_sos(order: int, wn, btype: str, fs: float) -> np.ndarray:
    """``scipy.signal.butter(order, wn, btype, output="sos", fs=fs)`` for a digital filter."""
    wn = np.atleast_1d(np.asarray(wn, dtype=np.float64)) / (fs / 2)
    if np.any(wn <= 0) or np.any(wn >= 1) or (wn.size == 2 and not wn[0] < wn[1]):
        raise ValueError(f"Butterworth critical frequencies must be 0 < Wn < fs/2, got {wn * fs / 2}")
    m = np.arange(-order + 1, order, 2, dtype=np.float64)
    zeros, poles, gain = np.zeros(0), -np.exp(1j * np.pi * m / (2 * order)), 1.0  # buttap
    warped = 2 * 2.0 * np.tan(np.pi * wn / 2.0)  # bilinear pre-warping at fs = 2
    degree = len(poles) - len(zeros)
    if btype == "low":
        zeros, poles, gain = warped[0] * zeros, warped[0] * poles, gain * warped[0] ** degree
    elif btype == "high":
        gain = gain * np.real(np.prod(-zeros) / np.prod(-poles))
        zeros = np.concatenate((warped[0] / zeros, np.zeros(degree)))
        poles = warped[0] / poles
    elif btype == "band":
        bw, wo = warped[1] - warped[0], np.sqrt(warped[0] * warped[1])
        z_lp = (zeros * bw / 2).astype(np.complex128)
        p_lp = (poles * bw / 2).astype(np.complex128)
        zeros = np.concatenate((z_lp + np.sqrt(z_lp**2 - wo**2), z_lp - np.sqrt(z_lp**2 - wo**2),
                                np.zeros(degree)))
        poles = np.concatenate((p_lp + np.sqrt(p_lp**2 - wo**2), p_lp - np.sqrt(p_lp**2 - wo**2)))
        gain = gain * bw**degree
    else:
        raise ValueError(f"btype must be low, high or band, got {btype!r}")
    fs2 = 2.0 * 2.0  # bilinear transform at fs = 2
    degree = len(poles) - len(zeros)
    gain = gain * np.real(np.prod(fs2 - zeros) / np.prod(fs2 - poles))
    zeros = np.concatenate(((fs2 + zeros) / (fs2 - zeros), -np.ones(degree)))
    poles = (fs2 + poles) / (fs2 - poles)
    return _zpk2sos_nearest(zeros, poles, gain)


def _cplxreal(z):
    """scipy.signal's ``_cplxreal``: complex roots (one of each conjugate pair), real roots."""
    z = np.atleast_1d(z)
    if z.size == 0:
        return z, z
    tol = 100 * np.finfo((1.0 * z).dtype).eps
    z = z[np.lexsort((abs(z.imag), z.real))]
    real = abs(z.imag) <= tol * abs(z)
    zr = z[real].real
    if len(zr) == len(z):
        return np.array([]), zr
    z = z[~real]
    zp, zn = z[z.imag > 0], z[z.imag < 0]
    if len(zp) != len(zn):
        raise ValueError("Array contains complex value with no matching conjugate.")
    same_real = np.diff(zp.real) <= tol * abs(zp[:-1])
    diffs = np.diff(np.concatenate(([0], same_real, [0])))
    for start, stop in zip(np.nonzero(diffs > 0)[0], np.nonzero(diffs < 0)[0] + 1):
        for chunk in (zp[start:stop], zn[start:stop]):
            chunk[...] = chunk[np.lexsort([abs(chunk.imag)])]
    if any(abs(zp - zn.conj()) > tol * abs(zn)):
        raise ValueError("Array contains complex value with no matching conjugate.")
    return (zp + zn.conj()) / 2, zr


def _nearest_idx(fro, to, which):
    order = np.argsort(np.abs(fro - to))
    if which == "any":
        return order[0]
    mask = np.isreal(fro[order])
    return order[np.nonzero(mask if which == "real" else ~mask)[0][0]]


def _single_sos(z, p):
    sos = np.zeros(6)
    b, a = np.poly(z), np.poly(p)
    sos[3 - len(b):3] = b
    sos[6 - len(a):6] = a
    return sos


def _zpk2sos_nearest(z, p, k) -> np.ndarray:
    """scipy.signal's ``zpk2sos(z, p, k, pairing="nearest")`` for a digital filter."""
    p = np.concatenate((p, np.zeros(max(len(z) - len(p), 0))))
    z = np.concatenate((z, np.zeros(max(len(p) - len(z), 0))))
    n_sections = (max(len(p), len(z)) + 1) // 2
    if len(p) % 2 == 1:
        p, z = np.concatenate((p, [0.0])), np.concatenate((z, [0.0]))
    z = np.concatenate(_cplxreal(z))
    p = np.concatenate(_cplxreal(p))
    sos = np.zeros((n_sections, 6))

    def idx_worst(values):
        return np.argmin(np.abs(1 - np.abs(values)))

    for si in range(n_sections - 1, -1, -1):
        p1_idx = idx_worst(p)
        p1 = p[p1_idx]
        p = np.delete(p, p1_idx)
        if np.isreal(p1) and np.isreal(p).sum() == 0:
            z1_idx = _nearest_idx(z, p1, "real")
            z1 = z[z1_idx]
            z = np.delete(z, z1_idx)
            sos[si] = _single_sos([z1, 0], [p1, 0])
        elif (len(p) + 1 == len(z) and not np.isreal(p1) and np.isreal(p).sum() == 1
              and np.isreal(z).sum() == 1):
            z1_idx = _nearest_idx(z, p1, "complex")
            z1 = z[z1_idx]
            z = np.delete(z, z1_idx)
            sos[si] = _single_sos([z1, z1.conj()], [p1, p1.conj()])
        else:
            if np.isreal(p1):
                real_idx = np.flatnonzero(np.isreal(p))
                p2_idx = real_idx[idx_worst(p[real_idx])]
                p2 = p[p2_idx]
                p = np.delete(p, p2_idx)
            else:
                p2 = p1.conj()
            if len(z) > 0:
                z1_idx = _nearest_idx(z, p1, "any")
                z1 = z[z1_idx]
                z = np.delete(z, z1_idx)
                if not np.isreal(z1):
                    sos[si] = _single_sos([z1, z1.conj()], [p1, p2])
                elif len(z) > 0:
                    z2_idx = _nearest_idx(z, p1, "real")
                    z2 = z[z2_idx]
                    z = np.delete(z, z2_idx)
                    sos[si] = _single_sos([z1, z2], [p1, p2])
                else:
                    sos[si] = _single_sos([z1], [p1, p2])
            else:
                sos[si] = _single_sos([], [p1, p2])
    sos[0][:3] *= np.real(k)
    return sos


def _sosfilt_zi(sos: np.ndarray) -> np.ndarray:
    """scipy.signal's ``sosfilt_zi``: steady-state section states for a unit step."""
    zi = np.empty((sos.shape[0], 2))
    scale = 1.0
    for section, (b, a) in enumerate(zip(sos[:, :3], sos[:, 3:])):
        b, a = b / a[0], a / a[0]
        companion = np.zeros((2, 2))  # scipy.linalg.companion(a)
        companion[0] = -a[1:] / a[0]
        companion[1, 0] = 1.0
        zi[section] = scale * np.linalg.solve(np.eye(2) - companion.T, b[1:] - a[1:] * b[0])
        scale *= b.sum() / a.sum()
    return zi


def _sosfilt(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> np.ndarray:
    """Cascade of second-order sections (direct form II transposed) along axis 0 of ``x``.

    ``zi`` is (n_sections, 2, n_columns); the arithmetic per column is scipy's ``_sosfilt``.
    """
    zi = zi.copy()
    y = np.empty_like(x)
    b0, b1, b2, a1, a2 = (sos[:, k, None] for k in (0, 1, 2, 4, 5))
    for n in range(x.shape[0]):
        cur = x[n]
        for s in range(sos.shape[0]):
            new = b0[s] * cur + zi[s, 0]
            zi[s, 0] = b1[s] * cur - a1[s] * new + zi[s, 1]
            zi[s, 1] = b2[s] * cur - a2[s] * new
            cur = new
        y[n] = cur
    return y


def _cubic_spline(knots: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``scipy.interpolate.CubicSpline(knots, values)(at)`` (not-a-knot ends) inside the knots.

    A port of scipy's construction (slopes from its banded system, Hermite coefficients,
    power-sum evaluation), equal to rounding (tested); importing scipy.interpolate costs a
    subject job about 0.3 s of CPU (it loads scipy.optimize).
    """
    from scipy.linalg import solve, solve_banded

    x = np.asarray(knots, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64).reshape(len(x), -1)
    n = len(x)
    dx = np.diff(x)
    dxr = dx[:, None]
    slope = np.diff(y, axis=0) / dxr
    if n == 2:
        s = np.vstack([slope[0], slope[0]])
    elif n == 3:
        a = np.array([[1.0, 1.0, 0.0], [dx[1], 2 * (dx[0] + dx[1]), dx[0]], [0.0, 1.0, 1.0]])
        b = np.stack([2 * slope[0], 3 * (dxr[0] * slope[1] + dxr[1] * slope[0]), 2 * slope[1]])
        s = solve(a, b, overwrite_a=True, overwrite_b=True, check_finite=False)
    else:
        a = np.zeros((3, n))
        b = np.empty((n, y.shape[1]))
        a[1, 1:-1] = 2 * (dx[:-1] + dx[1:])
        a[0, 2:] = dx[:-1]
        a[-1, :-2] = dx[1:]
        b[1:-1] = 3 * (dxr[1:] * slope[:-1] + dxr[:-1] * slope[1:])
        a[1, 0], a[0, 1] = dx[1], x[2] - x[0]
        d = x[2] - x[0]
        b[0] = ((dxr[0] + 2 * d) * dxr[1] * slope[0] + dxr[0] ** 2 * slope[1]) / d
        a[1, -1], a[-1, -2] = dx[-2], x[-1] - x[-3]
        d = x[-1] - x[-3]
        b[-1] = (dxr[-1] ** 2 * slope[-2] + (2 * d + dxr[-1]) * dxr[-2] * slope[-1]) / d
        s = solve_banded((1, 1), a, b, overwrite_ab=True, overwrite_b=True, check_finite=False)
    t = (s[:-1] + s[1:] - 2 * slope) / dxr
    coef = (t / dxr, (slope - s[:-1]) / dxr - t, s[:-1], y[:-1])  # highest power first
    at = np.asarray(at, dtype=np.float64)
    i = np.clip(np.searchsorted(x, at, side="right") - 1, 0, n - 2)
    h = (at - x[i])[:, None]
    out, z = np.zeros((len(at), y.shape[1])), np.ones_like(h)
    for k in range(3, -1, -1):  # scipy's PPoly evaluation: sum of c_k * h**power
        out = out + coef[k][i] * z
        if k:
            z = z * h
    return out.reshape((len(at),) + np.shape(values)[1:])


def _filtfilt_matrix(sos: np.ndarray, n: int) -> np.ndarray:
    """``F`` (n x n) with ``F @ x == _sosfiltfilt(sos, x)`` for any (n, k) ``x`` (to rounding).

    Cached: the subjects of a study mostly share TR and run length, and a job processes
    several of them.
    """
    return _filtfilt_matrix_cached(np.ascontiguousarray(sos, dtype=np.float64).tobytes(), sos.shape[0], n)


@lru_cache(maxsize=16)
def _filtfilt_matrix_cached(sos_bytes: bytes, n_sections: int, n: int) -> np.ndarray:
    out = _sosfiltfilt(np.frombuffer(sos_bytes).reshape(n_sections, 6), np.eye(n))
    out.flags.writeable = False
    return out


def _sosfiltfilt(sos: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``scipy.signal.sosfiltfilt(sos, x, axis=0)`` (odd padding of :func:`_filter_edge`)."""
    x = np.asarray(x, dtype=np.float64)
    edge = _filter_edge(sos)
    if x.shape[0] <= edge:
        raise ValueError(f"The length of the input vector x must be greater than padlen, which is {edge}.")
    ext = np.concatenate((2 * x[:1] - x[edge:0:-1], x, 2 * x[-1:] - x[-2:-(edge + 2):-1]))
    zi = _sosfilt_zi(sos)[:, :, None]
    y = _sosfilt(sos, ext, zi * ext[0])
    y = _sosfilt(sos, y[::-1], zi * y[-1])
    return y[::-1][edge:-edge]


def _filter_edge(sos) -> int:
    """Padding length scipy's ``sosfiltfilt`` uses; a series must be longer than it."""
    ntaps = 2 * sos.shape[0] + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum())
    return 3 * int(ntaps)


def _detrend(x: np.ndarray) -> np.ndarray:
    """Remove mean and linear trend per column (``nilearn.signal._detrend``)."""
    x = x - x.mean(axis=0)
    ramp = np.arange(x.shape[0], dtype=float)
    ramp -= ramp.mean()
    norm = np.sqrt((ramp**2).sum())
    if norm > np.finfo(np.float64).eps:
        ramp /= norm
    return x - np.outer(ramp, ramp @ x)


def cleaning_operator(
    n_volumes: int,
    sample_mask: np.ndarray,
    confounds: np.ndarray | None,
    tr: float,
    detrend: bool = True,
    high_pass=None,
    low_pass=None,
    standardize_confounds: bool = True,
    info: dict | None = None,
) -> np.ndarray:
    """Matrix ``M`` such that ``M @ signals`` is ``nilearn.signal.clean(signals, ...)``.

    Applies nilearn 0.13's cleaning (``filter="butterworth"``, ``extrapolate=False``,
    ``standardize=None``) to the identity matrix; see the module docstring for the order of
    the steps and the one deliberate difference (interpolation of every censored volume).

    Parameters
    ----------
    n_volumes : int
        Length of the run.
    sample_mask : numpy.ndarray
        Sorted indices of the kept volumes.
    confounds : numpy.ndarray or None
        (n_volumes, n_regressors).
    tr, detrend, high_pass, low_pass, standardize_confounds
        As in ``nilearn.signal.clean``.
    info : dict, optional
        Receives ``n_regressors``: the confound regressors projected out (the rank the
        pivoted QR keeps; 0 without confounds).

    Returns
    -------
    numpy.ndarray, shape (n_kept, n_volumes), float64

    Raises
    ------
    _Unprocessable
        No volume kept, fewer volumes than the filter needs, or no degrees of freedom left.
    """
    from scipy import linalg

    sample_mask = np.asarray(sample_mask, dtype=int)
    if sample_mask.size == 0:
        raise _Unprocessable(f"all {n_volumes} volumes censored")
    signals = np.eye(n_volumes)
    conf = None if confounds is None else np.asarray(confounds, dtype=float)
    sos = _butterworth_sos(tr, high_pass, low_pass)
    if sos is None:
        signals = signals[sample_mask]
        conf = None if conf is None else conf[sample_mask]
        keep_after = None
    else:
        first, last = sample_mask[0], sample_mask[-1] + 1
        edge = _filter_edge(sos)
        if last - first <= edge:
            raise _Unprocessable(
                f"only {last - first} volumes from the first to the last kept volume; the "
                f"Butterworth filter needs more than {edge} (the run is too short to be "
                "band-pass filtered; denoise.high_pass and low_pass null skip the filter)"
            )
        kept = np.zeros(n_volumes, dtype=bool)
        kept[sample_mask] = True
        gaps = ~kept[first:last]
        times = np.arange(n_volumes) * tr

        def interpolate(x):
            x = x[first:last].copy()
            if gaps.any():
                x[gaps] = _cubic_spline(times[kept], x[kept[first:last]], times[first:last][gaps])
            return x

        signals = interpolate(signals)
        conf = None if conf is None else interpolate(conf)
        keep_after = sample_mask - first
    if detrend:
        signals = _detrend(signals)
        conf = None if conf is None else _detrend(conf)
    if sos is not None:
        filt = _filtfilt_matrix(sos, signals.shape[0])  # sosfiltfilt is linear: F @ x
        signals = (filt @ signals)[keep_after]
        conf = None if conf is None else (filt @ conf)[keep_after]
    if conf is not None:
        if standardize_confounds:
            conf = conf - conf.mean(axis=0)
            std = conf.std(axis=0)
            std[std < np.finfo(np.float64).eps] = 1.0
            conf = conf / std
        else:
            scale = np.abs(conf).max(axis=0)
            scale[scale == 0] = 1.0
            conf = conf / scale
        q, r, _ = linalg.qr(conf, mode="economic", pivoting=True)
        q = q[:, np.abs(np.diag(r)) > np.finfo(np.float64).eps * 100.0]
        if signals.shape[0] - q.shape[1] < 2:
            raise _Unprocessable(
                f"{signals.shape[0]} kept volumes leave no degrees of freedom after "
                f"{q.shape[1]} confound regressors"
            )
        signals = signals - q @ (q.T @ signals)
    if info is not None:
        info["n_regressors"] = 0 if conf is None else int(q.shape[1])
    return signals


def _apply_operator(operator: np.ndarray, data: np.ndarray) -> np.ndarray:
    """``operator @ data`` in float64 voxel blocks, returned as float32.

    float64 matters: with many, partly collinear confounds (e.g. fMRIPrep's cosines after a
    band-pass) a float32 product is off by ~2e-4 in standardised units.
    """
    out = np.empty((operator.shape[0], data.shape[1]), dtype=np.float32)
    for v0 in range(0, data.shape[1], _VOXEL_BLOCK):
        block = data[:, v0 : v0 + _VOXEL_BLOCK].astype(np.float64)
        out[:, v0 : v0 + _VOXEL_BLOCK] = operator @ block
    return out


# ----------------------------------------------------------------------- images


def bold_for_strategy(run, opts) -> Path:
    """The BOLD file a strategy denoises: ``desc-preproc``, or for ``ica_aroma`` fMRIPrep's
    ``desc-smoothAROMAnonaggr`` output (which must exist)."""
    return _bold_path(run, opts)


def _bold_path(run, opts) -> Path:
    if opts["strategy"] != "ica_aroma":
        return Path(run.bold)
    path = Path(run.bold).with_name(run.bold.name.replace("_desc-preproc_bold", "_desc-smoothAROMAnonaggr_bold"))
    if not path.is_file():
        raise MsnetInputError(
            f"denoise.strategy 'ica_aroma' needs fMRIPrep's ICA-AROMA output {path} "
            "(fMRIPrep --use-aroma, versions < 24.0); it is missing. Choose another strategy."
        )
    return path


def _bold_image(path: Path):
    """Open a BOLD lazily (header only) and check it is a 4-D NIfTI time series."""
    return open_bold(path)


def _load_mask(path: Path, shape, affine, bold: Path) -> np.ndarray:
    img = open_mask(path, shape, affine, bold)  # the header checks the preflight also runs
    mask = read_mask_data(img, path, "Brain mask").reshape(shape) > 0
    if not mask.any():
        raise MsnetInputError(f"Brain mask {path} is empty.")
    return mask


def _load_lesion(lesion_mask, mask_img) -> np.ndarray | None:
    """Lesion mask (path or image) as a 3-D bool array on the brain-mask grid."""
    if not hasattr(lesion_mask, "shape"):  # a path; None, NaN or "n/a" from a table: no mask
        from msnet.io.plan import optional_path

        lesion_mask = optional_path(lesion_mask)
    if lesion_mask is None:
        return None
    img = open_lesion_mask(lesion_mask, mask_img.shape, mask_img.affine)
    return read_mask_data(img, lesion_mask, "Lesion mask").reshape(mask_img.shape) > 0


def _smoothing_sigmas(affine, fwhm) -> np.ndarray:
    """Per-axis Gaussian sigma in voxels (``nilearn.image.smooth_array``)."""
    vox = np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))
    return np.asarray(fwhm, float) / (np.sqrt(8 * np.log(2)) * vox)


def _open_stream(path: Path, offset: int, block_size: int):
    """Open a NIfTI positioned at its data.

    ``.gz`` files are decompressed by isal (faster than zlib; ``bench_subject.py`` times the read) in a background
    thread that keeps up to two ``block_size`` blocks ahead, overlapping decompression with
    the smoothing of the previous chunk.
    """
    if path.name.endswith(".gz"):
        from isal import igzip_threaded

        stream = igzip_threaded.open(path, "rb", threads=1, block_size=block_size)
        try:
            skipped = len(stream.read(offset))
        except _STREAM_ERRORS as exc:
            _close_quietly(stream)
            raise _corrupt(path, exc) from None
        if skipped != offset:
            stream.close()
            raise MsnetInputError(f"{path} ends inside its header (truncated file): re-copy it.")
        return stream
    stream = open(path, "rb")
    stream.seek(offset)
    return stream


def _read_exact(stream, buffer: np.ndarray, path: Path) -> None:
    view = memoryview(buffer).cast("B")
    got = 0
    while got < len(view):
        try:
            n = stream.readinto(view[got:])
        except _STREAM_ERRORS as exc:  # raised by isal's read-ahead thread, or by zlib
            raise _corrupt(path, exc) from None
        if not n:
            raise MsnetInputError(f"{path} ends early (truncated file): re-copy it.")
        got += n


def _stream_errors() -> tuple:
    """What a truncated or corrupt gzip raises: EOFError (early end), OSError/BadGzipFile,
    zlib.error, isal's IsalError (not an OSError)."""
    import zlib

    errors = [EOFError, OSError, zlib.error]
    try:
        from isal.igzip_lib import IsalError
    except ImportError:  # pragma: no cover - isal is a dependency
        pass
    else:
        errors.append(IsalError)
    return tuple(errors)


_STREAM_ERRORS = _stream_errors()


def _corrupt(path: Path, exc: BaseException) -> MsnetInputError:
    return MsnetInputError(
        f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); the gzip stream cannot "
        "be read to its end. Re-copy the file from the fMRIPrep output (or rerun fMRIPrep for "
        "this subject)."
    )


def _close_quietly(stream) -> None:
    try:
        stream.close()
    except _STREAM_ERRORS:
        pass


@dataclass
class _RunData:
    smoothed: np.ndarray  # (T, n_analysis) float32, voxels in the mask's C order
    tsnr_sums: tuple  # float64 sum and sum of squares over post-dummy volumes, tSNR voxels
    raw_brain: np.ndarray | None  # (T, n_brain) float32 when DVARS must be computed
    raw_carpet: np.ndarray | None = None  # (T, n_carpet) float32 raw values (QC page)


def _flat_index(mask: np.ndarray, c_order: bool = True) -> np.ndarray:
    """Positions of the mask's voxels in the volume flattened x-fastest (NIfTI's on-disk
    order), listed in the mask's C order (msnet's voxel order, x slowest) or, with
    ``c_order=False``, in on-disk order (sorted: a faster gather, for order-free uses)."""
    if not c_order:
        return np.flatnonzero(mask.ravel(order="F"))
    i, j, k = np.nonzero(mask)
    nx, ny, _ = mask.shape
    return (k * ny + j) * nx + i


class _Smoother:
    """nilearn's ``smooth_array``, computed only where the mask's values depend on it.

    ``gaussian_filter1d`` (truncate 4) only reaches ``int(4 sigma + 0.5)`` voxels, so the
    smoothed values at the mask's voxels are those of smoothing the whole volume, and each
    pass (x, then y, then z, as nilearn) needs its output only where a later pass reads it:
    the z pass at the mask, the y pass on the mask dilated along z, the x pass on that
    dilated along y. Each pass runs ``gaussian_filter1d`` on whole lines of the mask's
    bounding box plus the kernel radius, slice by slice over the rectangle of lines holding
    those voxels (about 70 % of the box's lines for a brain), so every needed value is
    computed by exactly nilearn's operations (bit-identical, tested). Integer data are
    converted to float32 by the first pass and scaled afterwards (smoothing keeps
    constants), saving a copy of the box.
    """

    def __init__(self, mask: np.ndarray, affine, fwhm: float):
        self.sigmas = _smoothing_sigmas(affine, fwhm)
        radius = [int(4.0 * s + 0.5) if s > 0 else 0 for s in self.sigmas]
        ijk = np.nonzero(mask)
        lo = [max(0, int(i.min()) - r) for i, r in zip(ijk, radius)]
        hi = [min(n, int(i.max()) + r + 1) for i, n, r in zip(ijk, mask.shape, radius)]
        self.box = (slice(None), slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        inside = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        self.index = _flat_index(inside)
        # passes in nilearn's order (x, y, z = array axes 3, 2, 1 of (k, z, y, x) volumes);
        # what each must compute follows from the last pass back
        active = [(axis, sigma, r) for axis, sigma, r in zip((3, 2, 1), self.sigmas, radius) if sigma > 0]
        needed = inside.transpose(2, 1, 0)  # (z, y, x), as the box
        self.passes = []
        for axis, sigma, r in reversed(active):
            self.passes.insert(0, (axis, sigma, _line_rectangles(needed, axis - 1)))
            needed = _dilate(needed, axis - 1, r)

    def __call__(self, volumes: np.ndarray, scale) -> np.ndarray:
        """Smooth (k, z, y, x) volumes; return the mask's voxels, (k, n_mask) float32."""
        from scipy.ndimage import gaussian_filter1d

        if volumes.dtype.kind == "f":
            box = _to_float32(volumes[self.box], *scale)
            np.nan_to_num(box, copy=False, nan=0.0, posinf=0.0, neginf=0.0)  # as nilearn
            source = box
        else:
            source = volumes[self.box]
            box = np.empty(source.shape, dtype=np.float32)  # filled where needed by pass 1
        for axis, sigma, rectangles in self.passes:
            for part in rectangles:
                gaussian_filter1d(source[part], sigma, axis=axis, output=box[part])
            source = box
        out = np.take(box.reshape(box.shape[0], -1), self.index, axis=1)
        return out if volumes.dtype.kind == "f" else _scale(out, *scale)


def _dilate(needed: np.ndarray, axis: int, radius: int) -> np.ndarray:
    """Boolean dilation along one axis by ``radius`` voxels."""
    out = needed.copy()
    for shift in range(1, radius + 1):
        lead = [slice(None)] * needed.ndim
        lag = [slice(None)] * needed.ndim
        lead[axis], lag[axis] = slice(shift, None), slice(None, -shift)
        out[tuple(lead)] |= needed[tuple(lag)]
        out[tuple(lag)] |= needed[tuple(lead)]
    return out


def _line_rectangles(needed: np.ndarray, axis: int) -> list:
    """Index tuples into (k, z, y, x) volumes covering, with whole lines along ``axis`` (of
    the (z, y, x) array ``needed``), every True voxel: one slice of the slowest other axis
    at a time, with the range of the other axis holding its True voxels."""
    outer, inner = [a for a in range(3) if a != axis]
    parts = []
    for i in range(needed.shape[outer]):
        plane = np.take(needed, i, axis=outer).any(axis=axis - (axis > outer))
        hits = np.flatnonzero(plane)
        if hits.size:
            index = [slice(None)] * 4
            index[1 + outer] = slice(i, i + 1)
            index[1 + inner] = slice(int(hits[0]), int(hits[-1]) + 1)
            parts.append(tuple(index))
    return parts


def _to_float32(values: np.ndarray, slope: float, inter: float) -> np.ndarray:
    return _scale(values.astype(np.float32), slope, inter)


def _scale(values: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """Apply NIfTI scl_slope/scl_inter in place (float32)."""
    if slope != 1.0 or inter != 0.0:
        values *= np.float32(slope)
        values += np.float32(inter)
    return values


def _read_bold(path: Path, img, run_mask: np.ndarray, tsnr_mask: np.ndarray, analysis: np.ndarray,
               fwhm, n_dummy: int, keep_raw: bool, threads: int | None = None,
               carpet_idx: np.ndarray | None = None) -> _RunData:
    """Stream a BOLD once: raw brain voxels for tSNR/DVARS, smoothed analysis voxels, and
    the raw values at ``carpet_idx`` (positions in the volume flattened x-fastest) for the
    QC page's carpet plot.

    The file is read volume chunk by volume chunk (NIfTI stores each volume contiguously,
    x fastest), so the 4-D image is never held in memory, in any precision. Raw values
    (tSNR, DVARS: voxel order does not matter) are gathered in on-disk order. With
    ``threads`` > 1 each chunk's volumes are smoothed by that many threads (each volume's
    values are computed exactly as with one).
    """
    nx, ny, nz, n_vol = img.shape
    proxy = img.dataobj
    scale = (float(proxy.slope), float(proxy.inter))
    brain_idx = _flat_index(run_mask, c_order=False)
    tsnr_cols = tsnr_mask.ravel(order="F")[run_mask.ravel(order="F")]
    tsnr_cols = slice(None) if tsnr_cols.all() else tsnr_cols
    ana_idx = _flat_index(analysis)
    smoother = _Smoother(analysis, img.affine, fwhm) if fwhm else None
    chunk = max(1, min(n_vol, _CHUNK_BYTES // (nx * ny * nz * 4)))
    buffer = np.empty((chunk, nz, ny, nx), dtype=proxy.dtype)
    smoothed = np.empty((n_vol, ana_idx.size), dtype=np.float32)
    raw_brain = np.empty((n_vol, brain_idx.size), np.float32) if keep_raw else None
    raw_carpet = None if carpet_idx is None else np.empty((n_vol, carpet_idx.size), np.float32)
    tsnr = _TsnrSums(int(tsnr_mask.sum()))
    workers = max(1, int(threads or 1)) if smoother else 1
    pool = None
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(workers)

    def work(block, t0, part):
        smoothed[t0 + part[0] : t0 + part[-1] + 1] = smoother(block[part[0] : part[-1] + 1], scale)

    try:
        with _open_stream(path, int(proxy.offset), block_size=chunk * buffer[0].nbytes) as stream:
            for t0 in range(0, n_vol, chunk):
                k = min(chunk, n_vol - t0)
                block = buffer[:k]
                _read_exact(stream, block, path)
                flat = block.reshape(k, -1)
                jobs = [] if pool is None else [  # smoothed while this thread gathers the raw values
                    pool.submit(work, block, t0, part)
                    for part in np.array_split(np.arange(k), min(workers, k))]
                raw = _to_float32(flat[:, brain_idx], *scale)
                if not np.isfinite(raw).all():
                    bad = t0 + int(np.nonzero(~np.isfinite(raw).all(axis=1))[0][0])
                    raise MsnetInputError(
                        f"{path} holds NaN/inf inside the brain mask (volume {bad}); such data cannot be "
                        "cleaned. Check the fMRIPrep run (or remove those voxels from the brain mask)."
                    )
                if raw_brain is not None:
                    raw_brain[t0 : t0 + k] = raw
                if raw_carpet is not None:
                    raw_carpet[t0 : t0 + k] = _to_float32(flat[:, carpet_idx], *scale)
                tsnr.add(raw[max(0, n_dummy - t0):, tsnr_cols])
                if pool is not None:
                    for job in jobs:
                        job.result()
                elif smoother:
                    smoothed[t0 : t0 + k] = smoother(block, scale)
                else:
                    smoothed[t0 : t0 + k] = _to_float32(np.take(flat, ana_idx, axis=1), *scale)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return _RunData(smoothed, (tsnr.total, tsnr.total_sq), raw_brain, raw_carpet)


class _TsnrSums:
    """Float64 sums of x and x^2 per voxel, accumulated from float32 chunks.

    Each chunk is centred on the first volume seen before squaring, so float32 keeps the
    precision of the fluctuations; the sums are converted back to raw sums in float64.
    """

    def __init__(self, n_voxels: int):
        self.total = np.zeros(n_voxels)
        self.total_sq = np.zeros(n_voxels)
        self.ref = None

    def add(self, values: np.ndarray) -> None:
        if not values.shape[0]:
            return
        if self.ref is None:
            self.ref = values[0].astype(np.float64)
        dev = values - self.ref.astype(np.float32)
        s1 = dev.sum(axis=0, dtype=np.float64)
        s2 = np.einsum("tv,tv->v", dev, dev).astype(np.float64)
        n = values.shape[0]
        self.total += n * self.ref + s1
        self.total_sq += s2 + 2.0 * self.ref * s1 + n * self.ref**2


# ------------------------------------------------------------------------ subject


def clean_subject(files: SubjectFiles, options=None, qc_options=None, lesion_mask=None,
                  progress=None, threads: int | None = None, roi_membership=None) -> CleanedBold:
    """Denoise one subject's BOLD run(s) and compute its QC.

    Each BOLD file is decompressed once; raw in-mask values feed tSNR (and DVARS when the
    confounds table lacks it), smoothed in-mask values feed the cleaning.

    Parameters
    ----------
    files : SubjectFiles
        From :func:`msnet.io.fmriprep.find_subject_files`.
    options : dict, optional
        Denoise options, see :data:`DEFAULT_OPTIONS` / :func:`resolve_options`. With
        ``multi_run: concatenate`` each run is cleaned separately and the results stacked.
    qc_options : dict, optional
        See :data:`msnet.qc.DEFAULT_QC_OPTIONS`.
    lesion_mask : str, Path or nibabel image, optional
        Lesion mask on the BOLD grid; its voxels are removed from the analysis mask.
    progress : callable, optional
        Called with a short message at each step (e.g. ``logger.info``).
    threads : int, optional
        Threads smoothing the volumes (scipy.ndimage releases the GIL; default 1). The BOLD
        is always decompressed in one background thread.
    roi_membership : callable, optional
        Called with the analysis mask image; returns a sparse (n_rois, n_voxels) membership
        matrix (:func:`msnet.connectivity.sphere_membership`). The ROI means of each run's
        smoothed BOLD before cleaning are then kept in ``CleanedBold.runs``, so that other
        denoising strategies can be applied to them without reading the BOLD again
        (:func:`clean_signals`).

    Returns
    -------
    CleanedBold
        ``qc`` holds ``participant_id``, ``include``, ``exclusion_reason``, ``mean_fd``,
        ``max_fd``, ``n_volumes``, ``n_dummy``, ``n_kept``, ``pct_censored``,
        ``minutes_kept``, ``mean_dvars``, ``mean_std_dvars``, ``tsnr_median``,
        ``fd_source``, ``dvars_source``, ``tr``, ``n_voxels``, ``lesion_voxels``,
        ``lesion_overlap``, ``n_runs``, ``runs`` (per-run details), ``confounds``
        (regressor names), ``denoise`` (options used) and ``qc_thresholds``. A subject
        whose data cannot be cleaned (every volume censored, a run too short for the
        filter) gets ``data=None`` and ``include=False`` with the reason; one failing the
        QC thresholds keeps its data with ``include=False``.

    Raises
    ------
    MsnetInputError
        Invalid input: 3-D image, mask/BOLD or lesion/BOLD on different grids, confounds
        rows != volumes, NaN inside the mask, confounds missing what the strategy needs.
    """
    opts = resolve_options(options)
    qopts = qcmod.resolve_qc_options(qc_options)
    say = progress or (lambda message: None)
    runs = files.runs[:1] if opts["multi_run"] == "first" else files.runs
    bolds = [_bold_path(run, opts) for run in runs]
    images = [_bold_image(path) for path in bolds]
    grid = _subject_grid(files.participant_id, runs, bolds, images, lesion_mask)
    tables = [read_confounds(run.confounds, n_volumes=img.shape[3]) for run, img in zip(runs, images)]
    for run, (table, meta) in zip(runs, tables):  # before the BOLD is read; as the preflight does
        check_confounds_columns(table.columns, meta, opts, run.confounds)
    results, offset = [], 0
    membership = None if roi_membership is None else roi_membership(grid.image(grid.analysis))
    for run, path, img, (table, meta), run_mask in zip(runs, bolds, images, tables, grid.run_masks):
        results.append(_clean_run(run, path, img, table, meta, run_mask, grid.brain, grid.analysis, opts,
                                  files.tr, say, threads, membership))
        results[-1].sample_mask += offset
        offset += img.shape[3]
    qc = _subject_qc(files, results, grid, opts, qopts)
    flat = _flat_analysis_voxels(results, grid)
    cleaned = [r.cleaned for r in results if r.cleaned is not None and not flat.all()]
    traces = _qc_traces(results, opts, int(np.count_nonzero(grid.analysis)), use_cleaned=not flat.all())
    means = [r.mean for r in results if r.cleaned is not None]
    say(f"done: include={qc['include']}" + (f" ({qc['exclusion_reason']})" if qc["exclusion_reason"] else ""))
    return CleanedBold(
        data=(cleaned[0] if len(cleaned) == 1 else np.concatenate(cleaned)) if cleaned else None,
        mask_img=grid.image(grid.analysis),
        tr=float(files.tr),
        sample_mask=np.concatenate([r.sample_mask for r in results if r.cleaned is not None] or [np.zeros(0, int)]),
        qc=qc,
        lesion_mask=None if grid.lesion is None else grid.lesion[grid.brain],
        voxel_mean=np.mean(means, axis=0) if means else None,
        flat_voxels=flat,
        qc_traces=traces,
        runs=[r.signals for r in results if r.signals is not None],
    )


def _qc_traces(results, opts, n_analysis: int, use_cleaned: bool) -> QcTraces:
    """What the subject's QC page draws (:class:`msnet.qcpage.QcTraces`), runs concatenated."""
    starts = np.cumsum([0] + [r.info["n_volumes"] for r in results[:-1]])
    cleaned = [r for r in results if r.carpet_clean is not None and use_cleaned]
    kwargs = load_confounds_kwargs(opts)
    scrubs = "scrub" in tuple(kwargs.get("strategy", ()))

    def cat(values):
        return np.concatenate(values) if values else np.zeros(0)

    return QcTraces(
        voxels=carpet_voxels(n_analysis),
        raw=np.concatenate([r.carpet_raw for r in results]),
        cleaned=np.concatenate([r.carpet_clean for r in cleaned]) if cleaned else None,
        cleaned_volumes=cat([r.sample_mask for r in cleaned]).astype(int),
        kept=cat([r.sample_mask for r in results]).astype(int),
        dummy=cat([s + np.arange(r.info["n_dummy"]) for s, r in zip(starts, results)]).astype(int),
        fd=cat([r.full_series["framewise_displacement"] for r in results]),
        dvars=cat([r.full_series["dvars"] for r in results]),
        std_dvars=cat([r.full_series["std_dvars"] for r in results]),
        run_starts=[int(s) for s in starts],
        fd_threshold=kwargs.get("fd_threshold") if scrubs else None,
        std_dvars_threshold=kwargs.get("std_dvars_threshold") if scrubs else None,
    )


@dataclass
class _Grid:
    affine: np.ndarray
    run_masks: list  # brain mask of each run (3-D bool)
    brain: np.ndarray  # their intersection
    lesion: np.ndarray | None
    analysis: np.ndarray  # brain minus lesion

    def image(self, mask: np.ndarray):
        import nibabel as nib

        return nib.Nifti1Image(mask.astype(np.uint8), self.affine)


def _subject_grid(participant_id, runs, bolds, images, lesion_mask) -> _Grid:
    """Check the runs share one grid; build brain, lesion and analysis masks."""
    affine, shape = images[0].affine, images[0].shape[:3]
    for img, path in zip(images[1:], bolds[1:]):
        if img.shape[:3] != shape or not np.allclose(img.affine, affine, atol=1e-3):
            raise MsnetInputError(f"{path} is not on the grid of {bolds[0]}: runs cannot be concatenated.")
    run_masks = [_load_mask(run.mask, shape, affine, path) for run, path in zip(runs, bolds)]
    brain = np.logical_and.reduce(run_masks)
    grid = _Grid(affine, run_masks, brain, None, brain)
    grid.lesion = _load_lesion(lesion_mask, grid.image(brain))
    if grid.lesion is not None:
        grid.analysis = brain & ~grid.lesion
    if not grid.analysis.any():
        raise MsnetInputError(f"{participant_id}: the lesion mask covers the whole brain mask.")
    return grid


@dataclass
class _RunResult:
    info: dict  # per-run QC entry
    cleaned: np.ndarray | None
    sample_mask: np.ndarray
    confounds: list
    series: dict  # post-dummy framewise_displacement, dvars, std_dvars
    tsnr_sums: tuple
    sources: dict
    mean: np.ndarray  # smoothed signal mean over post-dummy volumes, analysis voxels
    full_series: dict  # every volume's framewise_displacement, dvars, std_dvars (QC page)
    carpet_raw: np.ndarray | None = None  # raw / cleaned values at the QC page's carpet
    carpet_clean: np.ndarray | None = None  # voxels (msnet.qcpage.carpet_voxels)
    signals: RunSignals | None = None  # ROI means before cleaning (other strategies)


_SERIES = ("framewise_displacement", "dvars", "std_dvars")


def _clean_run(run, path, img, table, meta, run_mask, brain, analysis, opts, tr, say,
               threads=None, membership=None) -> _RunResult:
    """Read, (complete the confounds of) and clean one run; unprocessable -> cleaned=None."""
    n_vol = img.shape[3]
    sources = {"fd_source": "confounds", "dvars_source": "confounds"}
    fd_na = _na_after_first(table, "framewise_displacement")
    if "framewise_displacement" not in table or fd_na:
        # fMRIPrep writes n/a only for the first volume; FD n/a later (a damaged table) would
        # silently keep those volumes (n/a > threshold is false): recompute FD from the motion
        # parameters instead, as fMRIPrep does, and record where.
        if fd_na:
            say(f"framewise_displacement is n/a at volume(s) {fd_na[:10]}: recomputed from the "
                "motion parameters")
        table["framewise_displacement"] = _fd_from_table(table, run.confounds)
        sources["fd_source"] = "nipype"
    need_dvars = (not {"dvars", "std_dvars"} <= set(table.columns)
                  or bool(_na_after_first(table, "dvars") or _na_after_first(table, "std_dvars")))
    n_dummy = _dummy_count(table)
    say(f"reading {path.name}")
    carpet = carpet_voxels(int(np.count_nonzero(analysis)))
    data = _read_bold(path, img, run_mask, brain, analysis, opts["smoothing_fwhm"], n_dummy, need_dvars,
                      threads, _flat_index(analysis)[carpet])
    if need_dvars:
        table["dvars"], table["std_dvars"] = qcmod.dvars(data.raw_brain)
        sources["dvars_source"] = "msnet port of nipype ComputeDVARS"
    confounds, names, sample_mask = select_confounds(table, meta, opts, run.confounds)
    series = {c: table[c].to_numpy()[n_dummy:] for c in _SERIES}
    info = {"bold": str(path), "n_volumes": n_vol, "n_dummy": n_dummy, "n_confounds": len(names),
            "n_kept": int(sample_mask.size), "usable": True, "excluded_reason": None,
            "fd_na_volumes": fd_na, **qcmod.motion_metrics(*series.values(), 0)}
    say(f"cleaning {path.name}: {len(names)} confounds, {sample_mask.size}/{n_vol} volumes kept")
    try:
        rank = {}
        operator = cleaning_operator(n_vol, sample_mask, confounds, tr, opts["detrend"], opts["high_pass"],
                                     opts["low_pass"], opts["standardize_confounds"], rank)
        info["n_regressors"] = rank["n_regressors"]  # the tDOF the regression used (msnet.qcfc)
        cleaned = _apply_operator(operator, data.smoothed)
    except _Unprocessable as exc:
        cleaned = None  # n_kept stays what censoring kept: the run is unusable for another reason
        info.update(usable=False, excluded_reason=str(exc))
    mean = data.smoothed[n_dummy:].mean(axis=0, dtype=np.float64)
    full = {c: table[c].to_numpy(dtype=float) for c in _SERIES}
    signals = None
    if membership is not None:  # cleaning is linear and the same for every voxel: it commutes
        from msnet.connectivity import sphere_means  # with the ROI mean (clean_signals)

        signals = RunSignals(sphere_means(data.smoothed, membership), table, meta,
                             Path(run.confounds), n_dummy)
    return _RunResult(info, cleaned, sample_mask, names, series, data.tsnr_sums, sources, mean, full,
                      data.raw_carpet, None if cleaned is None else cleaned[:, carpet], signals)


def clean_signals(runs, options, tr: float) -> StrategySignals:
    """Clean a subject's ROI signals (``CleanedBold.runs``) with one denoising strategy.

    The temporal cleaning of :func:`clean_subject` is one matrix ``M`` (n_kept x n_volumes,
    :func:`cleaning_operator`) applied to every voxel's series, and an ROI's signal is the
    mean of its voxels' series, a fixed linear combination. So ``mean(M @ voxels) ==
    M @ mean(voxels)``: cleaning the ROI means of the uncleaned BOLD gives, to rounding,
    the ROI series of the voxelwise-cleaned data that the subject stage extracts
    (:func:`msnet.connectivity.roi_timeseries`), with the BOLD read once for any number of
    strategies. What this needs, and where it stops holding:

    * every strategy sees the same voxels: the analysis mask (brain mask(s) minus lesion),
      the same smoothing (``smoothing_fwhm``) and the same runs (``multi_run``), so those
      keys cannot differ between strategies, and ``ica_aroma`` (another BOLD file) cannot
      be one;
    * the voxelwise route stores the cleaned data as float32, this one keeps float64: the
      ROI series differ by float32 rounding (about 1e-7 relative), the Fisher z by about
      1e-6;
    * a voxel-level nonlinearity before averaging would break it (e.g. nilearn's
      ``standardize`` of each voxel before a masker averages them); msnet standardises
      nothing before the ROI mean.

    Parameters
    ----------
    runs : list of RunSignals
        From ``CleanedBold.runs``.
    options : dict
        Denoise options of the strategy (:func:`resolve_options`).
    tr : float
        Repetition time (s).

    Returns
    -------
    StrategySignals

    Raises
    ------
    MsnetInputError
        The confounds table lacks what the strategy needs.
    """
    opts = resolve_options(options)
    parts, reasons = [], []
    n_reg = n_cens = n_post = 0
    for run in runs:
        check_confounds_columns(run.columns, run.meta, opts, run.source)
        confounds, _, sample_mask = select_confounds(run.columns, run.meta, opts, run.source)
        n_vol = run.raw.shape[0]
        info = {}
        try:
            operator = cleaning_operator(n_vol, sample_mask, confounds, tr, opts["detrend"],
                                         opts["high_pass"], opts["low_pass"],
                                         opts["standardize_confounds"], info)
        except _Unprocessable as exc:
            reasons.append(f"{run.source.name}: {exc}")
            continue
        parts.append(operator @ run.raw)
        n_reg += info["n_regressors"]
        n_post += n_vol - run.n_dummy
        n_cens += n_vol - run.n_dummy - int(np.count_nonzero(sample_mask >= run.n_dummy))
    return StrategySignals(np.concatenate(parts) if parts else None, n_reg, n_cens, n_post,
                           "; ".join(reasons) or None)


def _subject_qc(files, results, grid, opts, qopts) -> dict:
    """Pool the runs' QC into the subject's qc.json content, with the inclusion decision."""
    infos = [r.info for r in results]
    pooled = [np.concatenate([r.series[c] for r in results]) for c in _SERIES]
    qc = qcmod.motion_metrics(*pooled, 0)
    qc.update(qcmod.censoring_metrics(sum(i["n_volumes"] for i in infos), sum(i["n_dummy"] for i in infos),
                                      sum(i["n_kept"] for i in infos), files.tr))
    qc["minutes_usable"] = float(sum(i["n_kept"] for i in infos if i["usable"]) * files.tr / 60.0)
    n_post = sum(i["n_volumes"] - i["n_dummy"] for i in infos)
    total, total_sq = (sum(r.tsnr_sums[k] for r in results) for k in (0, 1))
    lesion = None if grid.lesion is None else grid.lesion[grid.brain]
    qc.update(
        participant_id=files.participant_id,
        tsnr_median=float(np.median(qcmod.temporal_snr(total, total_sq, n_post))) if n_post else None,
        fd_source="nipype" if any(r.sources["fd_source"] == "nipype" for r in results) else "confounds",
        dvars_source=next((r.sources["dvars_source"] for r in results if r.sources["dvars_source"] != "confounds"),
                          "confounds"),
        tr=float(files.tr),
        n_voxels=int(grid.analysis.sum()),
        n_flat_voxels=int(_flat_analysis_voxels(results, grid).sum()),
        lesion_voxels=None if lesion is None else int(lesion.sum()),
        lesion_overlap=_lesion_overlap(lesion, grid.image(grid.brain), qopts),
        n_runs=len(results),
        runs=infos,
        confounds=results[0].confounds,
        denoise=opts,
        qc_thresholds=qopts,
    )
    qc["pct_flat_voxels"] = 100.0 * qc["n_flat_voxels"] / qc["n_voxels"]
    if all(r.cleaned is None for r in results):
        reasons = "; ".join(f"{Path(i['bold']).name}: {i['excluded_reason']}" for i in infos)
        qc.update(include=False, exclusion_reason=f"data cannot be processed ({reasons})")
    elif qc["n_flat_voxels"] == qc["n_voxels"]:
        qc.update(include=False, exclusion_reason=(
            "no signal: the BOLD is constant over time in every voxel of the brain mask "
            "(empty or zero-filled image); check the fMRIPrep output of this run"))
    else:
        qc["include"], qc["exclusion_reason"] = qcmod.decide_inclusion(qc, qopts)
    return qc


def _flat_brain_voxels(results) -> np.ndarray:
    """Bool per tSNR voxel (the brain mask, in the on-disk order of :func:`_read_bold`'s
    sums): the raw BOLD is constant over the post-dummy volumes of every run. Computed from
    the float64 sums (SD <= 1e-6 of |mean|, as :mod:`msnet.connectivity` judges constancy):
    a constant series gives a variance of 0 up to rounding, a real one a CV of ~1e-3 or more.
    """
    n = sum(r.info["n_volumes"] - r.info["n_dummy"] for r in results)
    total, total_sq = (sum(r.tsnr_sums[k] for r in results) for k in (0, 1))
    if not n:
        return np.ones(np.shape(total), bool)
    mean = total / n
    sd = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return ~(sd > 1e-6 * np.abs(mean))


def _flat_analysis_voxels(results, grid) -> np.ndarray:
    """:func:`_flat_brain_voxels` over the analysis voxels, in their (C) order."""
    flat_f = _flat_brain_voxels(results)
    vol = np.zeros(grid.brain.size, bool)
    vol[np.flatnonzero(grid.brain.ravel(order="F"))] = flat_f
    return vol.reshape(grid.brain.shape, order="F")[grid.analysis]


def _na_after_first(table, column: str) -> list:
    """Volumes (0-based) after the first where ``column`` is n/a (empty if absent)."""
    if column not in table:
        return []
    return [int(i) for i in np.flatnonzero(table[column].isna().to_numpy()[1:]) + 1]


def _fd_from_table(table, source: Path) -> np.ndarray:
    missing = [c for c in MOTION_COLUMNS if c not in table]
    if missing:
        raise MsnetInputError(
            f"Confounds table {source} has no framewise_displacement column and lacks {missing} "
            "to compute it; provide fMRIPrep's full confounds table."
        )
    motion = table[list(MOTION_COLUMNS)]
    if motion.isna().any().any():
        rows = np.flatnonzero(motion.isna().any(axis=1).to_numpy())
        raise MsnetInputError(
            f"Confounds table {source}: the motion parameters are n/a at volume(s) "
            f"{', '.join(map(str, rows[:10]))}{' ...' if rows.size > 10 else ''}, so framewise "
            "displacement cannot be computed there. fMRIPrep never writes n/a motion "
            "parameters: the table is damaged; re-run fMRIPrep for this subject."
        )
    return qcmod.framewise_displacement(motion.to_numpy())


def _lesion_overlap(brain_lesion, mask_img, qopts) -> dict:
    if brain_lesion is None:
        return {net: None for net in ANALYSIS_NETWORKS}
    return qcmod.lesion_overlap(brain_lesion, mask_img, qopts["lesion_template_threshold"])
