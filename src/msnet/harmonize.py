"""Multi-site harmonisation of the pooled (mega-analysis) inputs with ComBat.

``group.harmonize: combat`` adds a second pooled model beside the plain one: the subjects'
network-level metrics and their stage-2 maps (per network, over the network's analysis-mask
voxels) are harmonised with ComBat before the same pooled model runs on them.

ComBat (Johnson, Li & Rabinovic 2007, doi:10.1093/biostatistics/kxj037; for imaging Fortin et
al. 2018, doi:10.1016/j.neuroimage.2017.11.024) models every feature ``v`` of subject ``j`` at
site ``i`` as ``y = alpha_v + X beta_v + gamma_iv + delta_iv eps``: an additive (``gamma``) and
a multiplicative (``delta``) site effect on top of the preserved covariates ``X``. The site
effects are estimated per feature and shrunk towards their site-wide prior by empirical Bayes
(one normal prior for ``gamma`` and one inverse-gamma prior for ``delta`` per site, over all
features), then removed while ``X beta`` is kept.

msnet does not re-implement ComBat: :func:`combat` calls ``neuroHarmonize.harmonizationLearn``
(the maintained package of Pomponio et al. 2020 around Fortin's ``neuroCombat``; it installs
with numpy 2 / pandas 3 and is vectorised over features: about 3 s for 200 subjects x 30,000
voxels, see ``benchmarks/bench_combat.py``) and adds what the workflow needs around it:

* **batch** = the studies.tsv ``site`` of each subject's study (the study itself when no site
  is given); a batch with fewer than 2 subjects cannot have a variance and is left out
  (recorded);
* **preserved covariates** (:func:`combat_covariates`): group (MS = 1), the group model's
  covariates (default age, sex, mean FD) and the clinical variables present (disease
  duration, EDSS, T2 lesion volume). These are MS-only; they enter centred on the MS mean and
  0 for HC (an MS missing one gets the MS mean), so ComBat keeps the MS effect and the
  within-MS clinical slopes. Subjects missing a non-clinical covariate are left out (recorded);
* features that ComBat cannot standardise (no residual variance) are passed through unchanged;
* an **empirical-Bayes shrinkage table per site** (:func:`shrinkage_table`).

The ComBat model then goes through exactly the same pooled statistics as the plain one
(:func:`msnet.group.compare_groups_pooled`), whose outputs it writes with the prefix
``pooled_harmonize-combat`` instead of ``pooled``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from msnet.errors import MsnetInputError

LOG = logging.getLogger(__name__)

HARMONIZE_METHODS = ("none", "combat")
"""Values of ``group.harmonize``."""

CLINICAL_PRESERVED = ("disease_duration", "edss", "t2lv")
"""Clinical (MS-only) participants.tsv columns preserved by ComBat when present."""

LABEL = "pooled_harmonize-combat"
"""File-name prefix of the ComBat pooled model's outputs (the plain model's is ``pooled``)."""

SHRINKAGE_COLUMNS = [
    "scope", "batch", "studies", "n_subjects", "n_features", "gamma_hat_mean", "gamma_hat_sd",
    "gamma_star_mean", "gamma_star_sd", "gamma_prior_mean", "gamma_prior_var",
    "additive_shrinkage", "delta_hat_mean", "delta_star_mean", "delta_prior_mean",
    "multiplicative_shrinkage",
]  # fmt: skip
"""Columns of :func:`shrinkage_table`."""

REFERENCES = ("johnson2007", "fortin2018")
"""citations.bib keys cited when ComBat ran."""


@dataclass
class CombatResult:
    """Output of :func:`combat`.

    Attributes
    ----------
    data : numpy.ndarray, shape (n, p)
        Harmonised data (input dtype); unharmonisable features as given.
    model : dict
        ``neuroHarmonize.harmonizationLearn``'s model (``gamma_hat``, ``gamma_star``, ...,
        over the harmonised features only).
    batches : numpy.ndarray
        Batch labels in the model's order (sorted).
    features : numpy.ndarray of bool, shape (p,)
        Features that were harmonised.
    covariates : list of str
        Covariates preserved (constant ones dropped).
    """

    data: np.ndarray
    model: dict
    batches: np.ndarray
    features: np.ndarray
    covariates: list


def combat(data, batch, covariates: pd.DataFrame | None = None, eb: bool = True) -> CombatResult:
    """Harmonise ``data`` across ``batch`` with ComBat (``neuroHarmonize.harmonizationLearn``).

    Parameters
    ----------
    data : array, shape (n, p)
        One row per subject, one column per feature (voxels or metrics); finite.
    batch : sequence, shape (n,)
        Site (batch) of each subject; every batch needs at least 2 subjects.
    covariates : pandas.DataFrame, optional
        Numeric covariates to preserve (n rows, no missing value). Constant columns are
        dropped (they would make the design singular).
    eb : bool
        Empirical-Bayes shrinkage of the site effects (ComBat's default); False uses the
        per-feature least-squares estimates.

    Returns
    -------
    CombatResult

    Raises
    ------
    MsnetInputError
        Non-finite data, a batch with fewer than 2 subjects, fewer than 2 batches, missing
        covariate values, or covariates collinear with the batches.
    """
    from neuroHarmonize import harmonizationLearn

    data = np.asarray(data)
    n = data.shape[0]
    batch = np.asarray([str(b) for b in batch], dtype=object)
    if batch.shape != (n,):
        raise MsnetInputError(f"ComBat: {batch.shape[0]} batch labels for {n} subjects.")
    if not np.isfinite(data).all():
        raise MsnetInputError("ComBat: the data hold NaN or inf; pass complete features only.")
    levels, counts = np.unique(batch, return_counts=True)
    if len(levels) < 2:
        raise MsnetInputError(f"ComBat needs at least 2 batches (sites); got {len(levels)}.")
    if counts.min() < 2:
        small = ", ".join(str(b) for b in levels[counts < 2])
        raise MsnetInputError(f"ComBat: batch(es) {small} have fewer than 2 subjects; a site "
                              "effect on the variance cannot be estimated there.")
    cov = pd.DataFrame(index=range(n)) if covariates is None else covariates.reset_index(
        drop=True).astype(float)
    if len(cov) != n or cov.isna().any().any():
        raise MsnetInputError("ComBat: covariates must have one complete row per subject.")
    cov = cov.loc[:, cov.nunique() > 1]
    # features without residual variance cannot be standardised (division by 0): pass through
    features = _harmonisable(data, batch, cov)
    covars = cov.copy()
    covars.insert(0, "SITE", batch)
    out = data.copy()
    try:
        with warnings.catch_warnings():  # it builds one np.matrix (PendingDeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            model, harmonised = harmonizationLearn(data[:, features].astype(np.float64), covars,
                                                   eb=eb)
    except np.linalg.LinAlgError as err:
        raise MsnetInputError(f"ComBat: the design (sites + {', '.join(cov.columns) or 'no'} "
                              f"covariates) is singular ({err}); a covariate is collinear "
                              "with the sites.") from err
    out[:, features] = harmonised
    return CombatResult(out, model, np.asarray(model["SITE_labels"]), features, list(cov.columns))


def _harmonisable(data, batch, cov) -> np.ndarray:
    """Features with residual variance after sites and covariates (ComBat divides by it)."""
    dummies = (batch[:, None] == np.unique(batch)[None, :]).astype(float)
    X = np.column_stack([dummies, cov.to_numpy(float)]) if cov.shape[1] else dummies
    q = np.linalg.qr(X)[0]
    resid = data - q @ (q.T @ data)
    scale = np.abs(data).max(axis=0) + 1e-30
    return (resid.std(axis=0) / scale) > 1e-7


def shrinkage_table(result: CombatResult, scope: str = "", studies: dict | None = None
                    ) -> pd.DataFrame:
    """Empirical-Bayes shrinkage of the site effects, one row per batch (site).

    Columns (:data:`SHRINKAGE_COLUMNS`): ``gamma_hat_*`` are the per-feature least-squares
    additive site effects (in units of the pooled residual SD) and ``gamma_star_*`` their EB
    posterior means, summarised over features; ``gamma_prior_mean``/``gamma_prior_var`` the
    site's normal prior (``gamma_bar``, ``tau^2``); ``additive_shrinkage`` the median over
    features of the prior's weight in the posterior mean, ``delta* / (n tau^2 + delta*)``
    (0 = no shrinkage, 1 = every feature set to the site mean). ``delta_*`` are the
    multiplicative (variance) site effects likewise, ``delta_prior_mean`` = ``b / (a - 1)``
    (the inverse-gamma prior's mean) and ``multiplicative_shrinkage`` the prior's weight
    ``(a - 1) / (n / 2 + a - 1)`` in the posterior.

    Parameters
    ----------
    result : CombatResult
    scope : str
        What was harmonised (``metrics``, ``map:DMN`` ...).
    studies : dict, optional
        Batch -> its studies (joined with ``,``).
    """
    m = result.model
    info = m["info_dict"]
    rows = []
    eb = bool(m.get("eb", True)) and m.get("t2") is not None
    for i, b in enumerate(result.batches):
        n = int(info["sample_per_batch"][i])
        g_hat, g_star = np.asarray(m["gamma_hat"][i], float), np.asarray(m["gamma_star"][i], float)
        d_hat, d_star = np.asarray(m["delta_hat"][i], float), np.asarray(m["delta_star"][i], float)
        row = {"scope": scope, "batch": str(b), "studies": ",".join((studies or {}).get(b, [])),
               "n_subjects": n, "n_features": int(g_hat.size),
               "gamma_hat_mean": g_hat.mean(), "gamma_hat_sd": g_hat.std(),
               "gamma_star_mean": g_star.mean(), "gamma_star_sd": g_star.std(),
               "delta_hat_mean": d_hat.mean(), "delta_star_mean": d_star.mean()}
        if eb:
            t2, a, bb = float(m["t2"][i]), float(m["a_prior"][i]), float(m["b_prior"][i])
            row.update(gamma_prior_mean=float(m["gamma_bar"][i]), gamma_prior_var=t2,
                       additive_shrinkage=float(np.median(d_star / (n * t2 + d_star))),
                       delta_prior_mean=bb / (a - 1.0),
                       multiplicative_shrinkage=(a - 1.0) / (n / 2.0 + a - 1.0))
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=SHRINKAGE_COLUMNS)


# --------------------------------------------------------------------------- subjects


def check_harmonize(value: str) -> str:
    """Validate ``group.harmonize`` (:data:`HARMONIZE_METHODS`)."""
    if value not in HARMONIZE_METHODS:
        raise MsnetInputError(f"config section 'group': option 'harmonize' = {value!r} is "
                              f"invalid; use one of {list(HARMONIZE_METHODS)}.")
    return value


def combat_covariates(subjects: pd.DataFrame, covariates=("age", "sex", "mean_fd"),
                      clinical=CLINICAL_PRESERVED):
    """Covariates ComBat preserves: group, the group model's covariates, clinical variables.

    Parameters
    ----------
    subjects : pandas.DataFrame
        ``group`` (``MS``/``HC``) and the covariate columns.
    covariates : sequence of str
        The group model's covariates; categorical ones get k-1 indicators (as in the model).
        A covariate absent from the table is skipped.
    clinical : sequence of str
        MS-only variables: centred on the MS mean, 0 for HC, an MS subject missing one gets
        the MS mean (0). Skipped when absent or not given for any MS subject.

    Returns
    -------
    table : pandas.DataFrame
        Numeric columns, same index as ``subjects``; NaN where a (non-clinical) covariate is
        missing.
    names : list of str
        The variables preserved (as named in the config / participants.tsv).
    """
    from msnet.stats import _covariate_block

    is_ms = (subjects["group"] == "MS").to_numpy()
    table = pd.DataFrame({"group_ms": is_ms.astype(float)}, index=subjects.index)
    names = ["group"]
    for cov in covariates:
        block = _covariate_block(subjects, cov)
        if block is not None:
            table = table.join(block)
            names.append(cov)
    for var in clinical:
        if var not in subjects:
            continue
        x = pd.to_numeric(subjects[var], errors="coerce").to_numpy(float)
        ms = x[is_ms]
        if not np.isfinite(ms).any():
            continue
        centred = np.where(is_ms, np.nan_to_num(x - np.nanmean(ms), nan=0.0), 0.0)
        table[var] = centred
        names.append(var)
    return table, names


class Harmonizer:
    """ComBat for :func:`msnet.group.compare_groups_pooled` (its ``harmonizer`` argument).

    Parameters
    ----------
    sites : dict, optional
        study_id -> site (studies.tsv ``site``); a study missing here is its own site.
    covariates : sequence of str
        The group model's covariates (preserved with group and the clinical variables).
    eb : bool
        Empirical-Bayes shrinkage.
    """

    def __init__(self, sites: dict | None = None, covariates=("age", "sex", "mean_fd"),
                 eb: bool = True):
        self.sites = {str(k): str(v) for k, v in (sites or {}).items()}
        self.covariates = list(covariates)
        self.eb = eb
        self.shrinkage: list[pd.DataFrame] = []
        self.preserved: list[str] = []
        self.batch_source = "site" if any(k != v for k, v in self.sites.items()) else "study"

    def batch(self, subjects: pd.DataFrame) -> np.ndarray:
        """Each subject's batch: its study's site."""
        return np.array([self.sites.get(str(s), str(s)) for s in subjects["study_id"]], object)

    def _usable(self, subjects: pd.DataFrame, scope: str):
        """Rows ComBat can use (complete covariates, batch of >= 2) and exclusion records."""
        from msnet.group import exclusion_record

        cov, names = combat_covariates(subjects, self.covariates)
        ok = cov.notna().all(axis=1).to_numpy()
        records = [exclusion_record(r.study_id, r.participant_id, r.group, "subject", scope,
                                    "ComBat: a preserved covariate is missing")
                   for r in subjects[~ok].itertuples()]
        batch = self.batch(subjects)
        levels, counts = np.unique(batch[ok], return_counts=True)
        small = set(levels[counts < 2])
        lone = ok & np.isin(batch, list(small))
        records += [exclusion_record(r.study_id, r.participant_id, r.group, "subject", scope,
                                     f"ComBat: only subject of site {b}")
                    for r, b in zip(subjects[lone].itertuples(), batch[lone])]
        ok = ok & ~lone
        self.preserved = names
        return ok, cov, batch, records

    def _fit(self, Y, subjects, batch, cov, scope):
        """ComBat on usable rows; returns the harmonised ``Y`` (as given with < 2 sites)."""
        if len(set(batch)) < 2:
            LOG.warning("ComBat %s: fewer than 2 sites; data left as they are", scope)
            return Y
        res = combat(Y, batch, cov, eb=self.eb)
        studies = {}
        for s, b in zip(subjects["study_id"].astype(str), batch):
            studies.setdefault(b, [])
            if s not in studies[b]:
                studies[b].append(s)
        self.shrinkage.append(shrinkage_table(res, scope, studies))
        LOG.info("ComBat %s: %d subjects, %d sites, %d of %d features harmonised, covariates %s",
                 scope, len(batch), len(res.batches), int(res.features.sum()),
                 res.features.size, ", ".join(res.covariates))
        return res.data

    def metrics(self, subjects: pd.DataFrame, metrics):
        """Harmonise the network-level ``metrics`` columns jointly (subjects with all of them).

        Returns the subjects (those ComBat could not use are dropped) and exclusion records.
        """
        from msnet.group import exclusion_record

        values = subjects[list(metrics)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        complete = np.isfinite(values).all(axis=1)
        records = [exclusion_record(r.study_id, r.participant_id, r.group, "subject", "metrics",
                                    "ComBat: a network metric is missing")
                   for r in subjects[~complete].itertuples()]
        subjects = subjects[complete]
        ok, cov, batch, rec = self._usable(subjects, "metrics")
        out = subjects[ok].copy()
        out[list(metrics)] = self._fit(values[complete][ok], out, batch[ok], cov[ok], "metrics")
        return out, records + rec

    def maps(self, data: pd.DataFrame, Y, net: str):
        """Harmonise one network's maps over the voxels every usable subject has.

        Returns the subjects kept, their maps (NaN voxels kept NaN) and exclusion records.
        """
        scope = f"map:{net}"
        ok, cov, batch, records = self._usable(data, scope)
        out = np.asarray(Y)[ok].copy()
        voxels = np.isfinite(out).all(axis=0)
        if voxels.any():
            out[:, voxels] = self._fit(out[:, voxels], data[ok], batch[ok], cov[ok], scope)
        return data[ok], out, records

    def write_shrinkage(self, path) -> pd.DataFrame:
        """Write the shrinkage tables of every harmonised scope to one TSV."""
        from msnet.derivatives import write_table

        table = (pd.concat(self.shrinkage, ignore_index=True) if self.shrinkage
                 else pd.DataFrame(columns=SHRINKAGE_COLUMNS))
        write_table(table, path)
        return table


def compare_groups_pooled_combat(participants_tsvs: dict, qc_jsons, networks_tsvs, maps,
                                 network_masks, out_dir, options=None, sites=None) -> dict:
    """The pooled MS-vs-HC model on ComBat-harmonised data (beside the plain one).

    Same inputs and statistics as :func:`msnet.group.compare_groups_pooled`, with the
    network-level metrics and each network's maps harmonised first (:class:`Harmonizer`).

    Parameters
    ----------
    sites : dict, optional
        study_id -> site (studies.tsv ``site``; default: each study its own site).
    (others as :func:`msnet.group.compare_groups_pooled`)

    Returns
    -------
    dict
        As :func:`msnet.group.compare_groups_pooled`, plus ``shrinkage`` (TSV path).

    Notes
    -----
    Writes the plain model's files with the prefix ``pooled_harmonize-combat`` instead of
    ``pooled`` (``pooled_harmonize-combat_desc-MSvsHC_networks.tsv``,
    ``pooled_harmonize-combat_network-{net}_stat-{...}_map.nii.gz``, clusters, exclusions) and
    ``pooled_harmonize-combat_desc-shrinkage_stats.tsv`` (:func:`shrinkage_table`, one row per
    scope and site).
    """
    from msnet import stats as st
    from msnet.group import GROUP_DEFAULTS, compare_groups_pooled

    opts = st.resolve_options(options, GROUP_DEFAULTS, "group")
    harmonizer = Harmonizer(sites, opts["covariates"])
    out = compare_groups_pooled(participants_tsvs, qc_jsons, networks_tsvs, maps, network_masks,
                                out_dir, options, harmonizer=harmonizer, label=LABEL)
    path = Path(out_dir) / f"{LABEL}_desc-shrinkage_stats.tsv"
    harmonizer.write_shrinkage(path)
    return {**out, "shrinkage": str(path)}
