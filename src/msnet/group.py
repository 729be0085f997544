"""MS versus healthy controls: per study and pooled, network level and voxelwise.

Stage 3 of the workflow. For every analysis network (DMN, SMN, VN, SN):

* **network level** (the subjects' ``*_networks.tsv``): within-network FC of each analysis
  network (primary) and the between-network FC of each pair of analysis networks, modelled as
  ``metric ~ group + covariates`` (default ``age + sex + mean_fd``);
* **voxelwise** inside the network's mask (:func:`network_mask`), on the dual-regression
  stage-2 maps, with the same model at every voxel.

Per study (:func:`compare_groups_study`): OLS; n per group, raw and covariate-adjusted means,
t, p, and Hedges' g = J β / σ_res (adjusted difference over the residual SD) with its exact
variance (:func:`msnet.stats.g_from_beta`) — the inputs of the meta-analysis, on the same scale
as the pooled model's g, so meta and mega estimate the same quantity. ``group.effect_size: t``
instead derives d from the adjusted t (``d = t sqrt(1/n_ms + 1/n_hc)``, two-group formulas of
:func:`msnet.stats.hedges_g`), which equals ``(β / σ_res) sqrt(1 - R²)`` (R² of group on the
covariates): it shrinks towards 0 when MS and HC differ in age or another covariate. Pooled
(:func:`compare_groups_pooled`, a mega-analysis of all subjects): statsmodels ``MixedLM``
with a random intercept per study at network level; voxelwise OLS with one indicator per
study and permutation FWE (voxel max-t, cluster size, optional TFCE), FDR q maps and cluster
tables.

Subjects are matched across files by their folder and ``sub-<label>`` file-name prefix (the
subject stage writes all of a subject's files into one folder). Nothing degenerate crashes a
run: subjects failing QC, maps that are all zero, all NaN or hold inf inside a network mask,
studies with fewer than ``min_per_group`` subjects in a group, and covariates missing or
constant in a study are skipped and recorded (``*_desc-exclusions.tsv`` and the ``status``/
``reason``/``covariates_dropped`` columns).

Voxels without signal are NaN in a subject's maps (constant BOLD, see :mod:`msnet.connectivity`),
never 0. A voxelwise model uses only the voxels where every subject in it has a value (as
FSL ``randomise`` and SPM do with the intersection of the subjects' masks); the other voxels are
NaN in its output maps, so the meta-analysis leaves that study out there, and their number and
the subjects lacking them are recorded (level ``voxels`` in the exclusions table). Subjects with
many such voxels are excluded at QC (``qc.max_pct_flat_voxels``).

Conventions: group is coded MS = 1, HC = 0, so positive effects mean MS > HC; covariates are
centred within study, so the intercept is the HC mean at the sample's covariate means.
"""

from __future__ import annotations

import json
import logging
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from msnet import ANALYSIS_NETWORKS
from msnet import stats as st
from msnet.errors import MsnetInputError
from msnet.derivatives import save_map, write_table
from msnet.io.plan import map_name, mask_name, space_of

LOG = logging.getLogger(__name__)

GROUP_DEFAULTS = {
    "covariates": ["age", "sex", "mean_fd"],
    "min_per_group": 2,
    "min_residual_df": 10,
    "mask_template_threshold": 0.2,
    "mask_t_threshold": 5.0,
    "effect_size": "beta",
    "harmonize": "none",
    **st.INFERENCE_DEFAULTS,
}
"""Options of the ``group`` config section (see the module docstring and the report)."""

EFFECT_SIZES = ("beta", "t")
"""Per-study effect sizes (``group.effect_size``): ``beta`` = ``J β / σ_res`` with its exact
variance (:func:`msnet.stats.g_from_beta`, the quantity the pooled model estimates); ``t`` =
``d = t sqrt(1/n_ms + 1/n_hc)`` (:func:`msnet.stats.d_from_t`, smaller by ``sqrt(1 - R²)``
when the groups differ in a covariate)."""

EXCLUSION_COLUMNS = ["study_id", "participant_id", "group", "level", "scope", "reason"]
NA = "n/a"


# --------------------------------------------------------------------------- metrics


def analysis_metrics(networks=ANALYSIS_NETWORKS) -> pd.DataFrame:
    """Return the network-level metrics: within each network, then between each pair.

    Returns
    -------
    pandas.DataFrame
        Columns ``metric`` (``within_DMN``, ``between_DMN_SMN``, ...), ``network_a``,
        ``network_b``, ``kind`` (``within``/``between``).
    """
    rows = [(f"within_{a}", a, a, "within") for a in networks]
    rows += [(f"between_{a}_{b}", a, b, "between") for a, b in combinations(networks, 2)]
    return pd.DataFrame(rows, columns=["metric", "network_a", "network_b", "kind"])


def _read_network_metrics(path, metrics: pd.DataFrame) -> dict:
    """Return metric -> mean Fisher z from one subject's ``*_networks.tsv`` (NaN if absent)."""
    table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    missing = {"network_a", "network_b", "fc_z"} - set(table.columns)
    if missing:
        raise MsnetInputError(f"{path}: column(s) {', '.join(sorted(missing))} missing; a "
                              "networks table needs network_a, network_b, fc_z.")
    lookup = {}
    for a, b, v in table[["network_a", "network_b", "fc_z"]].itertuples(index=False):
        lookup.setdefault((a, b), v)
        lookup.setdefault((b, a), v)
    return {m.metric: float(lookup.get((m.network_a, m.network_b), np.nan))
            for m in metrics.itertuples()}


# --------------------------------------------------------------------------- loading


def _subject_key(path) -> tuple[str, str]:
    """(folder, ``sub-<label>``) of a subject-stage file."""
    path = Path(path)
    prefix = path.name.split("_")[0]
    if not prefix.startswith("sub-"):
        raise MsnetInputError(f"{path}: file name does not start with 'sub-<label>_'; cannot "
                              "tell which subject it belongs to.")
    return str(path.parent.resolve()), prefix


def _index_files(paths, what: str) -> dict:
    """Map subject key -> path; error on duplicates."""
    index = {}
    for path in paths or ():
        key = _subject_key(path)
        if key in index:
            raise MsnetInputError(f"two {what} for {key[1]} in {key[0]}: {index[key]} and "
                                  f"{path}. Pass one file per subject.")
        index[key] = str(path)
    return index


def load_subjects(participants_tsvs: dict, qc_jsons, networks_tsvs=(), maps=None):
    """Assemble one row per subject with group, covariates, QC, network metrics and map paths.

    Parameters
    ----------
    participants_tsvs : dict
        study_id -> ``participants.tsv`` path.
    qc_jsons : list of path
        Subject QC files (``sub-*_qc.json``); each names its ``study_id`` and
        ``participant_id``.
    networks_tsvs : list of path
        Subject ``*_networks.tsv`` files (may be empty).
    maps : dict, optional
        Network -> list of stage-2 map paths.

    Returns
    -------
    subjects : pandas.DataFrame
        ``study_id, participant_id, group``, every participants.tsv column, numeric QC keys
        (``mean_fd`` ...), ``include`` (QC decision, also False when the participant is not in
        participants.tsv), ``stage2_units`` (the subject stage's
        ``connectivity.stage2_units``, None if not recorded), one column per metric of
        :func:`analysis_metrics`, and ``map_{net}`` paths.
    exclusions : list of dict
        Subjects left out at this stage (QC, not in participants.tsv, no subject outputs).
    """
    from msnet.io.tables import read_participants

    metrics = analysis_metrics()
    tables = {s: read_participants(p, s) for s, p in participants_tsvs.items()}
    nets_index = _index_files(networks_tsvs, "networks tables")
    map_index = {net: _index_files(paths, f"{net} maps") for net, paths in (maps or {}).items()}
    rows, exclusions, seen = [], [], set()
    for path in qc_jsons:
        qc = json.loads(Path(path).read_text())
        key = _subject_key(path)
        study = str(qc.get("study_id", next(iter(tables)) if len(tables) == 1 else ""))
        pid = qc.get("participant_id") or key[1]
        pid = pid if pid.startswith("sub-") else f"sub-{pid}"
        if study not in tables:
            raise MsnetInputError(f"{path}: study_id {study!r} is not one of the studies given "
                                  f"({', '.join(tables)}). Pass the matching participants.tsv.")
        if (study, pid) in seen:
            raise MsnetInputError(f"{path}: a second QC file for {pid} of study {study}.")
        seen.add((study, pid))
        part = tables[study]
        match = part[part["participant_id"] == pid]
        row = {"study_id": study, "participant_id": pid, "include": bool(qc.get("include"))}
        row.update({k: v for k, v in qc.items() if isinstance(v, (int, float))
                    and not isinstance(v, bool) and k not in row})
        conn = qc.get("connectivity")
        row["stage2_units"] = conn.get("stage2_units") if isinstance(conn, dict) else None
        if match.empty:
            row.update(include=False, group=NA)
            exclusions.append(exclusion_record(study, pid, NA, "subject", "all",
                                               "not in participants.tsv"))
        else:
            row.update(match.iloc[0].to_dict())
            if not row["include"]:
                why = f"QC: {qc.get('exclusion_reason') or 'excluded'}"
                exclusions.append(exclusion_record(study, pid, row["group"], "subject", "all",
                                                   why))
        if row["include"] and networks_tsvs:
            row.update(_read_network_metrics(_need(nets_index, key, "networks table"), metrics))
        for net, index in map_index.items():
            row[f"map_{net}"] = index.get(key)
            if row["include"] and row[f"map_{net}"] is None:
                raise MsnetInputError(f"no {net} map for {pid} of study {study} ({key[0]}); "
                                      "pass every included subject's maps.")
        rows.append(row)
    for study, part in tables.items():
        for pid, group in part[["participant_id", "group"]].itertuples(index=False):
            if (study, pid) not in seen:
                exclusions.append(exclusion_record(study, pid, group, "subject", "all",
                                                   "no subject-stage outputs (no QC file)"))
    subjects = pd.DataFrame(rows)
    for m in metrics.metric:
        if m not in subjects:
            subjects[m] = np.nan
    return subjects, exclusions


STANDARDIZED_WARNING = (
    "the stage-2 maps are in standardized units (connectivity.stage2_units: standardized): "
    "partial standardised coefficients fall as voxel noise rises at a fixed network amplitude, "
    "so they mix connectivity with temporal SNR, and an MS-vs-HC difference in noise or motion "
    "appears as a connectivity difference. Use connectivity.stage2_units: psc for group "
    "comparisons.")
"""Warning of :func:`warn_standardized_units`."""


def warn_standardized_units(subjects: pd.DataFrame) -> bool:
    """Warn (log and ``UserWarning``) when any subject's maps are in standardized units.

    Returns True when it warned.
    """
    import warnings

    units = subjects.get("stage2_units")
    if units is None or not (units == "standardized").any():
        return False
    LOG.warning("MS vs HC: %s", STANDARDIZED_WARNING)
    warnings.warn(f"MS vs HC: {STANDARDIZED_WARNING}", UserWarning, stacklevel=2)
    return True


def _need(index: dict, key, what: str) -> str:
    if key not in index:
        raise MsnetInputError(f"no {what} for {key[1]} in {key[0]}; pass every included "
                              "subject's subject-stage outputs.")
    return index[key]


def exclusion_record(study, pid, group, level, scope, reason) -> dict:
    """One row of an exclusions table (:data:`EXCLUSION_COLUMNS`)."""
    return dict(zip(EXCLUSION_COLUMNS, (study, pid, group, level, scope, reason)))


def exclusion_table(records) -> pd.DataFrame:
    """Collapse exclusion records (one row per study, subject, level and reason; scopes joined)."""
    table = pd.DataFrame(list(records), columns=EXCLUSION_COLUMNS)
    if table.empty:
        return table
    keys = ["study_id", "participant_id", "group", "level", "reason"]
    out = (table.groupby(keys, sort=False, dropna=False)["scope"]
           .agg(lambda s: ",".join(dict.fromkeys(s))).reset_index())
    return out[EXCLUSION_COLUMNS]


def load_masked_maps(paths, mask_img):
    """Load 3-D maps inside a mask; flag maps that cannot be used there.

    NaN marks a voxel without signal (kept: voxelwise models leave such voxels out, see
    :func:`complete_voxels`); a map is unusable when it holds inf, has no finite value or is
    all zero inside the mask.

    Parameters
    ----------
    paths : list of path
    mask_img : nibabel.Nifti1Image
        Boolean mask on the maps' grid.

    Returns
    -------
    Y : numpy.ndarray, shape (n_paths, n_voxels), float32
    reasons : list of (str or None)
        Why each map is unusable, or None.
    """
    import nibabel as nib

    mask = np.asarray(mask_img.dataobj) > 0
    Y = np.zeros((len(paths), int(mask.sum())), np.float32)
    reasons = []
    for i, path in enumerate(paths):
        img = nib.load(path)
        if img.shape[:3] != mask.shape or not np.allclose(img.affine, mask_img.affine,
                                                         atol=1e-3):
            raise MsnetInputError(f"{path}: grid {img.shape} does not match the network mask "
                                  f"grid {mask.shape} (shape or affine). Maps and masks must "
                                  "be on the same analysis grid.")
        Y[i] = np.asarray(img.dataobj, np.float32).reshape(mask.shape)[mask]
        finite = np.isfinite(Y[i])
        reasons.append("map has inf inside the network mask" if np.isinf(Y[i]).any()
                       else "map is NaN everywhere inside the network mask (no signal)"
                       if not finite.any()
                       else "map is all zero inside the network mask" if not Y[i][finite].any()
                       else None)
    return Y, reasons


def complete_voxels(Y, subjects: pd.DataFrame, scope: str, study=NA):
    """Voxels where every subject of a voxelwise model has a value (finite map value).

    Parameters
    ----------
    Y : numpy.ndarray, shape (n, V)
        The model's subjects' maps (NaN: no signal at that voxel in that subject).
    subjects : pandas.DataFrame
        The same n subjects (``participant_id``).
    scope : str
        Exclusions-table scope (``map:<net>``...).
    study : str
        Exclusions-table study (``pooled`` for pooled models).

    Returns
    -------
    keep : numpy.ndarray of bool, shape (V,)
    records : list of dict
        One ``voxels``-level exclusion record when voxels are left out.
    """
    finite = np.isfinite(Y)
    keep = finite.all(axis=0)
    n_out = int(keep.size - keep.sum())
    if not n_out:
        return keep, []
    lacking = [pid for pid, row in zip(subjects["participant_id"], finite) if not row.all()]
    listed = ", ".join(lacking[:10]) + (f" and {len(lacking) - 10} more" if len(lacking) > 10
                                        else "")
    return keep, [exclusion_record(study, NA, NA, "voxels", scope,
                                   f"{n_out} of {keep.size} voxels left out (NaN in the maps): "
                                   f"no signal there in {len(lacking)} subject(s): {listed}")]


def _expand(values: dict, keep) -> dict:
    """Maps computed over the ``keep`` voxels, back over all voxels (NaN elsewhere)."""
    out = {}
    for name, v in values.items():
        full = np.full(keep.shape, np.nan)
        full[keep] = v
        out[name] = full
    return out


def _restrict(mask_img, keep):
    """The mask image of the ``keep`` voxels (same grid)."""
    import nibabel as nib

    mask = np.asarray(mask_img.dataobj) > 0
    sub = np.zeros(mask.shape, np.uint8)
    sub[mask] = keep
    return nib.Nifti1Image(sub, mask_img.affine)


# --------------------------------------------------------------------------- network masks


def network_mask(template_row, maps_all_subjects, template_threshold: float = 0.2,
                 t_threshold: float = 5.0) -> np.ndarray:
    """Voxels analysed for one network: atlas template OR strong group-level loading.

    ``mask = (template > template_threshold) | (t > t_threshold)`` where ``t`` is the
    one-sample t of the subjects' stage-2 maps (all included subjects of all studies, MS and
    HC together, so the mask is unbiased for the MS-vs-HC contrast). Like an ICA component
    mask, the data-driven part adds voxels where the network is actually expressed (e.g. the
    nodes around published findings) beyond the prior template. Note that t grows with the
    number of subjects, so with very large samples the data-driven part is generous.

    Parameters
    ----------
    template_row : numpy.ndarray, shape (V,)
        Network template over the voxels (peak 1, :func:`msnet.atlas.network_templates`).
    maps_all_subjects : array (n, V) or iterable of arrays (V,)
        Stage-2 maps over the same voxels (streamed: an iterator is consumed once).
    template_threshold : float
        Template level (0-1) above which a voxel is in the mask.
    t_threshold : float
        One-sample t above which a voxel is in the mask.

    Returns
    -------
    numpy.ndarray of bool, shape (V,)
    """
    template_row = np.asarray(template_row, float)
    n, s, ss = (np.zeros(template_row.shape) for _ in range(3))
    for row in maps_all_subjects:
        row = np.asarray(row, float)
        ok = np.isfinite(row)  # NaN: no signal in this subject's voxel
        row = np.where(ok, row, 0.0)
        n, s, ss = n + ok, s + row, ss + row * row
    mask = template_row > template_threshold
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s / n
        sd = np.sqrt(np.maximum(ss - n * mean**2, 0.0) / (n - 1))
        t = np.where((n >= 2) & (sd > 0), mean / sd * np.sqrt(n), 0.0)
    mask |= t > t_threshold
    return mask


def make_network_masks(qc_jsons, maps: dict, out_dir, options=None, brain_mask=None) -> dict:
    """Write ``{out_dir}/network-{net}_space-{space}_mask.nii.gz`` for each network (see
    :func:`network_mask`); the space is the maps' (:func:`msnet.io.plan.space_of`).

    Parameters
    ----------
    qc_jsons : list of path
        QC files of all subjects (only ``include: true`` subjects are used).
    maps : dict
        Network -> list of stage-2 map paths (all studies).
    out_dir : path
        Output folder (``results/group/masks``).
    options : dict
        ``group`` options; uses ``mask_template_threshold`` and ``mask_t_threshold``.
    brain_mask : path, optional
        Analysis mask on the maps' grid. Default: voxels non-zero in any included map.

    Returns
    -------
    dict
        Network -> written path.
    """
    import nibabel as nib

    from msnet.atlas import network_names, network_templates

    opts = st.resolve_options(options, GROUP_DEFAULTS, "group")
    included = {_subject_key(p) for p in qc_jsons
                if json.loads(Path(p).read_text()).get("include")}
    out = {}
    for net in [n for n in ANALYSIS_NETWORKS if n in maps]:
        paths = [p for p in maps[net] if _subject_key(p) in included]
        if not paths:
            raise MsnetInputError(f"no included subject has a {net} map; cannot build its mask.")
        ref = nib.load(paths[0])
        support = (np.asarray(nib.load(brain_mask).dataobj) > 0 if brain_mask
                   else _nonzero_support(paths))
        support_img = nib.Nifti1Image(support.astype(np.uint8), ref.affine)
        names, templates = network_templates(support_img)
        Y, reasons = load_masked_maps(paths, support_img)
        good = [i for i, r in enumerate(reasons) if r is None]
        for i, r in enumerate(reasons):
            if r:
                LOG.info("mask %s: skipping %s (%s)", net, paths[i], r)
        keep = network_mask(templates[network_names().index(net)], Y[good],
                            opts["mask_template_threshold"], opts["mask_t_threshold"])
        vol = np.zeros(support.shape, np.uint8)
        vol[support] = keep
        path = Path(out_dir) / mask_name(net, space_of(paths))
        save_map(nib.Nifti1Image(vol, ref.affine), path)
        LOG.info("mask %s: %d voxels from %d subjects", net, int(keep.sum()), len(good))
        out[net] = str(path)
    return out


def _nonzero_support(paths) -> np.ndarray:
    """Voxels that are finite and non-zero in at least one map."""
    import nibabel as nib

    support = None
    for path in paths:
        data = np.asarray(nib.load(path).dataobj, np.float32)
        nz = np.isfinite(data) & (data != 0)
        support = nz if support is None else support | nz
    return support


# --------------------------------------------------------------------------- network level


def metric_sample(subjects: pd.DataFrame, metric: str, scope: str):
    """Rows with a finite value of ``metric``, plus exclusion records for the others."""
    ok = np.isfinite(pd.to_numeric(subjects[metric], errors="coerce"))
    records = [exclusion_record(r.study_id, r.participant_id, r.group, "subject", scope,
                                "value missing or not finite")
               for r in subjects[~ok].itertuples()]
    data = subjects[ok].copy()
    data["group_ms"] = (data["group"] == "MS").astype(float)
    return data, records


def design_records(design: st.Design, data: pd.DataFrame, scope: str, study=NA) -> list:
    """Exclusion records for listwise-dropped subjects and dropped covariates."""
    records = [exclusion_record(data.at[i, "study_id"], data.at[i, "participant_id"],
                                data.at[i, "group"], "subject", scope, reason)
               for i, reason in design.excluded.items()]
    records += [exclusion_record(study, NA, NA, "covariate", scope, f"{cov}: {why}")
                for cov, why in design.notes.items()]
    return records


def _group_counts(design: st.Design) -> tuple[int, int]:
    ms = design.X[:, design.col("group_ms")]
    return int((ms == 1).sum()), int((ms == 0).sum())


def _too_small(n_ms: int, n_hc: int, design: st.Design, min_per_group: int) -> str | None:
    """Why a two-group model cannot be fitted, or None."""
    if min(n_ms, n_hc) < min_per_group:
        return f"fewer than {min_per_group} subjects in a group (MS {n_ms}, HC {n_hc})"
    if design.problem:
        return design.problem
    if design.X.shape[0] - design.X.shape[1] < 1:
        return f"no residual degrees of freedom (n {design.X.shape[0]}, {design.X.shape[1]} " \
               "parameters)"
    return None


def _raw_summary(y, is_ms) -> dict:
    out = {}
    for name, sel in (("ms", is_ms == 1), ("hc", is_ms == 0)):
        out[f"mean_{name}"] = float(np.mean(y[sel])) if sel.any() else np.nan
        out[f"sd_{name}"] = float(np.std(y[sel], ddof=1)) if sel.sum() > 1 else np.nan
    return out


def _effect_columns(d, g, var_g, level) -> dict:
    lo, hi = st.confidence_interval(g, np.sqrt(var_g), level)
    return {"d": float(d), "g": float(g), "var_g": float(var_g), "g_ci_low": float(lo),
            "g_ci_high": float(hi)}


def contrast_variance(X, k: int) -> float:
    """``[(X'X)^-1]_kk``: the variance of the OLS coefficient ``k`` in units of σ²."""
    pinv = np.linalg.pinv(np.asarray(X, float))
    return float(pinv[k] @ pinv[k])


def check_effect_size(effect_size: str) -> str:
    """Validate ``group.effect_size`` (:data:`EFFECT_SIZES`)."""
    if effect_size not in EFFECT_SIZES:
        raise MsnetInputError(f"config section 'group': option 'effect_size' = {effect_size!r} "
                              f"is invalid; use one of {list(EFFECT_SIZES)}.")
    return effect_size


def study_effect_sizes(r: st.OLSResult, design: st.Design, effect_size: str = "beta"):
    """Per-study Hedges' g and var(g) of ``group_ms`` from an OLS fit (every column of ``r``).

    ``beta`` (default): :func:`msnet.stats.g_from_beta` with ``c = [(X'X)^-1]_group`` and the
    residual df. ``t``: ``d = t sqrt(1/n_ms + 1/n_hc)`` and :func:`msnet.stats.hedges_g`.

    Returns
    -------
    d, g, var_g : numpy.ndarray, shape (V,)
    """
    n_ms, n_hc = _group_counts(design)
    if check_effect_size(effect_size) == "t":
        d = st.d_from_t(r.t, n_ms, n_hc)
        return (d, *st.hedges_g(d, n_ms, n_hc))
    c = contrast_variance(design.X, design.col("group_ms"))
    return st.g_from_beta(r.effect, r.sigma, c, r.df)


def _covariate_columns(design: st.Design) -> dict:
    return {"covariates": ",".join(design.covariates_used),
            "covariates_dropped": "; ".join(f"{k}: {v}" for k, v in design.notes.items())}


def study_group_effects(subjects: pd.DataFrame, covariates, min_per_group: int = 2,
                        level: float = 0.95, study_id=NA, min_residual_df: int = 0,
                        effect_size: str = "beta"):
    """Per-study MS-vs-HC OLS for every network metric.

    ``metric ~ group + covariates`` (OLS, covariates centred). Hedges' g (see
    :func:`study_effect_sizes`): by default ``g = J β / σ_res`` with its exact variance
    (:func:`msnet.stats.g_from_beta`), unbiased for the adjusted difference in residual-SD
    units whatever the covariate imbalance (the pooled model's quantity); ``effect_size="t"``
    uses ``d = t sqrt(1/n_ms + 1/n_hc)``. Without covariates both give g from the raw means
    and pooled SD (the variances differ slightly: exact versus Borenstein's approximation).

    Parameters
    ----------
    subjects : pandas.DataFrame
        Included subjects of one study (:func:`load_subjects` rows with ``include``).
    covariates : list of str
    min_per_group : int
        Minimum subjects per group; otherwise the row is ``status = excluded``.
    level : float
        Confidence level of the CIs.
    study_id : str
    min_residual_df : int
        Covariates that would leave fewer residual degrees of freedom are not adjusted for
        (recorded; see :func:`msnet.stats.build_design`).
    effect_size : {"beta", "t"}
        How g is computed (:data:`EFFECT_SIZES`).

    Returns
    -------
    table : pandas.DataFrame
        One row per metric, columns :data:`STUDY_COLUMNS`: ``study_id, metric, network_a,
        network_b, kind, method, n_ms, n_hc, mean_ms, sd_ms, mean_hc, sd_hc`` (raw),
        ``adjmean_ms, adjmean_hc`` (at the covariate means), ``beta`` (MS - HC), ``se, t, df,
        p, beta_ci_low, beta_ci_high, d, g, var_g, g_ci_low, g_ci_high, q_fdr`` (BH within
        the within/between family), ``effect_size`` (beta/t), ``covariates,
        covariates_dropped, status`` (ok/excluded), ``reason``.
    exclusions : list of dict
    """
    rows, records = [], []
    for m in analysis_metrics().itertuples():
        data, rec = metric_sample(subjects, m.metric, f"metric:{m.metric}")
        design = st.build_design(data, ["group_ms"], covariates,
                                 min_residual_df=min_residual_df)
        rec += design_records(design, data, f"metric:{m.metric}", study_id)
        n_ms, n_hc = _group_counts(design)
        row = {"study_id": study_id, "metric": m.metric, "network_a": m.network_a,
               "network_b": m.network_b, "kind": m.kind, "method": "OLS", "n_ms": n_ms,
               "n_hc": n_hc, **_covariate_columns(design)}
        y = data.loc[design.index, m.metric].to_numpy(float)
        row.update(_raw_summary(y, design.X[:, design.col("group_ms")]))
        reason = _too_small(n_ms, n_hc, design, min_per_group)
        if reason:
            rec.append(exclusion_record(study_id, NA, NA, "study", f"metric:{m.metric}",
                                        reason))
            rows.append({**row, "status": "excluded", "reason": reason})
            records += rec
            continue
        c = np.eye(design.X.shape[1])[design.col("group_ms")]
        r = st.ols(y, design.X, c)
        lo, hi = st.confidence_interval(r.effect[0], r.se[0], level, r.df)
        d, g, var_g = study_effect_sizes(r, design, effect_size)
        row.update(adjmean_hc=r.beta[0, 0], adjmean_ms=r.beta[0, 0] + r.effect[0],
                   beta=r.effect[0], se=r.se[0], t=r.t[0], df=r.df, p=r.p[0],
                   beta_ci_low=float(lo), beta_ci_high=float(hi),
                   **_effect_columns(d[0], g[0], var_g[0], level), effect_size=effect_size,
                   status="ok", reason="")
        rows.append(row)
        records += rec
    return finish_table(rows, STUDY_COLUMNS), records


_COMMON = ["study_id", "metric", "network_a", "network_b", "kind", "method", "n_ms", "n_hc"]
_STATS = ["mean_ms", "sd_ms", "mean_hc", "sd_hc", "adjmean_ms", "adjmean_hc", "beta", "se"]
_EFFECT = ["p", "beta_ci_low", "beta_ci_high", "d", "g", "var_g", "g_ci_low", "g_ci_high",
           "q_fdr"]
_TAIL = ["covariates", "covariates_dropped", "status", "reason"]
STUDY_COLUMNS = _COMMON + _STATS + ["t", "df"] + _EFFECT + ["effect_size"] + _TAIL
"""Columns of the per-study MS-vs-HC table."""
POOLED_COLUMNS = (_COMMON + ["n_studies"] + _STATS + ["z"] + _EFFECT
                  + ["tau2", "converged", "note"] + _TAIL)
"""Columns of the pooled MS-vs-HC table."""


def finish_table(rows, columns) -> pd.DataFrame:
    """Table with exactly ``columns`` (NaN where a row has no value) and BH-FDR ``q_fdr``
    computed within each ``kind`` family (within-network, between-network)."""
    table = pd.DataFrame(rows).reindex(columns=columns)
    for _, idx in table.groupby("kind").groups.items():
        table.loc[idx, "q_fdr"] = st.fdr_bh(table.loc[idx, "p"].to_numpy(float))
    return table


def pooled_group_effects(subjects: pd.DataFrame, covariates, min_per_group: int = 2,
                         level: float = 0.95):
    """Pooled MS-vs-HC model for every network metric: MixedLM with study random intercept.

    ``metric ~ group + covariates + (1 | study)`` (REML; OLS when only one study is left).
    Covariates are centred within study (set to 0 in a study that lacks them or where they
    are constant, recorded). The effect size is ``d = beta / sigma`` with ``sigma`` the
    residual (within-study) SD and ``g = J d``, the same quantity as the per-study g
    (:func:`msnet.stats.g_from_beta` with ``c = se² / sigma²`` and the within-study residual
    df ``n - p - (n_studies - 1)``).

    Returns
    -------
    table : pandas.DataFrame
        One row per metric, columns :data:`POOLED_COLUMNS` (as :func:`study_group_effects`
        with ``n_studies`` and the Wald ``z`` instead of ``t, df``, plus ``tau2`` (random
        intercept variance), ``converged`` and ``note`` (fit warnings)).
    exclusions : list of dict
    """
    rows, records = [], []
    for m in analysis_metrics().itertuples():
        data, rec = metric_sample(subjects, m.metric, f"metric:{m.metric}")
        design = st.build_design(data, ["group_ms"], covariates, study_col="study_id")
        rec += design_records(design, data, f"metric:{m.metric}", "pooled")
        n_ms, n_hc = _group_counts(design)
        y = data.loc[design.index, m.metric].to_numpy(float)
        row = {"study_id": "pooled", "metric": m.metric, "network_a": m.network_a,
               "network_b": m.network_b, "kind": m.kind, "n_ms": n_ms, "n_hc": n_hc,
               "n_studies": len(set(design.studies)), **_covariate_columns(design),
               **_raw_summary(y, design.X[:, design.col("group_ms")])}
        reason = _too_small(n_ms, n_hc, design, min_per_group)
        if reason:
            rows.append({**row, "status": "excluded", "reason": reason})
            records += rec + [exclusion_record("pooled", NA, NA, "study", f"metric:{m.metric}",
                                               reason)]
            continue
        fit = st.fit_pooled(y, design, "group_ms", level)
        d, g, var_g = pooled_effect_size(fit, design)
        row.update({k: fit[k] for k in ("method", "beta", "se", "z", "p", "tau2", "converged",
                                        "note")},
                   beta_ci_low=fit["ci_low"], beta_ci_high=fit["ci_high"],
                   adjmean_hc=fit["intercept"], adjmean_ms=fit["intercept"] + fit["beta"],
                   **_effect_columns(d, g, var_g, level), status="ok", reason="")
        rows.append(row)
        records += rec
    return finish_table(rows, POOLED_COLUMNS), records


def pooled_effect_size(fit: dict, design: st.Design):
    """(d, g, var g) of a :func:`msnet.stats.fit_pooled` result: ``J β / σ_res`` with
    ``c = se² / σ²`` and the within-study residual df (:func:`msnet.stats.g_from_beta`)."""
    scale = fit["scale"]
    n_studies = len(set(design.studies))
    df = design.X.shape[0] - design.X.shape[1] - (n_studies - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = fit["se"] ** 2 / scale
    d, g, var_g = st.g_from_beta(fit["beta"], np.sqrt(scale), c, df)
    return float(d), float(g), float(var_g)


# --------------------------------------------------------------------------- voxelwise


def voxelwise_group_study(Y, design: st.Design, effect_size: str = "beta") -> dict:
    """Per-study voxelwise MS-vs-HC OLS: t, Hedges' g and var(g) maps (as at network level,
    :func:`study_effect_sizes`).

    Parameters
    ----------
    Y : numpy.ndarray, shape (n, V)
        Maps of the design's subjects over the network mask.
    design : msnet.stats.Design
        With a ``group_ms`` column.
    effect_size : {"beta", "t"}
        How g is computed (:data:`EFFECT_SIZES`).

    Returns
    -------
    dict
        ``t, g, varg, p`` arrays of shape (V,).
    """
    r = st.ols(Y, design.X, np.eye(design.X.shape[1])[design.col("group_ms")])
    _, g, var_g = study_effect_sizes(r, design, effect_size)
    return {"t": r.t, "g": g, "varg": var_g, "p": r.p}


def permutation_inference(Y, design: st.Design, term: str, mask, opts: dict, seed):
    """Run :func:`msnet.stats.permuted_glm` for ``term`` with study indicators as confounds.

    Parameters
    ----------
    Y : numpy.ndarray, shape (n, V)
    design : msnet.stats.Design
        Pooled design (``study_col`` given).
    term : str
        Tested column.
    mask : numpy.ndarray of bool
        3-D voxel grid of ``Y``'s columns.
    opts : dict
        Inference options (:data:`msnet.stats.INFERENCE_DEFAULTS`).
    seed : int or sequence of int
        Seed for ``numpy.random.default_rng``.

    Returns
    -------
    msnet.stats.PermutationResult
    """
    X, cols = design.with_study_dummies()
    k = cols.index(term)
    return st.permuted_glm(
        Y, X[:, k], np.delete(X, k, axis=1), n_perm=int(opts["n_permutations"]), seed=seed,
        two_sided=bool(opts["two_sided"]), mask=mask,
        cluster_forming_p=opts["cluster_forming_p"] or None,
        connectivity=int(opts["cluster_connectivity"]), tfce=bool(opts["tfce"]),
        blocks=design.studies if opts["permute_within_study"] else None,
        n_jobs=int(opts["n_jobs"]))


def save_maps(values: dict, mask_img, prefix: Path, space: str) -> list:
    """Write ``{prefix}_space-{space}_stat-{name}_map.nii.gz`` per map (q maps are 1 outside
    the mask; names from :func:`msnet.io.plan.map_name`)."""
    import nibabel as nib

    mask = np.asarray(mask_img.dataobj) > 0
    written = []
    for name, v in values.items():
        vol = np.full(mask.shape, 1.0 if name == "fdrq" else 0.0, np.float32)
        vol[mask] = v
        path = prefix.parent / map_name(prefix.name, name, space)
        save_map(nib.Nifti1Image(vol, mask_img.affine), path)
        written.append(str(path))
    return written


def map_sample(subjects: pd.DataFrame, net: str, mask_img):
    """Load the network maps of the included subjects; drop unusable ones (recorded)."""
    Y, reasons = load_masked_maps(list(subjects[f"map_{net}"]), mask_img)
    ok = np.array([r is None for r in reasons], bool)
    records = [exclusion_record(r.study_id, r.participant_id, r.group, "subject", f"map:{net}",
                                why)
               for r, why in zip(subjects.itertuples(), reasons) if why]
    data = subjects[ok].copy()
    data["group_ms"] = (data["group"] == "MS").astype(float)
    return data, Y[ok], records


def load_network_masks(network_masks: dict, maps: dict) -> dict:
    """Load the mask image of every analysis network that has maps (network -> image)."""
    import nibabel as nib

    nets = [n for n in ANALYSIS_NETWORKS if n in (maps or {})]
    missing = [n for n in nets if n not in network_masks]
    if missing:
        raise MsnetInputError(f"no network mask given for {', '.join(missing)}; run "
                              "make_network_masks first and pass its outputs.")
    return {n: nib.load(network_masks[n]) for n in nets}


# --------------------------------------------------------------------------- file level


def compare_groups_study(participants_tsv, qc_jsons, networks_tsvs, maps, network_masks,
                         study_id, out_dir, options=None) -> dict:
    """MS vs HC in one study: network-level table and voxelwise t/g/var(g) maps.

    Parameters
    ----------
    participants_tsv : path
        The study's ``participants.tsv``.
    qc_jsons, networks_tsvs : list of path
        The study's subject QC files and networks tables.
    maps : dict
        Network -> list of the study's stage-2 map paths.
    network_masks : dict
        Network -> mask path (:func:`make_network_masks`).
    study_id : str
    out_dir : path
        ``results/group/study-{id}``.
    options : dict
        ``group`` options (:data:`GROUP_DEFAULTS`; uses ``covariates``, ``min_per_group``,
        ``min_residual_df``, ``effect_size``, ``alpha`` (CI level 1 - alpha)).

    Returns
    -------
    dict
        ``networks`` (TSV path), ``maps`` (list of paths), ``exclusions`` (TSV path).

    Notes
    -----
    Writes ``study-{id}_desc-MSvsHC_networks.tsv`` (:func:`study_group_effects` columns),
    ``study-{id}_network-{net}_stat-{t,g,varg}_map.nii.gz`` (0 outside the network mask; NaN
    inside when the study is excluded for that network) and ``study-{id}_desc-exclusions.tsv``
    (columns ``study_id, participant_id, group, level`` (subject/study/covariate/voxels), ``scope``
    (``all``, ``metric:<name>``, ``map:<net>``), ``reason``).
    """
    opts = st.resolve_options(options, GROUP_DEFAULTS, "group")
    level = 1.0 - float(opts["alpha"])
    out_dir = Path(out_dir)
    subjects, records = load_subjects({study_id: participants_tsv}, qc_jsons, networks_tsvs,
                                      maps)
    included = subjects[subjects["include"]]
    warn_standardized_units(included)
    table, rec = study_group_effects(included, opts["covariates"], opts["min_per_group"],
                                     level, study_id, opts["min_residual_df"],
                                     check_effect_size(opts["effect_size"]))
    records += rec
    written = []
    for net, mask_img in load_network_masks(network_masks, maps).items():
        data, Y, rec = map_sample(included, net, mask_img)
        design = st.build_design(data, ["group_ms"], opts["covariates"],
                                 min_residual_df=opts["min_residual_df"])
        rec += design_records(design, data, f"map:{net}", study_id)
        reason = _too_small(*_group_counts(design), design, opts["min_per_group"])
        if not reason:
            Yd = Y[data.index.get_indexer(design.index)]
            keep, vrec = complete_voxels(Yd, data.loc[design.index], f"map:{net}", study_id)
            rec += vrec
            reason = None if keep.any() else "no voxel has a value in every subject"
        if reason:
            rec.append(exclusion_record(study_id, NA, NA, "study", f"map:{net}", reason))
            n_vox = int((np.asarray(mask_img.dataobj) > 0).sum())
            values = {k: np.full(n_vox, np.nan) for k in ("t", "g", "varg")}
        else:
            res = voxelwise_group_study(Yd[:, keep], design, opts["effect_size"])
            values = _expand({k: res[k] for k in ("t", "g", "varg")}, keep)
        written += save_maps(values, mask_img, out_dir / f"study-{study_id}_network-{net}",
                             space_of(maps[net]))
        records += rec
    paths = {"networks": out_dir / f"study-{study_id}_desc-MSvsHC_networks.tsv",
             "exclusions": out_dir / f"study-{study_id}_desc-exclusions.tsv"}
    write_table(table, paths["networks"])
    write_table(exclusion_table(records), paths["exclusions"])
    return {"networks": str(paths["networks"]), "maps": written,
            "exclusions": str(paths["exclusions"])}


def compare_groups_pooled(participants_tsvs: dict, qc_jsons, networks_tsvs, maps,
                          network_masks, out_dir, options=None, harmonizer=None,
                          label: str = "pooled") -> dict:
    """Pooled (mega-analysis) MS vs HC over all studies.

    Network level: MixedLM with a random intercept per study (:func:`pooled_group_effects`).
    Voxelwise, per network inside its mask: OLS with one indicator per study plus covariates
    and permutation inference (:func:`msnet.stats.permuted_glm`, Freedman–Lane) — voxel max-t
    FWE, cluster-size FWE (cluster-forming ``cluster_forming_p``), optional TFCE, and BH-FDR
    of the parametric p. Studies excluded from per-study statistics (too few subjects in a
    group) are kept here.

    Parameters
    ----------
    participants_tsvs : dict
        study_id -> ``participants.tsv``.
    qc_jsons, networks_tsvs : list of path
        All subjects' QC files and networks tables.
    maps : dict
        Network -> list of all subjects' stage-2 maps.
    network_masks : dict
        Network -> mask path.
    out_dir : path
        ``results/group/pooled``.
    options : dict
        ``group`` options (:data:`GROUP_DEFAULTS`; ``harmonize`` is not used here: see
        :func:`msnet.harmonize.compare_groups_pooled_combat`).
    harmonizer : msnet.harmonize.Harmonizer, optional
        Harmonises the network metrics and each network's maps before the models (ComBat).
    label : str
        File-name prefix of the outputs (``pooled``; ``pooled_harmonize-combat`` for ComBat).

    Returns
    -------
    dict
        ``networks``, ``exclusions`` (TSV paths), ``maps`` and ``clusters`` (lists of paths).

    Notes
    -----
    Writes ``pooled_desc-MSvsHC_networks.tsv``, ``pooled_desc-exclusions.tsv``,
    ``pooled_network-{net}_stat-{t,g,varg,fdrq,logpfwe,logpcfwe}_map.nii.gz`` (+ ``tfce`` and
    ``logptfcefwe`` with TFCE; ``logp*`` maps are ``sign(t) * -log10 p``; ``g`` is
    ``J * beta / sigma``) and ``pooled_network-{net}_clusters.tsv`` (see
    :func:`msnet.stats.cluster_table`; direction ``MS>HC``/``MS<HC``, effect column ``peak_g``).
    """
    opts = st.resolve_options(options, GROUP_DEFAULTS, "group")
    level = 1.0 - float(opts["alpha"])
    out_dir = Path(out_dir)
    subjects, records = load_subjects(participants_tsvs, qc_jsons, networks_tsvs, maps)
    included = subjects[subjects["include"]]
    warn_standardized_units(included)
    net_sample = included
    if harmonizer is not None:
        net_sample, rec = harmonizer.metrics(included, analysis_metrics()["metric"])
        records += rec
    table, rec = pooled_group_effects(net_sample, opts["covariates"], opts["min_per_group"],
                                      level)
    records += rec
    written, clusters = [], []
    for k, (net, mask_img) in enumerate(load_network_masks(network_masks, maps).items()):
        data, Y, rec = map_sample(included, net, mask_img)
        if harmonizer is not None:
            data, Y, hrec = harmonizer.maps(data, Y, net)
            rec += hrec
        design = st.build_design(data, ["group_ms"], opts["covariates"], study_col="study_id")
        rec += design_records(design, data, f"map:{net}", "pooled")
        n_ms, n_hc = _group_counts(design)
        prefix = out_dir / f"{label}_network-{net}"
        reason = _too_small(n_ms, n_hc, design, opts["min_per_group"])
        if not reason:
            Yd = Y[data.index.get_indexer(design.index)]
            keep, vrec = complete_voxels(Yd, data.loc[design.index], f"map:{net}", "pooled")
            rec += vrec
            reason = None if keep.any() else "no voxel has a value in every subject"
        if reason:
            rec.append(exclusion_record("pooled", NA, NA, "study", f"map:{net}", reason))
            n_vox = int((np.asarray(mask_img.dataobj) > 0).sum())
            values = {k: np.full(n_vox, np.nan)
                      for k in [*st.inference_map_names(opts), "g", "varg"]}
            ctab = pd.DataFrame(columns=st.cluster_columns("g"))
        else:
            sub_img = _restrict(mask_img, keep)
            res = permutation_inference(Yd[:, keep], design, "group_ms",
                                        np.asarray(sub_img.dataobj) > 0, opts,
                                        [int(opts["seed"]), k])
            Xd, cols = design.with_study_dummies()
            _, g, var_g = st.g_from_beta(res.effect, res.sigma,
                                         contrast_variance(Xd, cols.index("group_ms")), res.df)
            values = _expand({**st.inference_maps(res), "g": g, "varg": var_g}, keep)
            ctab = st.cluster_table(res, sub_img, g, "g", float(opts["alpha"]),
                                    ("MS>HC", "MS<HC"))
        ctab.insert(0, "network", net)
        written += save_maps(values, mask_img, prefix, space_of(maps[net]))
        cpath = out_dir / f"{label}_network-{net}_clusters.tsv"
        write_table(ctab, cpath)
        clusters.append(str(cpath))
        records += rec
    paths = {"networks": out_dir / f"{label}_desc-MSvsHC_networks.tsv",
             "exclusions": out_dir / f"{label}_desc-exclusions.tsv"}
    write_table(table, paths["networks"])
    write_table(exclusion_table(records), paths["exclusions"])
    return {"networks": str(paths["networks"]), "exclusions": str(paths["exclusions"]),
            "maps": written, "clusters": clusters}
