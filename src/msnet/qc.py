"""Subject quality control: motion, DVARS, tSNR, censoring, lesion overlap, inclusion.

Conventions (XCP-D-like): motion and DVARS summaries are taken over the volumes left after
the non-steady-state (dummy) volumes, skipping the undefined first value; ``pct_censored``
is the share of those post-dummy volumes removed by scrubbing; tSNR is computed on the raw,
unsmoothed, un-cleaned BOLD (post-dummy), as nipype's ``TSNR`` does (mean / std with
``ddof=0``, 0 where std <= 1e-3), and summarised by its median over the brain mask
(intersection of the runs' masks; lesion voxels included, as MRIQC/fMRIPrep do).
``pct_flat_voxels`` is the share of analysis-mask voxels whose raw BOLD is constant over the
post-dummy volumes (no signal); their maps are NaN and a subject above
``max_pct_flat_voxels`` is excluded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from msnet import ANALYSIS_NETWORKS
from msnet.errors import MsnetInputError

DEFAULT_QC_OPTIONS = {
    "max_mean_fd": 0.5,
    "max_pct_censored": 30.0,
    "min_minutes_kept": 4.0,
    "max_pct_flat_voxels": 5.0,
    "lesion_template_threshold": 0.2,
}
"""QC options (config section ``qc``); a threshold set to None switches its criterion off."""

FD_RADIUS_MM = 50.0
"""Head radius converting rotations to displacement (Power et al. 2012; fMRIPrep)."""


def resolve_qc_options(qc_options=None) -> dict:
    """Merge ``qc_options`` over :data:`DEFAULT_QC_OPTIONS` and validate them.

    Raises
    ------
    MsnetInputError
        Unknown key, or a value that is not a non-negative number (or None).
    """
    opts = dict(DEFAULT_QC_OPTIONS)
    for key, value in (qc_options or {}).items():
        if key == "subject_pages":  # an output switch (msnet.qcpage), not a threshold
            if not isinstance(value, bool):
                raise MsnetInputError(f"qc.subject_pages must be true or false, got {value!r}.")
            continue
        if key not in DEFAULT_QC_OPTIONS:
            raise MsnetInputError(f"Unknown qc option {key!r}; known: {sorted(DEFAULT_QC_OPTIONS)}.")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise MsnetInputError(f"qc.{key} must be a non-negative number or null, got {value!r}.")
        opts[key] = value
    if opts["lesion_template_threshold"] is None or not 0 <= opts["lesion_template_threshold"] < 1:
        raise MsnetInputError("qc.lesion_template_threshold must be in [0, 1).")
    return opts


def framewise_displacement(motion: np.ndarray) -> np.ndarray:
    """Framewise displacement (Power et al. 2012) with nipype, as fMRIPrep computes it.

    Runs ``nipype.algorithms.confounds.FramewiseDisplacement`` with
    ``parameter_source="SPM"`` (translations in mm first, then rotations in radians: the
    column order of fMRIPrep's ``trans_*``/``rot_*``) and a 50 mm radius.

    Parameters
    ----------
    motion : numpy.ndarray, shape (n_volumes, 6)
        ``trans_x, trans_y, trans_z, rot_x, rot_y, rot_z``.

    Returns
    -------
    numpy.ndarray, shape (n_volumes,)
        FD in mm, NaN for the first volume (as fMRIPrep's ``n/a``).
    """
    os.environ.setdefault("NIPYPE_NO_ET", "1")  # no version check over the network
    from nipype.algorithms.confounds import FramewiseDisplacement

    with tempfile.TemporaryDirectory(prefix="msnet-fd-") as tmp:
        params = Path(tmp) / "motion.txt"
        np.savetxt(params, np.asarray(motion, float))
        iface = FramewiseDisplacement(
            in_file=str(params),
            parameter_source="SPM",
            radius=FD_RADIUS_MM,
            out_file=str(Path(tmp) / "fd.txt"),
        )
        result = iface.run(cwd=tmp)
        fd = np.atleast_1d(np.loadtxt(result.outputs.out_file, skiprows=1))
    return np.concatenate([[np.nan], fd])


def dvars(
    data: np.ndarray,
    remove_zerovariance: bool = True,
    variance_tol: float = 1e-7,
    intensity_normalization: float = 1000.0,
) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS, as fMRIPrep writes them (nipype ``ComputeDVARS``).

    A vectorised port of ``nipype.algorithms.confounds.compute_dvars`` working on the
    in-memory masked time series: nipype's function re-reads the BOLD from disk, loops over
    voxels for the AR(1) fit and needs ``nitime``. The lag-1 Yule-Walker coefficient is
    ``sum(x[t] x[t+1]) / sum(x[t]^2)`` of the demeaned series, which is what nitime's
    ``AR_est_YW(x, 1)`` returns. Defaults are those of ``ComputeDVARS`` as fMRIPrep runs it.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_volumes, n_voxels)
        Raw (unsmoothed) BOLD over the brain mask.
    remove_zerovariance, variance_tol, intensity_normalization
        As in nipype.

    Returns
    -------
    dvars, std_dvars : numpy.ndarray, shape (n_volumes,)
        Non-standardised and standardised DVARS, NaN for the first volume.
    """
    func = np.asarray(data, dtype=np.float32)
    if intensity_normalization:
        func = func * np.float32(intensity_normalization / np.median(func))
    q25, q75 = np.percentile(func, [25, 75], axis=0, method="lower")
    func_sd = (q75 - q25) / 1.349
    if remove_zerovariance:
        keep = func_sd > variance_tol
        func, func_sd = func[:, keep], func_sd[keep]
    centred = func - func.mean(axis=0, dtype=np.float64)
    ar1 = np.einsum("tv,tv->v", centred[:-1], centred[1:]) / np.einsum("tv,tv->v", centred, centred)
    diff_sd_mean = (np.sqrt((1.0 - ar1) * 2.0) * func_sd).mean()
    diff = np.diff(func, axis=0)
    dvars_nstd = np.sqrt(np.einsum("tv,tv->t", diff, diff, dtype=np.float64) / diff.shape[1])
    nan = np.array([np.nan])
    return np.concatenate([nan, dvars_nstd]), np.concatenate([nan, dvars_nstd / diff_sd_mean])


def temporal_snr(total: np.ndarray, total_sq: np.ndarray, n: int) -> np.ndarray:
    """tSNR per voxel from running sums, nipype ``TSNR`` convention.

    Parameters
    ----------
    total, total_sq : numpy.ndarray, shape (n_voxels,)
        Sum and sum of squares over time (float64).
    n : int
        Number of volumes summed.

    Returns
    -------
    numpy.ndarray
        mean / std (``ddof=0``), 0 where std <= 1e-3.
    """
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    out = np.zeros_like(mean)
    ok = std > 1e-3
    out[ok] = mean[ok] / std[ok]
    return out


def _finite_stat(values, func):
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(func(values)) if values.size else None


def motion_metrics(fd, dvars_values, std_dvars_values, n_dummy: int) -> dict:
    """Mean/max FD and mean DVARS/std DVARS over the post-dummy volumes (NaN skipped).

    Returns
    -------
    dict
        ``mean_fd``, ``max_fd``, ``mean_dvars``, ``mean_std_dvars`` (None when undefined).
    """
    return {
        "mean_fd": _finite_stat(fd[n_dummy:], np.mean),
        "max_fd": _finite_stat(fd[n_dummy:], np.max),
        "mean_dvars": _finite_stat(dvars_values[n_dummy:], np.mean),
        "mean_std_dvars": _finite_stat(std_dvars_values[n_dummy:], np.mean),
    }


def censoring_metrics(n_volumes: int, n_dummy: int, n_kept: int, tr: float) -> dict:
    """Volume counts, percent censored (of post-dummy volumes) and minutes kept."""
    usable = n_volumes - n_dummy
    return {
        "n_volumes": int(n_volumes),
        "n_dummy": int(n_dummy),
        "n_kept": int(n_kept),
        "pct_censored": float(100.0 * (usable - n_kept) / usable) if usable > 0 else 100.0,
        "minutes_kept": float(n_kept * tr / 60.0),
    }


def decide_inclusion(metrics: dict, qc_options=None) -> tuple[bool, str | None]:
    """Apply the QC thresholds.

    Parameters
    ----------
    metrics : dict
        Needs ``mean_fd``, ``pct_censored``, ``minutes_kept`` (a None metric is not judged);
        ``minutes_usable`` (minutes kept in the runs that could be cleaned), when given, is
        judged instead of ``minutes_kept``.
    qc_options : dict, optional
        ``max_mean_fd`` (mm), ``max_pct_censored`` (%), ``min_minutes_kept`` (min),
        ``max_pct_flat_voxels`` (% of the analysis mask whose BOLD is constant, judged on
        ``pct_flat_voxels``); defaults in :data:`DEFAULT_QC_OPTIONS`; None switches a
        criterion off.

    Returns
    -------
    include : bool
    reason : str or None
        Every failed criterion with its value and threshold, ``"; "``-joined.
    """
    opts = resolve_qc_options(qc_options)
    minutes = "minutes_usable" if metrics.get("minutes_usable") is not None else "minutes_kept"
    checks = (
        ("mean_fd", "max_mean_fd", lambda v, t: v > t, "mean FD {v:.3f} mm > max_mean_fd {t} mm"),
        ("pct_censored", "max_pct_censored", lambda v, t: v > t,
         "{v:.1f} % of volumes censored > max_pct_censored {t} %"),
        (minutes, "min_minutes_kept", lambda v, t: v < t,
         "{v:.2f} min of data kept < min_minutes_kept {t} min"),
        ("pct_flat_voxels", "max_pct_flat_voxels", lambda v, t: v > t,
         "{v:.1f} % of the analysis-mask voxels have a constant (flat) BOLD signal > "
         "max_pct_flat_voxels {t} %"),
    )
    reasons = [
        text.format(v=metrics[key], t=opts[opt])
        for key, opt, fails, text in checks
        if metrics.get(key) is not None and opts[opt] is not None and fails(metrics[key], opts[opt])
    ]
    return (not reasons), ("; ".join(reasons) or None)


def lesion_overlap(lesion_in_mask: np.ndarray, mask_img, threshold: float = 0.2) -> dict:
    """Fraction of each analysis network's template covered by the lesion mask.

    Parameters
    ----------
    lesion_in_mask : numpy.ndarray of bool, shape (n_mask_voxels,)
        Lesion voxels over ``mask_img``'s voxels (C order).
    mask_img : nibabel.Nifti1Image
        Brain mask the templates are built on (:func:`msnet.atlas.network_templates`).
    threshold : float
        A voxel belongs to a network where its template exceeds this value.

    Returns
    -------
    dict
        ``{network: fraction}`` for :data:`msnet.ANALYSIS_NETWORKS`.
    """
    from msnet.atlas import network_templates

    names, maps = network_templates(mask_img)
    out = {}
    for net in ANALYSIS_NETWORKS:
        in_net = maps[names.index(net)] > threshold
        n = int(in_net.sum())
        out[net] = float((in_net & lesion_in_mask).sum() / n) if n else None
    return out


# --------------------------------------------------------------------------- study tables


QC_COLUMNS = ["study_id", "participant_id", "group", "include", "exclusion_reason", "mean_fd",
              "max_fd", "pct_censored", "minutes_kept", "n_volumes", "n_dummy", "n_kept",
              "mean_dvars", "mean_std_dvars", "tsnr_median", "fd_source", "tr",
              "lesion_voxels"]
"""Columns of :func:`qc_summary` (``group`` from participants.tsv when given)."""


def qc_summary(qc_jsons, participants: dict | None = None):
    """One row per subject from the subject-stage QC files.

    Parameters
    ----------
    qc_jsons : list of path
        ``sub-{label}_qc.json`` files (keys as in the subject stage; missing keys are NaN).
    participants : dict, optional
        Study id -> ``participants.tsv``; adds each subject's ``group`` (``n/a`` if absent).

    Returns
    -------
    pandas.DataFrame
        :data:`QC_COLUMNS`, sorted by study and participant.
    """
    import json
    import re

    import pandas as pd

    rows = []
    for path in qc_jsons or ():
        try:
            qc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MsnetInputError(f"{path}: cannot read the subject QC file ({err}); re-run "
                                  "the subject stage for this subject.") from err
        match = re.search(r"study-([^/\\]+)", str(Path(path).parent))
        row = {k: qc.get(k) for k in QC_COLUMNS}
        row["study_id"] = str(qc.get("study_id") or (match.group(1) if match else "n/a"))
        pid = str(qc.get("participant_id") or Path(path).name.split("_")[0])
        row["participant_id"] = pid if pid.startswith("sub-") else f"sub-{pid}"
        row["include"] = bool(qc.get("include"))
        rows.append(row)
    table = pd.DataFrame(rows, columns=QC_COLUMNS)
    groups = _participant_groups(participants)
    table["group"] = [groups.get((s, p), "n/a") for s, p in
                      zip(table["study_id"], table["participant_id"])]
    for col in QC_COLUMNS[5:]:
        if col not in ("fd_source",):
            table[col] = pd.to_numeric(table[col], errors="coerce")
    return table.sort_values(["study_id", "participant_id"], kind="stable").reset_index(drop=True)


def _participant_groups(participants: dict | None) -> dict:
    import pandas as pd

    out = {}
    for study, path in (participants or {}).items():
        part = pd.read_csv(path, sep="\t", na_values=["n/a"], dtype={"participant_id": str})
        if {"participant_id", "group"} - set(part.columns):
            raise MsnetInputError(f"{path}: participants table of study {study} needs "
                                  "participant_id and group columns.")
        for pid, group in part[["participant_id", "group"]].itertuples(index=False):
            out[(str(study), str(pid))] = str(group) if pd.notna(group) else "n/a"
    return out




def summarise_study_qc(qc_jsons, participants_tsv, study_id: str, out_tsv) -> None:
    """Write one study's subject QC as one table (:func:`qc_summary`, :data:`QC_COLUMNS`).

    The study table is what later stages and the report depend on, so the workflow's graph
    has one edge per study instead of one per subject file (thousands at full scale).

    Parameters
    ----------
    qc_jsons : list of path
        The study's ``sub-{label}_qc.json`` files.
    participants_tsv : path
        The study's participants.tsv (adds ``group``).
    study_id : str
    out_tsv : path
        Output TSV, written atomically.
    """
    from msnet.derivatives import write_table

    write_table(qc_summary(qc_jsons, {study_id: participants_tsv}), out_tsv)


def read_study_qc(paths):
    """Read and stack the tables :func:`summarise_study_qc` wrote.

    Parameters
    ----------
    paths : list of path
        ``study-{study}_desc-subjects_qc.tsv`` files.

    Returns
    -------
    pandas.DataFrame
        :data:`QC_COLUMNS`, sorted by study and participant, ``include`` boolean.
    """
    import pandas as pd

    frames = [pd.read_csv(p, sep="\t", na_values=["n/a"], keep_default_na=False,
                          dtype={"study_id": str, "participant_id": str, "group": str})
              for p in paths]
    table = pd.concat(frames, ignore_index=True).reindex(columns=QC_COLUMNS)
    table["include"] = table["include"].astype(str).str.lower().eq("true")
    table["group"] = table["group"].fillna("n/a")
    return table.sort_values(["study_id", "participant_id"], kind="stable").reset_index(drop=True)
