"""The results folder as a BIDS-derivatives dataset: descriptions of every table and map.

One place for what each output column and each map statistic means, so that a new column
cannot be written without a description (``tests/workflow/test_derivatives_workflow.py`` checks every
TSV of a real workflow run against :data:`COLUMNS`):

* :func:`write_table` writes a TSV and its BIDS column dictionary (``*.json`` beside it:
  ``Description``, ``Units``, ``Levels`` per column, from :data:`COLUMNS`);
* :func:`save_map` writes a NIfTI map and its sidecar (statistic, units, contrast, test and
  correction, from the file name's entities and :data:`STATISTICS`);
* :func:`describe_derivatives` writes the dataset-level files: ``dataset_description.json``
  (``GeneratedBy`` with msnet's version and the configuration's hash), the configuration
  snapshot ``code/config.yaml`` and the one atlas file the subject sidecars refer to,
  ``atlas/atlas-Seitzman300_dseg.tsv``.

Entity values in msnet file names are alphanumeric (``stat-logpfwe``, ``var-diseaseduration``):
an underscore or hyphen inside a value breaks BIDS parsers (:func:`entities` refuses them).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from msnet import __version__

ATLAS_NAME = "Seitzman300"
ATLAS_FILE = f"atlas/atlas-{ATLAS_NAME}_dseg.tsv"
"""The atlas table, relative to the results folder (one file instead of 300 ROI entries in
every subject's sidecar)."""
ATLAS_URI = f"bids::{ATLAS_FILE}"
CONFIG_SNAPSHOT = "code/config.yaml"
BIDS_VERSION = "1.10.0"
CODE_URL = None
"""Public address of msnet's source code, once there is one (``GeneratedBy.CodeURL``)."""

_NETWORKS = "DMN (default mode), SMN (sensorimotor), VN (visual), SN (salience)"
_METRIC = ("within_<net>: mean Fisher-z FC among the network's ROIs; between_<a>_<b>: mean "
           "Fisher-z FC between two networks' ROIs")


def _c(description, units=None, levels=None) -> dict:
    out = {"Description": description}
    if units is not None:
        out["Units"] = units
    if levels is not None:
        out["Levels"] = levels
    return out


_CI = "bound of the confidence interval (level 1 - alpha of the stage's config)"
COLUMNS = {
    # ---------------------------------------------------------------- identifiers
    "study_id": _c("Study identifier (studies.tsv), or 'pooled' for a result over all studies."),
    "study": _c("Study identifier (studies.tsv)."),
    "participant_id": _c("BIDS participant identifier (sub-<label>)."),
    "group": _c("Diagnostic group.", levels={"MS": "multiple sclerosis", "HC": "healthy control"}),
    "network": _c(f"Analysis network ({_NETWORKS}); 'A-B' for a between-network metric."),
    "network_a": _c("First network of the FC metric (both the same for within-network FC)."),
    "network_b": _c("Second network of the FC metric (both the same for within-network FC)."),
    "metric": _c(f"Network-level connectivity metric: {_METRIC}."),
    "kind": _c("Type of network-level metric.",
               levels={"within": "within one network", "between": "between two networks"}),
    "roi": _c(f"ROI name of the row; ROI names are the 'name' column of {ATLAS_FILE}."),
    "variable": _c("Clinical variable (participants.tsv column) the row's model tests.",
                   levels={"disease_duration": "disease duration (years)",
                           "edss": "Expanded Disability Status Scale (0-10)",
                           "t2lv": "T2 lesion volume (ml)"}),
    "moderator": _c("Study-level moderator of the meta-regression.",
                    levels={"age": "mean age (years)", "pctfemale": "% female",
                            "duration": "mean MS disease duration (years)",
                            "edss": "mean EDSS of the MS group", "t2lv": "mean T2 lesion volume (ml)"}),
    "analysis": _c("Which analysis the row compares with the published finding.",
                   levels={"meta": "random-effects meta-analysis of the per-study maps",
                           "mega": "pooled (mega-analysis) permutation GLM"}),
    "finding": _c("Identifier of the published MS-vs-HC finding (msnet.atlas.PUBLISHED_FINDINGS)."),
    # ---------------------------------------------------------------- QC
    "include": _c("Whether the subject passed QC and enters the analyses.",
                  levels={"True": "included", "False": "excluded (see exclusion_reason)"}),
    "exclusion_reason": _c("Why the subject (or study) was excluded; n/a when included."),
    "mean_fd": _c("Mean framewise displacement (Power), over the run after dummy scans.", "mm"),
    "max_fd": _c("Maximum framewise displacement.", "mm"),
    "pct_censored": _c("Volumes censored (high motion) as a percentage of the run.", "%"),
    "minutes_kept": _c("Data left after censoring.", "min"),
    "n_volumes": _c("Volumes in the BOLD run."),
    "n_dummy": _c("Non-steady-state (dummy) volumes dropped at the start."),
    "n_kept": _c("Volumes kept after dummy removal and censoring."),
    "mean_dvars": _c("Mean DVARS of the preprocessed BOLD.", "BOLD units"),
    "mean_std_dvars": _c("Mean standardised DVARS (Nichols)."),
    "tsnr_median": _c("Median temporal SNR over the brain mask (mean / SD over time)."),
    "tr": _c("Repetition time.", "s"),
    "fd_source": _c("Where the FD values came from.",
                    levels={"confounds": "fMRIPrep confounds TSV",
                            "nipype": "computed by nipype from the motion parameters"}),
    "lesion_voxels": _c("Voxels of the lesion mask inside the brain mask (n/a without a mask)."),
    # ---------------------------------------------------------------- subject FC
    "fc_z": _c("Mean Fisher-z (arctanh) Pearson correlation over the edges of the metric.",
               "Fisher z"),
    "n_edges": _c("Edges (ROI pairs with finite FC) averaged in fc_z."),
    # ---------------------------------------------------------------- group comparison
    "method": _c("Estimator of the row.",
                 levels={"OLS": "ordinary least squares (one study)",
                         "MixedLM": "linear mixed model, random intercept per study (pooled)",
                         "REML": "random-effects, restricted maximum likelihood tau^2",
                         "DL": "random-effects, DerSimonian-Laird tau^2",
                         "FE": "fixed-effect (inverse-variance) model",
                         "ibma": "literature comparison: the image-based meta-analysis",
                         "ale": "literature: activation likelihood estimation (NiMARE)",
                         "mkda": "literature: multilevel kernel density analysis (NiMARE)",
                         "sdm": "literature: msnet's SDM-style estimator, peaks only",
                         "hybrid": "literature: SDM-style with image studies' own maps"}),
    "n_ms": _c("MS participants in the model."),
    "n_hc": _c("HC participants in the model."),
    "n": _c("Participants in the model."),
    "n_studies": _c("Studies contributing to the pooled model."),
    "mean_ms": _c("Unadjusted mean of the metric in MS.", "Fisher z"),
    "sd_ms": _c("Standard deviation of the metric in MS.", "Fisher z"),
    "mean_hc": _c("Unadjusted mean of the metric in HC.", "Fisher z"),
    "sd_hc": _c("Standard deviation of the metric in HC.", "Fisher z"),
    "adjmean_ms": _c("Covariate-adjusted mean of the metric in MS.", "Fisher z"),
    "adjmean_hc": _c("Covariate-adjusted mean of the metric in HC.", "Fisher z"),
    "beta": _c("Regression coefficient: MS - HC difference (group tables), change per unit of "
               "the clinical variable (clinical tables) or of the moderator (meta-regression).",
               "metric units (Fisher z, or Hedges g for meta-regression) per unit"),
    "se": _c("Standard error of the row's estimate."),
    "t": _c("t statistic of the row's estimate (Egger table: of the bias)."),
    "z": _c("z statistic of the row's estimate (mixed models)."),
    "df": _c("Degrees of freedom of the row's test."),
    "p": _c("Two-sided p-value of the row's test (uncorrected)."),
    "q_fdr": _c("Benjamini-Hochberg FDR q-value across the rows of the same family "
                "(networks x variables or moderators)."),
    "beta_ci_low": _c(f"Lower {_CI} of beta."),
    "beta_ci_high": _c(f"Upper {_CI} of beta."),
    "ci_low": _c(f"Lower {_CI} of the row's estimate."),
    "ci_high": _c(f"Upper {_CI} of the row's estimate."),
    "d": _c("Cohen's d (MS - HC), before the small-sample correction.", "SD units"),
    "g": _c("Hedges' g (MS - HC): J * beta / residual SD, bias-corrected standardised "
            "difference.", "Hedges g"),
    "var_g": _c("Sampling variance of g.", "Hedges g squared"),
    "g_ci_low": _c(f"Lower {_CI} of g.", "Hedges g"),
    "g_ci_high": _c(f"Upper {_CI} of g.", "Hedges g"),
    "effect_size": _c("How g was derived.",
                      levels={"beta": "from the adjusted difference and the residual SD",
                              "t": "from the adjusted t statistic"}),
    "covariates": _c("Covariates in the model (comma-separated)."),
    "covariates_dropped": _c("Covariates left out of the model, each with its reason."),
    "status": _c("Whether the row's model was estimated.",
                 levels={"ok": "estimated", "excluded": "not estimated (see reason)"}),
    "reason": _c("Why the row's model, subject or input was excluded."),
    "note": _c("Estimation notes (optimiser fallback, boundary fits) or why a value is n/a."),
    "converged": _c("Whether the optimiser converged.",
                    levels={"True": "converged", "False": "did not converge"}),
    "tau2": _c("Between-study variance tau^2 (random intercept variance for mixed models).",
               "squared effect units"),
    "std_beta": _c("Standardised coefficient (beta * SD(variable) / SD(metric))."),
    "studies_without_variable": _c("Studies left out of the model: no values of the variable."),
    "level": _c("What was excluded.", levels={"subject": "one participant",
                                              "study": "a whole study",
                                              "covariate": "a covariate of a model"}),
    "scope": _c("Which analyses the exclusion applies to: 'all', 'metric:<metric>', "
                "'map:<network>' or 'map:<network>/var:<variable>' (comma-separated); in the "
                "ComBat shrinkage table what was harmonised: 'metrics' (the network-level "
                "metrics jointly) or 'map:<network>' (its maps over the analysis mask)."),
    "x_resid": _c("Clinical variable residualised on the other terms (partial regression)."),
    "y_resid": _c("Connectivity metric residualised on the other terms (partial regression).",
                  "Fisher z"),
    # ---------------------------------------------------------------- clusters
    "cluster_id": _c("Cluster number, by decreasing size within the direction."),
    "direction": _c("Sign of the effect.", levels={"MS>HC": "higher in MS", "MS<HC": "lower in MS",
                                                   "positive": "positive association",
                                                   "negative": "negative association"}),
    "size_vox": _c("Cluster size.", "voxels"),
    "size_mm3": _c("Cluster volume.", "mm^3"),
    "peak_x": _c("x of the cluster's peak (MNI).", "mm"),
    "peak_y": _c("y of the cluster's peak (MNI).", "mm"),
    "peak_z": _c("z of the cluster's peak (MNI).", "mm"),
    "peak_t": _c("t statistic at the peak."),
    "peak_zstat": _c("z statistic at the peak (meta-analysis z)."),
    "peak_g": _c("Hedges' g at the peak.", "Hedges g"),
    "peak_stat": _c("ALE value or MKDA density at the peak (NiMARE's stat map)."),
    # ---------------------------------------------------------------- literature comparison
    "significant_voxels": _c("Voxels with voxel-level FWE p < alpha (either sign)."),
    "n_findings": _c("Published locations of the network (msnet.atlas.PUBLISHED_FINDINGS)."),
    "recovered": _c("Published locations with an FWE-significant peak of the published sign "
                    "within report.radius_mm."),
    "dice_ibma": _c("Dice overlap of the FWE-significant voxels (same sign) with the "
                    "image-based meta-analysis (n/a where neither has any)."),
    "significant_peaks": _c("FWE-significant local maxima (26-neighbourhood), both signs."),
    "false_positive_peaks": _c("Significant peaks farther than report.radius_mm from every "
                               "planted location of their sign (simulated data; n/a "
                               "otherwise)."),
    "peak_beta": _c("Regression slope at the peak.", "metric units per unit of the variable"),
    "peak_p_fwe": _c("Voxel-level FWE-corrected p at the peak (max-statistic permutation)."),
    "cluster_p_fwe": _c("Cluster-size FWE-corrected p (permutation)."),
    "significant": _c("Whether the peak's FWE p is below alpha.",
                      levels={"True": "significant", "False": "not significant"}),
    "label": _c("Harvard-Oxford cortical label at (or within 6 mm of) the peak."),
    # ---------------------------------------------------------------- meta-analysis
    "model": _c("Meta-analytic model of the row ('random', 'fixed', or 'single:<moderator>' "
                "for a one-moderator meta-regression)."),
    "k": _c("Studies in the model."),
    "k_excluded": _c("Studies excluded from the model (see excluded)."),
    "excluded": _c("Excluded studies with their reasons."),
    "stat": _c("Test statistic of the row (t under Knapp-Hartung, else z)."),
    "pi_low": _c("Lower bound of the prediction interval.", "Hedges g"),
    "pi_high": _c("Upper bound of the prediction interval.", "Hedges g"),
    "tau2_ci_low": _c("Lower bound of the Q-profile CI of tau^2.", "Hedges g squared"),
    "tau2_ci_high": _c("Upper bound of the Q-profile CI of tau^2.", "Hedges g squared"),
    "tau": _c("Between-study SD (sqrt tau^2).", "Hedges g"),
    "i2": _c("I^2: share of the total variance due to between-study heterogeneity.", "%"),
    "i2_ci_low": _c("Lower bound of the CI of I^2.", "%"),
    "i2_ci_high": _c("Upper bound of the CI of I^2.", "%"),
    "h2": _c("H^2: total / sampling variance."),
    "q": _c("Cochran's Q heterogeneity statistic."),
    "q_df": _c("Degrees of freedom of Q (k - 1)."),
    "q_p": _c("p-value of Q."),
    "warning": _c("Why the row's estimate is limited or missing."),
    "study_omitted": _c("Study left out (leave-one-out analysis)."),
    "bias": _c("Egger's regression intercept (funnel-plot asymmetry)."),
    "bias_se": _c("Standard error of the Egger intercept."),
    "limit_estimate": _c("Limit meta-analysis estimate (Egger slope: effect at se = 0).",
                         "Hedges g"),
    "limit_se": _c("Standard error of the limit estimate.", "Hedges g"),
    "p_perm": _c("Permutation p-value of the moderator's coefficient."),
    "qm": _c("Omnibus test of the moderators (QM)."),
    "qm_df": _c("Degrees of freedom of QM."),
    "qm_p": _c("p-value of QM."),
    "qm_p_perm": _c("Permutation p-value of QM."),
    "tau2_null": _c("tau^2 of the model without moderators.", "Hedges g squared"),
    "r2": _c("Share of tau^2 explained by the moderators.", "%"),
    "qe": _c("Residual heterogeneity statistic (QE)."),
    "qe_df": _c("Degrees of freedom of QE."),
    "qe_p": _c("p-value of QE."),
    "n_permutations": _c("Permutations used."),
    "permutation": _c("Permutation scheme or reason no permutation test was run."),
    "included": _c("Whether the study enters the meta-analysis of the metric.",
                   levels={"True": "included", "False": "excluded (see exclusion_reason)"}),
    "weight": _c("Random-effects weight of the study.", "%"),
    "weight_fixed": _c("Fixed-effect (inverse-variance) weight of the study.", "%"),
    "age": _c("Mean age of the study's participants.", "years"),
    "pctfemale": _c("Female participants of the study.", "%"),
    "duration": _c("Mean disease duration of the study's MS group.", "years"),
    "edss": _c("Mean EDSS of the study's MS group."),
    "t2lv": _c("Mean T2 lesion volume of the study's MS group.", "ml"),
    # ---------------------------------------------------------------- meta vs mega
    "meta_k": _c("Studies in the meta-analysis."),
    "meta_model": _c("Meta-analytic model ('random' or 'fixed')."),
    "meta_g": _c("Meta-analytic Hedges' g.", "Hedges g"),
    "meta_ci_low": _c("Lower CI bound of meta_g.", "Hedges g"),
    "meta_ci_high": _c("Upper CI bound of meta_g.", "Hedges g"),
    "meta_p": _c("p-value of meta_g."),
    "meta_i2": _c("I^2 of the meta-analysis.", "%"),
    "meta_tau2": _c("tau^2 of the meta-analysis.", "Hedges g squared"),
    "mega_n_studies": _c("Studies in the pooled (mega) model."),
    "mega_g": _c("Hedges' g of the pooled (mega) model: J * beta / residual SD.", "Hedges g"),
    "mega_ci_low": _c("Lower CI bound of mega_g.", "Hedges g"),
    "mega_ci_high": _c("Upper CI bound of mega_g.", "Hedges g"),
    "mega_p": _c("p-value of the pooled model's group effect."),
    "difference": _c("meta_g - mega_g.", "Hedges g"),
    "same_direction": _c("Whether meta and mega estimates have the same sign.",
                         levels={"True": "same sign", "False": "opposite signs"}),
    "both_significant": _c("Whether both p-values are below alpha.",
                           levels={"True": "both significant", "False": "not both"}),
    # ComBat-harmonised mega-analysis next to meta and mega (msnet.harmonize)
    "combat_n_studies": _c("Studies in the ComBat-harmonised pooled model."),
    "combat_g": _c("Hedges' g of the pooled model on ComBat-harmonised data.", "Hedges g"),
    "combat_ci_low": _c("Lower CI bound of combat_g.", "Hedges g"),
    "combat_ci_high": _c("Upper CI bound of combat_g.", "Hedges g"),
    "combat_p": _c("p-value of the ComBat-harmonised pooled model's group effect."),
    "combat_difference": _c("combat_g - mega_g.", "Hedges g"),
    # ComBat empirical-Bayes shrinkage per site (msnet.harmonize.shrinkage_table)
    "batch": _c("ComBat batch: the studies.tsv site (the study when no site is given)."),
    "studies": _c("Studies in the batch (comma-separated)."),
    "n_subjects": _c("Subjects of the batch in the ComBat model."),
    "n_features": _c("Features (metrics or voxels) harmonised."),
    "gamma_hat_mean": _c("Mean over features of the least-squares additive site effect.",
                         "pooled residual SD"),
    "gamma_hat_sd": _c("SD over features of the least-squares additive site effect.",
                       "pooled residual SD"),
    "gamma_star_mean": _c("Mean over features of the empirical-Bayes additive site effect.",
                          "pooled residual SD"),
    "gamma_star_sd": _c("SD over features of the empirical-Bayes additive site effect.",
                        "pooled residual SD"),
    "gamma_prior_mean": _c("Mean of the site's normal prior of the additive effect "
                           "(gamma_bar).", "pooled residual SD"),
    "gamma_prior_var": _c("Variance of the site's normal prior of the additive effect (tau^2)."),
    "additive_shrinkage": _c("Median over features of the prior's weight in the posterior "
                             "additive effect, delta* / (n tau^2 + delta*): 0 = no shrinkage, "
                             "1 = every feature set to the prior mean."),
    "delta_hat_mean": _c("Mean over features of the least-squares multiplicative site effect "
                         "(variance ratio)."),
    "delta_star_mean": _c("Mean over features of the empirical-Bayes multiplicative site "
                          "effect (variance ratio)."),
    "delta_prior_mean": _c("Mean of the site's inverse-gamma prior of the multiplicative "
                           "effect, b / (a - 1)."),
    "multiplicative_shrinkage": _c("The prior's weight in the posterior multiplicative "
                                   "effect, (a - 1) / (n / 2 + a - 1)."),
    # ---------------------------------------------------------------- published comparison
    "published_label": _c("Region of the published finding."),
    "representative_x": _c("x of msnet's representative coordinate for the published region "
                           "(chosen by msnet, not published).", "mm"),
    "representative_y": _c("y of the representative coordinate.", "mm"),
    "representative_z": _c("z of the representative coordinate.", "mm"),
    "found": _c("Whether a significant peak of the published sign lies within report.radius_mm.",
                levels={"True": "recovered", "False": "not recovered"}),
    "distance_mm": _c("Distance from the representative coordinate to msnet's nearest peak "
                      "of the published sign.", "mm"),
    "statistic": _c("Statistic at msnet's peak (t for mega, z for meta)."),
    "peak_label": _c("Harvard-Oxford label at msnet's peak."),
    "p_fwe": _c("FWE-corrected p at msnet's peak."),
    # ---------------------------------------------------------------- QC-FC (msnet.qcfc)
    "strategy": _c("Denoising strategy of the row (qcfc.strategies; 'main' or the matching "
                   "listed name: the main analysis's denoise section)."),
    "main": _c("Whether the strategy is the main analysis's (the denoise section).",
               levels={"True": "main analysis", "False": "comparison strategy"}),
    "options": _c("The strategy's confounds and censoring, in words."),
    "pct_sig_uncorrected": _c("Edges whose QC-FC has p < qcfc.alpha, uncorrected (qcfc.alpha "
                              "x 100 % expected by chance).", "%"),
    "pct_sig_fdr": _c("Edges whose QC-FC has Benjamini-Hochberg FDR q < qcfc.alpha.", "%"),
    "median_abs_r": _c("Median absolute QC-FC (partial correlation of edge FC with mean FD) "
                       "over the edges."),
    "null_median_abs_r": _c("Median absolute partial correlation expected without any motion "
                            "effect, at the same degrees of freedom."),
    "distance_rho": _c("Spearman correlation of the edges' QC-FC with the Euclidean distance "
                       "between their ROI centres (distance dependence; < 0: motion inflates "
                       "short-distance FC most)."),
    "distance_p": _c("p-value of distance_rho."),
    "n_unusable": _c("Included subjects whose data the strategy could not clean (left out of "
                     "its QC-FC)."),
    "tdof_loss_mean": _c("Mean over subjects of the temporal degrees of freedom lost (confound "
                         "regressors + censored volumes).", "volumes"),
    "tdof_loss_sd": _c("Standard deviation over subjects of the tDOF lost.", "volumes"),
    "pct_tdof_loss_mean": _c("Mean over subjects of the tDOF lost as a percentage of the "
                             "post-dummy volumes.", "%"),
    "acceptable": _c("Whether at most qcfc.max_pct_fdr % of edges have an FDR-significant "
                     "QC-FC (msnet's criterion).",
                     levels={"True": "acceptable", "False": "not acceptable"}),
    "roi_a": _c(f"First ROI of the edge (the 'name' column of {ATLAS_FILE})."),
    "roi_b": _c(f"Second ROI of the edge (the 'name' column of {ATLAS_FILE})."),
    "edge_distance_mm": _c("Euclidean distance between the two ROI centres.", "mm"),
    "qcfc_r": _c("QC-FC: partial correlation across subjects of the edge's Fisher z with mean "
                 "FD, controlling for the qcfc covariates and study."),
    "usable": _c("Whether the strategy could clean the subject's data.",
                 levels={"True": "cleaned", "False": "not cleaned (see reason)"}),
    "n_regressors": _c("Confound regressors projected out (rank of the standardised confound "
                       "matrix), usable runs.", "regressors"),
    "n_censored": _c("Post-dummy volumes the strategy censored, usable runs.", "volumes"),
    "n_volumes_post": _c("Post-dummy volumes of the usable runs.", "volumes"),
    "tdof_loss": _c("Temporal degrees of freedom lost: n_regressors + n_censored.", "volumes"),
    "pct_tdof_loss": _c("tdof_loss as a percentage of n_volumes_post.", "%"),
    "test": _c("Test used for the row (e.g. 'knha': Knapp-Hartung t; 'z': Wald z; Egger's "
               "regression; for mean FD: Welch t, Mann-Whitney U, OLS with study "
               "indicators)."),
    "fd_mean_ms": _c("Mean of the MS subjects' mean FD.", "mm"),
    "fd_mean_hc": _c("Mean of the HC subjects' mean FD.", "mm"),
    "fd_median_ms": _c("Median of the MS subjects' mean FD.", "mm"),
    "fd_median_hc": _c("Median of the HC subjects' mean FD.", "mm"),
    "fd_difference": _c("MS - HC mean FD: difference of means (Welch), Hodges-Lehmann median "
                        "of pairwise differences (Mann-Whitney), group coefficient (OLS).",
                        "mm"),
    "test_statistic": _c("Test statistic of the row (Welch t, Mann-Whitney U of the MS group, "
                         "OLS t)."),
}
"""Column name -> BIDS column description (``Description``, optional ``Units``, ``Levels``).

A name means the same in every table it appears in; where tables differ in detail the
description says so. Add a column here when a writer gains one (a workflow test fails
otherwise)."""

STATISTICS = {
    "amplitude": ("Dual-regression stage-2 network map (subject amplitude of the network).",
                  "connectivity.stage2_units (psc: % signal change per SD of the network time "
                  "course; standardized: standardised coefficient)"),
    "t": ("t statistic of the effect.", "t"),
    "z": ("z statistic of the effect.", "z"),
    "g": ("Hedges' g, MS - HC (J * beta / residual SD).", "Hedges g"),
    "varg": ("Sampling variance of Hedges' g.", "Hedges g squared"),
    "beta": ("Regression slope of the moderator.", "Hedges g per moderator unit"),
    "fdrq": ("Benjamini-Hochberg FDR q of the parametric voxel p (1 outside the mask).", "q"),
    "logpfwe": ("Signed -log10 of the voxel-level FWE-corrected p (max-statistic "
                "permutation); sign of the effect.", "signed -log10(p)"),
    "logpcfwe": ("Signed -log10 of the cluster-size FWE-corrected p of the voxel's cluster.",
                 "signed -log10(p)"),
    "logptfcefwe": ("Signed -log10 of the TFCE FWE-corrected p.", "signed -log10(p)"),
    "tfce": ("Threshold-free cluster enhancement score.", "TFCE"),
    "logpperm": ("Signed -log10 of the max-|z| permutation FWE p of the moderator.",
                 "signed -log10(p)"),
    "i2": ("I^2: share of the total variance due to between-study heterogeneity.", "%"),
    "tau2": ("Between-study variance tau^2.", "Hedges g squared"),
}
"""``stat-`` entity value -> (description, units) of a map."""

_LEVELS = {
    "sub": "one subject",
    "study": "one study: MS vs HC, OLS with the configured covariates",
    "pooled": "all studies pooled (mega-analysis): OLS with one intercept per study and the "
              "configured covariates, Freedman-Lane permutation inference",
    "meta": "random-effects meta-analysis of the per-study g maps, voxel by voxel (REML, "
            "Knapp-Hartung by default), sign-flip permutation inference",
    "literature": "meta-analysis of published peak coordinates (msnet.literature): ALE/MKDA "
                  "(NiMARE, Monte-Carlo FWE) or SDM-style random effects (sign-flip FWE)",
}


def entities(path) -> dict:
    """The ``key-value`` entities of an msnet file name, in order (the suffix left out).

    Raises
    ------
    ValueError
        When an entity value is not alphanumeric.
    """
    name = Path(path).name.split(".")[0]
    out = {}
    if "-" not in name:
        return out  # a plain name (participants.tsv, ground_truth_subjects.tsv): no entities
    parts = name.split("_")[:-1]
    for k, part in enumerate(parts):
        key, sep, value = part.partition("-")
        if not sep and k == 0:
            continue  # msnet's level prefix (meta_, pooled_): not an entity
        if not sep or not re.fullmatch(r"[A-Za-z0-9]+", value):
            raise ValueError(f"{name}: {part!r} is not a key-value entity with an "
                             "alphanumeric value (an underscore inside a value splits it)")
        out[key] = value
    return out


def sidecar_path(path) -> Path:
    """The JSON sidecar of a TSV or NIfTI output (same name, ``.json``)."""
    path = Path(path)
    return path.with_name(path.name.split(".")[0] + ".json")


def table_sidecar(columns, extra: dict | None = None) -> dict:
    """BIDS column dictionary of a table with ``columns``; undocumented ones say so."""
    out = {c: COLUMNS.get(c, {"Description": "n/a (not yet described in msnet.derivatives)"})
           for c in columns}
    return {**(extra or {}), **out}


def write_table(df, path, sidecar: dict | None = None, **kwargs) -> None:
    """Write ``df`` as a TSV (:func:`msnet.io.atomic.write_tsv`) and its column dictionary."""
    from msnet.io.atomic import write_json, write_tsv

    write_tsv(df, path, **kwargs)
    columns = list(df.columns) if kwargs.get("index", False) is False else (
        [df.index.name or "index", *df.columns])
    write_json(table_sidecar(columns, sidecar), sidecar_path(path))


def map_sidecar(path, extra: dict | None = None) -> dict:
    """Sidecar of a map from its file name: statistic, units, network, contrast, level."""
    ent = entities(path)
    name = Path(path).name
    out = {}
    stat = ent.get("stat")
    if stat in STATISTICS:
        description, units = STATISTICS[stat]
        out.update(Statistic=stat, Description=description, Units=units)
    if name.endswith("_mask.nii.gz"):
        out.update(Description="Analysis mask of the network: network template union the "
                               "data-driven one-sample map (1 inside, 0 outside).",
                   Units="binary")
    if "network" in ent:
        out["Network"] = ent["network"]
    level = next((k for k in ("sub", "study") if k in ent), name.split("_")[0])
    if level in _LEVELS:
        out["Level"] = _LEVELS[level]
    if "var" in ent:
        out["Contrast"] = f"slope of {ent['var']} within MS (adjusted for the other terms)"
    elif "mod" in ent:
        out["Contrast"] = f"meta-regression slope of the study-level moderator {ent['mod']}"
    elif level in ("study", "pooled", "meta", "literature") and stat:
        out["Contrast"] = "MS - HC"
    if stat in ("logpfwe", "logpcfwe", "logptfcefwe", "logpperm"):
        out["MultipleComparisonCorrection"] = "family-wise error, permutation (max statistic)"
    elif stat == "fdrq":
        out["MultipleComparisonCorrection"] = "false discovery rate (Benjamini-Hochberg)"
    out["CoordinateSystem"] = f"{ent.get('space', 'MNI')} (mm)"
    return {**out, **(extra or {})}


def save_map(img, path, sidecar: dict | None = None) -> None:
    """Save a NIfTI map (:func:`msnet.io.atomic.save_nifti`) and its JSON sidecar."""
    from msnet.io.atomic import save_nifti, write_json

    save_nifti(img, path)
    write_json(map_sidecar(path, sidecar), sidecar_path(path))


# --------------------------------------------------------------------------- dataset level
def config_hash(config: dict) -> str:
    """SHA-256 of the resolved configuration (canonical JSON: sorted keys).

    ``results_dir`` is left out: where the results are written is not a setting of the
    analysis, and the same settings in two folders give the same files byte for byte.
    """
    settings = {k: v for k, v in config.items() if k != "results_dir"}
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def dataset_description(config: dict, source_datasets=()) -> dict:
    """``dataset_description.json`` of the results folder.

    Parameters
    ----------
    config : dict
        The resolved configuration (after defaults).
    source_datasets : iterable of str
        The studies' fMRIPrep folders (real data); empty for the demo.
    """
    generated = {
        "Name": "msnet",
        "Version": __version__,
        "Description": "Multi-study resting-state network connectivity in MS (Snakemake "
                       f"workflow); configuration in {CONFIG_SNAPSHOT}, ConfigHash is the "
                       "SHA-256 of its canonical JSON without results_dir.",
        "ConfigHash": f"sha256:{config_hash(config)}",
    }
    if CODE_URL:
        generated["CodeURL"] = CODE_URL
    out = {
        "Name": "msnet results: MS vs HC resting-state network connectivity",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
    }
    sources = [{"URL": Path(s).absolute().as_uri()} for s in source_datasets]
    if sources:
        out["SourceDatasets"] = sources
    else:
        out["SourceDatasets"] = [{"URL": "bids::simulated/",
                                  "Description": "msnet's synthetic fMRIPrep-like studies"}]
    return out


def atlas_table():
    """The Seitzman-2018 ROIs as a BIDS ``dseg.tsv`` table: ``index``, ``name`` and more."""
    from msnet import atlas

    rois = atlas.seitzman_rois()
    table = rois.rename(columns={"roi": "name", "radius": "radius_mm"})
    table.insert(0, "index", range(1, len(table) + 1))
    return table[["index", "name", "network", "seitzman_network", "region", "x", "y", "z",
                  "radius_mm"]]


ATLAS_COLUMNS = {
    "index": _c("ROI number (1-300), the order of every ROI column and matrix row."),
    "name": _c("ROI name: the column names of *_timeseries.tsv and *_relmat.tsv."),
    "network": _c(f"msnet analysis network ({_NETWORKS}) or the Seitzman network name."),
    "seitzman_network": _c("Network label of Seitzman et al. (2018)."),
    "region": _c("Anatomical label of Seitzman et al. (2018)."),
    "x": _c("MNI x of the ROI centre.", "mm"),
    "y": _c("MNI y of the ROI centre.", "mm"),
    "z": _c("MNI z of the ROI centre.", "mm"),
    "radius_mm": _c("Sphere radius.", "mm"),
}


def describe_derivatives(config: dict, out: dict, source_datasets=()) -> None:
    """Write the dataset-level files of the results folder.

    Parameters
    ----------
    config : dict
        The resolved configuration.
    out : dict
        ``description`` (dataset_description.json), ``config`` (YAML snapshot) and ``atlas``
        (the atlas dseg.tsv; its column dictionary goes beside it).
    source_datasets : iterable of str
        The studies' fMRIPrep folders (real data).
    """
    import yaml

    from msnet.io.atomic import write_json, write_text, write_tsv

    write_text(yaml.safe_dump(config, sort_keys=True), out["config"])
    write_tsv(atlas_table(), out["atlas"])
    write_json({"Description": "Seitzman et al. (2018) 300 ROIs (nilearn "
                               "fetch_coords_seitzman_2018), spheres around MNI coordinates, "
                               "in msnet's ROI order.",
                "SpatialReference": "MNI152NLin2009cAsym (mm)", **ATLAS_COLUMNS},
               sidecar_path(out["atlas"]))
    write_json(dataset_description(config, source_datasets), out["description"])
