"""Clinical associations within MS: connectivity ~ disease duration + EDSS (+ T2LV) + covariates.

Stage 4 of the workflow, MS subjects only. For each network metric (within- and
between-network FC of the analysis networks) and each clinical variable ``v`` of
``variables`` (default ``disease_duration, edss, t2lv``) the model is::

    metric ~ v + (other clinical variables) + covariates        (default covariates: age, sex)

i.e. the joint model, fitted per tested variable so that a study lacking ``v`` is left out
of the models of ``v`` only (``studies_without_variable`` column); a study lacking another
clinical variable keeps its subjects and is simply not adjusted for it (recorded in
``covariates_dropped``), the same policy as for covariates (:func:`msnet.stats.build_design`).

* per study: OLS (:func:`clinical_study`);
* pooled: MixedLM with a random intercept per study at network level, and voxelwise OLS with
  study indicators plus permutation FWE inside each network mask (shared machinery in
  :mod:`msnet.stats`) for ``voxelwise_variables`` (:func:`clinical_pooled`).

Reported: β (per unit of the variable), 95% CI, standardised β (β × SD(x)/SD(y), SDs pooled
within study), p, and BH-FDR q across networks × variables (within the ``within`` and
``between`` families separately). The pooled partial-regression data (added-variable plots:
residuals of the metric and of the variable on all other terms including study indicators)
are written for plotting.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from msnet import stats as st
from msnet.errors import MsnetInputError
from msnet.group import (NA, _expand, _restrict, analysis_metrics, complete_voxels,
                         design_records, exclusion_record, exclusion_table, finish_table,
                         load_network_masks, load_subjects, map_sample, metric_sample,
                         permutation_inference, save_maps)
from msnet.derivatives import write_table
from msnet.io.plan import space_of

LOG = logging.getLogger(__name__)

CLINICAL_DEFAULTS = {
    "variables": ["disease_duration", "edss", "t2lv"],
    "voxelwise_variables": ["disease_duration", "edss"],
    "covariates": ["age", "sex"],
    "min_subjects": 5,
    **st.INFERENCE_DEFAULTS,
}
"""Options of the ``clinical`` config section."""

_HEAD = ["study_id", "metric", "network_a", "network_b", "kind", "variable", "method", "n"]
_TAIL = ["p", "ci_low", "ci_high", "std_beta", "q_fdr"]
_NOTES = ["covariates", "covariates_dropped", "status", "reason"]
STUDY_COLUMNS = _HEAD + ["beta", "se", "t", "df"] + _TAIL + _NOTES
"""Columns of the per-study clinical table."""
POOLED_COLUMNS = (_HEAD + ["n_studies", "beta", "se", "z"] + _TAIL
                  + ["tau2", "converged", "note", "studies_without_variable"] + _NOTES)
"""Columns of the pooled clinical table."""


def file_label(variable: str) -> str:
    """BIDS-safe entity value of a variable name (``disease_duration`` -> ``diseaseduration``)."""
    return "".join(ch for ch in variable if ch.isalnum())


def _ms_only(subjects: pd.DataFrame) -> pd.DataFrame:
    return subjects[subjects["include"] & (subjects["group"] == "MS")]


def _lacking(subjects: pd.DataFrame, variable: str) -> list:
    """Studies in which no subject has a value of ``variable``."""
    present = (set(subjects.loc[subjects[variable].notna(), "study_id"])
               if variable in subjects.columns else set())
    return sorted(set(subjects["study_id"]) - present)


def clinical_effects(subjects: pd.DataFrame, variables, covariates, pooled: bool,
                     min_subjects: int = 5, level: float = 0.95, study_id=NA):
    """Clinical regressions for every network metric × variable (array/table level).

    Parameters
    ----------
    subjects : pandas.DataFrame
        Included MS subjects (:func:`msnet.group.load_subjects` rows), one or several studies.
    variables : list of str
        Clinical variables; each is tested adjusting for the others.
    covariates : list of str
    pooled : bool
        MixedLM with a study random intercept (True) or per-study OLS (False).
    min_subjects : int
        Minimum subjects in a model; fewer gives ``status = excluded``.
    level : float
        CI level.
    study_id : str
        Written in the ``study_id`` column (``pooled`` for pooled).

    Returns
    -------
    table : pandas.DataFrame
        One row per metric × variable (columns :data:`STUDY_COLUMNS` or
        :data:`POOLED_COLUMNS`); ``status`` is ``ok``, ``not_available`` (no study has the
        variable) or ``excluded`` (with ``reason``).
    exclusions : list of dict
    """
    rows, records = [], []
    study_col = "study_id" if pooled else None
    for m in analysis_metrics().itertuples():
        data, rec = metric_sample(subjects, m.metric, f"metric:{m.metric}")
        records += rec
        for v in variables:
            scope = f"metric:{m.metric}/var:{v}"
            lacking = _lacking(subjects, v)
            sample = data[~data["study_id"].isin(lacking)]
            row = {"study_id": study_id, "metric": m.metric, "network_a": m.network_a,
                   "network_b": m.network_b, "kind": m.kind, "variable": v,
                   "studies_without_variable": ",".join(lacking)}
            if len(lacking) == subjects["study_id"].nunique():
                rows.append({**row, "n": 0, "status": "not_available",
                             "reason": f"no {v} values"})
                continue
            if sample.empty:
                rows.append({**row, "n": 0, "status": "excluded",
                             "reason": f"no subject with a value of {m.metric}"})
                continue
            others = [w for w in variables if w != v] + list(covariates)
            design = st.build_design(sample, [v], others, study_col)
            records += design_records(design, sample, scope, study_id)
            y = sample.loc[design.index, m.metric].to_numpy(float)
            row.update(n=len(y), n_studies=len(set(design.studies)),
                       covariates=",".join(design.covariates_used),
                       covariates_dropped="; ".join(f"{k}: {w}" for k, w in design.notes.items()))
            reason = _unfit(design, min_subjects)
            if reason:
                records.append(exclusion_record(study_id, NA, NA, "study", scope, reason))
                rows.append({**row, "status": "excluded", "reason": reason})
                continue
            row.update(_fit(y, design, v, pooled, level), status="ok", reason="")
            rows.append(row)
    return finish_table(rows, POOLED_COLUMNS if pooled else STUDY_COLUMNS), records


def _unfit(design: st.Design, min_subjects: int) -> str | None:
    """Why a model cannot be estimated, or None.

    The residual degrees of freedom count one parameter per study beyond the first (the
    study intercepts, fixed or random): a pooled MixedLM that only fits because the random
    intercepts absorb the residuals gives absurd z values (seen: p 1e-100 with 6 subjects).
    """
    n, p = design.X.shape
    extra = max(len(set(design.studies)) - 1, 0) if design.studies is not None else 0
    if n < min_subjects:
        return f"fewer than {min_subjects} subjects ({n})"
    if design.problem:
        return design.problem
    if n - p - extra < 1:
        return (f"no residual degrees of freedom (n {n}, {p} parameters"
                + (f" and {extra} study intercepts)" if extra else ")"))
    return None


def _fit(y, design: st.Design, v: str, pooled: bool, level: float) -> dict:
    k = design.col(v)
    x = design.X[:, k]
    if pooled:
        fit = st.fit_pooled(y, design, v, level)
        out = {key: fit[key] for key in ("method", "beta", "se", "z", "p", "ci_low", "ci_high",
                                         "tau2", "converged", "note")}
    else:
        r = st.ols(y, design.X, np.eye(design.X.shape[1])[k])
        lo, hi = st.confidence_interval(r.effect[0], r.se[0], level, r.df)
        out = {"method": "OLS", "beta": r.effect[0], "se": r.se[0], "t": r.t[0], "df": r.df,
               "p": r.p[0], "ci_low": float(lo), "ci_high": float(hi)}
    out["std_beta"] = st.standardized_beta(out["beta"], x, y, design.studies)
    return out


def partial_regression_data(subjects: pd.DataFrame, variables, covariates) -> pd.DataFrame:
    """Added-variable-plot data, pooled over studies, per metric × variable.

    For each metric and variable: residuals of the variable (``x_resid``) and of the metric
    (``y_resid``) on every other term of the model (other clinical variables, covariates and
    one indicator per study). The OLS slope of ``y_resid`` on ``x_resid`` is the study-fixed-
    effect estimate (close to, not identical with, the MixedLM β of the table).

    Returns
    -------
    pandas.DataFrame
        ``metric, network_a, network_b, kind, variable, study_id, participant_id, x_resid,
        y_resid``.
    """
    frames = []
    for m in analysis_metrics().itertuples():
        data, _ = metric_sample(subjects, m.metric, "")
        for v in variables:
            sample = data[~data["study_id"].isin(_lacking(subjects, v))]
            if sample.empty:
                continue
            design = st.build_design(sample, [v], [w for w in variables if w != v]
                                     + list(covariates), "study_id")
            X, cols = design.with_study_dummies()
            if design.problem or X.shape[0] <= X.shape[1]:
                continue
            xr, yr = st.partial_regression(sample.loc[design.index, m.metric], X, cols.index(v))
            frames.append(pd.DataFrame({
                "metric": m.metric, "network_a": m.network_a, "network_b": m.network_b,
                "kind": m.kind, "variable": v, "study_id": design.studies,
                "participant_id": sample.loc[design.index, "participant_id"].to_numpy(),
                "x_resid": xr, "y_resid": yr}))
    columns = ["metric", "network_a", "network_b", "kind", "variable", "study_id",
               "participant_id", "x_resid", "y_resid"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def clinical_study(participants_tsv, qc_jsons, networks_tsvs, study_id, out_dir,
                   options=None) -> str:
    """Per-study clinical regressions (OLS) within MS.

    Writes ``{out_dir}/study-{id}_desc-clinical_networks.tsv`` (:data:`STUDY_COLUMNS`; a
    variable the study lacks gets ``status = not_available``).

    Parameters
    ----------
    participants_tsv : path
    qc_jsons, networks_tsvs : list of path
        The study's subject QC files and networks tables.
    study_id : str
    out_dir : path
        ``results/clinical``.
    options : dict
        ``clinical`` options (:data:`CLINICAL_DEFAULTS`).

    Returns
    -------
    str
        Path of the table.
    """
    opts = st.resolve_options(options, CLINICAL_DEFAULTS, "clinical")
    subjects, _ = load_subjects({study_id: participants_tsv}, qc_jsons, networks_tsvs)
    table, _ = clinical_effects(_ms_only(subjects), opts["variables"], opts["covariates"],
                                False, int(opts["min_subjects"]), 1 - float(opts["alpha"]),
                                study_id)
    path = Path(out_dir) / f"study-{study_id}_desc-clinical_networks.tsv"
    write_table(table, path)
    return str(path)


def clinical_pooled(participants_tsvs: dict, qc_jsons, networks_tsvs, maps, network_masks,
                    out_dir, options=None) -> dict:
    """Pooled clinical regressions within MS: network-level MixedLM and voxelwise permutation.

    Parameters
    ----------
    participants_tsvs : dict
        study_id -> ``participants.tsv``.
    qc_jsons, networks_tsvs : list of path
        All subjects' QC files and networks tables.
    maps : dict
        Network -> all subjects' stage-2 maps (may be empty: no voxelwise analysis).
    network_masks : dict
        Network -> mask path.
    out_dir : path
        ``results/clinical``.
    options : dict
        ``clinical`` options (:data:`CLINICAL_DEFAULTS`).

    Returns
    -------
    dict
        Paths: ``networks``, ``scatter``, ``exclusions``, ``maps`` (list), ``clusters`` (list).

    Notes
    -----
    Writes ``pooled_desc-clinical_networks.tsv``, ``pooled_desc-partialregression_scatter.tsv``,
    ``pooled_desc-clinicalexclusions.tsv`` and, per network and voxelwise variable,
    ``pooled_network-{net}_var-{var}_space-{space}_stat-{t,fdrq,logpfwe,logpcfwe}_map.nii.gz`` (+ TFCE maps)
    and ``pooled_network-{net}_var-{var}_clusters.tsv`` (effect column ``peak_beta``), with
    ``{var}`` the variable name without underscores (:func:`file_label`).
    """
    opts = st.resolve_options(options, CLINICAL_DEFAULTS, "clinical")
    unknown = sorted(set(opts["voxelwise_variables"]) - set(opts["variables"]))
    if unknown:
        raise MsnetInputError(f"config clinical.voxelwise_variables: {', '.join(unknown)} not "
                              "in clinical.variables; add them there or remove them.")
    out_dir = Path(out_dir)
    subjects, records = load_subjects(participants_tsvs, qc_jsons, networks_tsvs, maps)
    ms = _ms_only(subjects)
    table, rec = clinical_effects(ms, opts["variables"], opts["covariates"], True,
                                  int(opts["min_subjects"]), 1 - float(opts["alpha"]), "pooled")
    records += rec
    written, clusters = [], []
    masks = load_network_masks(network_masks, maps) if maps else {}
    for k, (net, mask_img) in enumerate(masks.items()):
        data, Y, rec = map_sample(ms, net, mask_img)
        records += rec
        for j, v in enumerate(opts["voxelwise_variables"]):
            w, c, rec = _voxelwise_variable(data, Y, net, v, mask_img, opts, [k, j], out_dir)
            written += w
            clusters.append(c)
            records += rec
    paths = {"networks": out_dir / "pooled_desc-clinical_networks.tsv",
             "scatter": out_dir / "pooled_desc-partialregression_scatter.tsv",
             "exclusions": out_dir / "pooled_desc-clinicalexclusions.tsv"}
    write_table(table, paths["networks"])
    write_table(partial_regression_data(ms, opts["variables"], opts["covariates"]),
                paths["scatter"])
    write_table(exclusion_table(records), paths["exclusions"])
    return {**{k: str(p) for k, p in paths.items()}, "maps": written, "clusters": clusters}


def _voxelwise_variable(data, Y, net, v, mask_img, opts, seed_keys, out_dir):
    """Permutation inference for one network × variable; write maps and the cluster table."""
    scope = f"map:{net}/var:{v}"
    lacking = _lacking(data, v)
    sample = data[~data["study_id"].isin(lacking)]
    records = [exclusion_record(s, NA, NA, "study", scope, f"no {v} values") for s in lacking]
    prefix = out_dir / f"pooled_network-{net}_var-{file_label(v)}"
    reason = "no study has the variable" if sample.empty else None
    if reason is None:
        others = [w for w in opts["variables"] if w != v] + list(opts["covariates"])
        design = st.build_design(sample, [v], others, "study_id")
        records += design_records(design, sample, scope, "pooled")
        n, p = design.with_study_dummies()[0].shape
        reason = _unfit(design, int(opts["min_subjects"])) or (
            f"no residual degrees of freedom (n {n}, {p} parameters)" if n - p < 1 else None)
    if reason is None:
        rows = data.index.get_indexer(design.index)
        keep, vrec = complete_voxels(Y[rows], data.loc[design.index], scope, "pooled")
        records += vrec
        reason = None if keep.any() else "no voxel has a value in every subject"
    if reason:
        records.append(exclusion_record("pooled", NA, NA, "study", scope, reason))
        n_vox = int((np.asarray(mask_img.dataobj) > 0).sum())
        values = {name: np.full(n_vox, np.nan) for name in st.inference_map_names(opts)}
        ctab = pd.DataFrame(columns=st.cluster_columns("beta"))
    else:
        sub_img = _restrict(mask_img, keep)
        res = permutation_inference(Y[rows][:, keep], design, v, np.asarray(sub_img.dataobj) > 0,
                                    opts, [int(opts["seed"]), 100 + seed_keys[0], seed_keys[1]])
        values = _expand(st.inference_maps(res), keep)
        ctab = st.cluster_table(res, sub_img, res.effect, "beta", float(opts["alpha"]))
    ctab.insert(0, "variable", v)
    ctab.insert(0, "network", net)
    written = save_maps(values, mask_img, prefix, space_of(data[f"map_{net}"]))
    cpath = Path(f"{prefix}_clusters.tsv")
    write_table(ctab, cpath)
    return written, str(cpath), records
