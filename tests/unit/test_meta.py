"""Tests for msnet.meta: known answers (metafor's BCG trials), cross-checks against PyMARE,
statsmodels and NiMARE, permutation calibration, degenerate inputs, file-level outputs."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msnet import meta
from msnet.errors import MsnetInputError

# metafor dat.bcg (Colditz et al., 1994): tpos, tneg, cpos, cneg, ablat
BCG = np.array([
    [4, 119, 11, 128, 44], [6, 300, 29, 274, 55], [3, 228, 11, 209, 42],
    [62, 13536, 248, 12619, 52], [33, 5036, 47, 5761, 13], [180, 1361, 372, 1079, 44],
    [8, 2537, 10, 619, 19], [505, 87886, 499, 87892, 13], [29, 7470, 45, 7232, 27],
    [17, 1699, 65, 1600, 42], [186, 50448, 141, 27197, 18], [5, 2493, 3, 2338, 33],
    [27, 16886, 29, 17825, 33],
], dtype=float)


def bcg():
    """Log risk ratios and variances as metafor's escalc(measure="RR"), and ablat."""
    tpos, tneg, cpos, cneg, ablat = BCG.T
    yi = np.log((tpos / (tpos + tneg)) / (cpos / (cpos + cneg)))
    vi = 1 / tpos - 1 / (tpos + tneg) + 1 / cpos - 1 / (cpos + cneg)
    return yi, vi, ablat


def close3(value, published, tol=6e-4):
    """Agreement to the 3rd decimal with a value metafor prints to 4 decimals (percentages,
    printed to 2 decimals, are compared with ``tol=6e-3``)."""
    assert abs(value - published) < tol, (value, published)


# ----------------------------------------------------------------------------- known answers
def test_bcg_reml_matches_metafor():
    yi, vi, _ = bcg()
    res = meta.meta_analysis(yi, vi, "REML", knapp_hartung=False)
    # metafor: rma(yi, vi, data=dat); predict(res); confint(res)
    close3(res["tau2"], 0.3132)
    close3(res["g"], -0.7145)
    close3(res["se"], 0.1798)
    close3(res["ci_low"], -1.0669)
    close3(res["ci_high"], -0.3622)
    close3(res["stat"], -3.9744)
    close3(res["i2"], 92.22, tol=6e-3)
    close3(res["h2"], 12.8558)
    close3(res["q"], 152.2330)
    close3(res["pi_low"], -1.8667)
    close3(res["pi_high"], 0.4376)
    close3(res["tau2_ci_low"], 0.1197)
    close3(res["tau2_ci_high"], 1.1115)
    assert res["q_df"] == 12 and res["model"] == "random" and res["warning"] == ""


def test_bcg_dl_matches_metafor():
    yi, vi, _ = bcg()
    res = meta.meta_analysis(yi, vi, "DL", knapp_hartung=False)
    close3(res["tau2"], 0.3088)
    close3(res["g"], -0.7141)
    close3(res["se"], 0.1787)
    close3(res["i2"], 92.12, tol=6e-3)


def test_bcg_metaregression_on_latitude_matches_metafor():
    yi, vi, ablat = bcg()
    tab = meta.meta_regression(yi, vi, pd.DataFrame({"ablat": ablat}), knapp_hartung=False,
                               n_permutations=0)
    # metafor: rma(yi, vi, mods = ~ ablat, data=dat)
    close3(tab["beta"].iloc[0], 0.2515)
    close3(tab["beta"].iloc[1], -0.0291)
    close3(tab["se"].iloc[0], 0.2491)
    close3(tab["se"].iloc[1], 0.0072)
    close3(tab["tau2"].iloc[0], 0.0764)
    close3(tab["r2"].iloc[0], 75.63, tol=6e-3)
    close3(tab["qe"].iloc[0], 30.7331)
    close3(tab["i2"].iloc[0], 68.39, tol=6e-3)


def test_egger_classic_matches_metafor_and_standardised_form():
    yi, vi, _ = bcg()
    res = meta.egger_test(yi, vi)
    # metafor: regtest(res, model="lm") -> t = -1.4013, df = 11, p = 0.1887
    close3(res["t"], -1.4013)
    close3(res["p"], 0.1887)
    assert res["df"] == 11
    # Egger's original form: OLS of g/se on 1/se; its intercept is the bias term
    se = np.sqrt(vi)
    coef = np.linalg.lstsq(np.column_stack([np.ones_like(se), 1 / se]), yi / se, rcond=None)[0]
    np.testing.assert_allclose(coef, [res["bias"], res["limit_estimate"]], rtol=1e-10)


# ------------------------------------------------------------------------ cross-checks
def _pymare_fit(y, v, method, correction):
    import pymare
    from pymare.estimators import DerSimonianLaird, VarianceBasedLikelihoodEstimator

    est = (VarianceBasedLikelihoodEstimator(method="REML", small_sample_correction=correction)
           if method == "REML" else DerSimonianLaird(small_sample_correction=correction))
    est.fit_dataset(pymare.Dataset(y=y, v=v, X=np.ones((len(y), 1)), add_intercept=False))
    return est.summary()


@pytest.mark.parametrize("method", ["REML", "DL"])
@pytest.mark.parametrize("knha", [False, True])
@pytest.mark.parametrize("dataset", ["bcg", "random", "homogeneous"])
def test_engine_matches_pymare(method, knha, dataset):
    rng = np.random.default_rng(11)
    if dataset == "bcg":
        y, v, _ = bcg()
    else:
        v = rng.uniform(0.02, 0.2, 9)
        spread = 0.0 if dataset == "homogeneous" else 0.4
        y = rng.normal(0.3, 1.0, 9) * np.sqrt(v + spread**2)
        if dataset == "homogeneous":
            y = 0.3 + 0.05 * (y - y.mean())
    summary = _pymare_fit(y, v, method, "knapp-hartung" if knha else "wald")
    fe = summary.get_fe_stats()
    fit = meta.fit_rma(y, v, None, method, knapp_hartung=knha)
    np.testing.assert_allclose(fit.tau2[0], np.ravel(summary.tau2)[0], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(fit.beta[0, 0], fe["est"].ravel()[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fit.se[0, 0], fe["se"].ravel()[0], rtol=1e-6)
    np.testing.assert_allclose(fit.pval[0, 0], fe["p"].ravel()[0], rtol=1e-5)
    np.testing.assert_allclose(fit.qe[0], summary.get_heterogeneity_stats()["Q"][0], rtol=1e-10)
    if method == "REML" and not knha:
        lo, hi = meta.tau2_qprofile_ci(y, v)
        re = summary.get_re_stats()
        np.testing.assert_allclose([lo, hi], [re["ci_l"][0], re["ci_u"][0]], rtol=1e-4, atol=1e-6)


def test_bcg_knapp_hartung_default_matches_hand_formula():
    """metafor rma(yi, vi, test="knha") on the BCG trials, computed by hand here from
    metafor's published REML tau2 (0.3132): w = 1/(v + tau2), SE = sqrt(sum w r^2 / (k - 1)
    / sum w), t with k - 1 df (CI and PI with the t quantile)."""
    from scipy import stats

    yi, vi, _ = bcg()
    res = meta.meta_analysis(yi, vi)  # defaults: REML, Knapp-Hartung
    w = 1 / (vi + 0.3132)
    mu = np.sum(w * yi) / np.sum(w)
    se = np.sqrt(np.sum(w * (yi - mu) ** 2) / 12 / np.sum(w))
    q = stats.t.ppf(0.975, 12)
    assert res["test"] == "knha" and res["df"] == 12 and res["warning"] == ""
    close3(res["g"], mu)
    close3(res["se"], se)
    close3(res["stat"], mu / se, tol=3e-3)
    np.testing.assert_allclose(res["p"], 2 * stats.t.sf(abs(mu / se), 12), rtol=1e-2)
    close3(res["ci_low"], mu - q * se)
    close3(res["ci_high"], mu + q * se)
    close3(res["pi_low"], mu - q * np.sqrt(0.3132 + se**2))
    # the KH SE differs from the z test's (0.1798, metafor)
    assert abs(res["se"] - 0.1798) > 5e-4


def test_knapp_hartung_with_identical_effects_falls_back_to_z_and_says_so():
    """Issue 11 §2: identical effects make the Knapp-Hartung factor 0 (SE 0, p 0 before)."""
    from scipy import stats

    v = np.array([0.02, 0.05, 0.04, 0.1, 0.03])
    y = np.full(5, 0.3)
    with pytest.warns(RuntimeWarning, match="Knapp-Hartung"):
        fit = meta.fit_rma(y, v, None, "REML", knapp_hartung=True)
    assert fit.kh_fallback[0] and np.isinf(fit.df_test[0])
    res = meta.meta_analysis(y, v)
    se = np.sqrt(1 / np.sum(1 / v))  # tau2 = 0: the z test's SE
    assert res["test"] == "z" and "identical" in res["warning"]
    np.testing.assert_allclose(res["se"], se, rtol=1e-8)
    np.testing.assert_allclose(res["p"], 2 * stats.norm.sf(0.3 / se), rtol=1e-8)
    assert res["p"] > 0 and np.isnan(res["df"])
    # meta-regression whose effects lie exactly on the line
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    with pytest.warns(RuntimeWarning, match="Knapp-Hartung"):
        tab = meta.meta_regression(0.1 + 0.05 * x, v, pd.DataFrame({"x": x}), n_permutations=0)
    assert (tab["test"] == "z").all() and (tab["se"] > 0).all() and (tab["p"] > 0).all()
    with pytest.warns(RuntimeWarning, match="Knapp-Hartung"):
        table = meta.metaregression_table(
            list("abcde"), 0.1 + 0.05 * x, v, pd.DataFrame({"age": x}, index=list("abcde")),
            "m", meta.resolve_options({"n_permutations": 0, "moderators": ["age"]}))
    assert table["warning"].str.contains("z test used").all()


def test_default_meta_inference_is_calibrated_with_ten_studies():
    """Issue 11 §2: 8,000 null meta-analyses and meta-regressions of k = 10 studies (tau2
    0.03 and 0.1, variances of g from 10-120 vs 10-60 subjects). The default (Knapp-Hartung)
    rejects at about 0.05; the Wald z test rejects 0.07-0.09 of the time."""
    k, n_rep = 10, 4000
    opts = meta.resolve_options()
    assert opts["knapp_hartung"] is True
    rates = {}
    for test, kh in (("default", opts["knapp_hartung"]), ("z", False)):
        rng = np.random.default_rng(5)
        p_mean, p_slope = [], []
        for tau2 in (0.03, 0.1):
            n1, n2 = rng.integers(10, 120, (k, n_rep)), rng.integers(10, 60, (k, n_rep))
            v = 1 / n1 + 1 / n2 + 0.25 / (2 * (n1 + n2))
            y = rng.normal(size=(k, n_rep)) * np.sqrt(v + tau2)
            X = np.column_stack([np.ones(k), rng.normal(40, 5, k)])
            p_mean.append(meta.fit_rma(y, v, None, opts["method"], kh).pval[0])
            p_slope.append(meta.fit_rma(y + 0.3, v, X, opts["method"], kh).pval[1])
        rates[test] = [np.mean(np.concatenate(p) < 0.05) for p in (p_mean, p_slope)]
    # binomial SE at 0.05 over 8,000 null data sets: 0.0024
    for rate in rates["default"]:
        assert 0.035 < rate < 0.065, rates
    assert min(rates["z"]) > 0.065, rates  # measured: default 0.055/0.057, z 0.075/0.081


def test_dl_matches_statsmodels_combine_effects():
    from statsmodels.stats.meta_analysis import combine_effects

    y, v, _ = bcg()
    ref = combine_effects(y, v, method_re="chi2")
    fit = meta.fit_rma(y, v, None, "DL")
    np.testing.assert_allclose(fit.tau2[0], ref.tau2, rtol=1e-10)
    np.testing.assert_allclose(fit.beta[0, 0], ref.mean_effect_re, rtol=1e-10)
    np.testing.assert_allclose(fit.se[0, 0], ref.sd_eff_w_re, rtol=1e-10)
    np.testing.assert_allclose(fit.i2[0] / 100, ref.i2, rtol=1e-10)
    kh = meta.fit_rma(y, v, None, "DL", knapp_hartung=True)
    np.testing.assert_allclose(kh.se[0, 0], ref.sd_eff_w_re_hksj, rtol=1e-10)


def test_reml_converges_and_equals_scalar_fits_column_by_column():
    rng = np.random.default_rng(2)
    k, m = 12, 400
    v = rng.uniform(0.01, 0.2, (k, m))
    y = rng.normal(0, 1, (k, m)) * np.sqrt(v + rng.choice([0.0, 0.003, 0.05], m))
    fit = meta.fit_rma(y, v, None, "REML")
    assert fit.converged.all()
    assert np.any(fit.tau2 == 0) and np.any(fit.tau2 > 0)
    for j in rng.choice(m, 5, replace=False):
        summary = _pymare_fit(y[:, j], v[:, j], "REML", "wald")
        np.testing.assert_allclose(fit.tau2[j], np.ravel(summary.tau2)[0], rtol=1e-5, atol=1e-8)
    # REML estimate is a maximum: the score is ~0 in the interior
    inner = fit.tau2 > 1e-6
    X = np.ones((k, 1))
    num, _, _ = meta._reml_score(y[:, inner], v[:, inner], X, fit.tau2[inner])
    assert np.max(np.abs(num)) < 1e-6


def test_leave_one_out_equals_separate_fits():
    y, v, _ = bcg()
    loo = meta.leave_one_out(np.arange(13), y, v)
    for i in (0, 7, 12):
        keep = np.arange(13) != i
        ref = meta.meta_analysis(y[keep], v[keep])
        row = loo.iloc[i]
        assert row["study_omitted"] == i and row["k"] == 12
        np.testing.assert_allclose([row["g"], row["tau2"], row["i2"]],
                                   [ref["g"], ref["tau2"], ref["i2"]], rtol=1e-9)


def test_missing_study_in_a_column_is_left_out_of_that_column_only():
    y, v, _ = bcg()
    Y = np.column_stack([y, y])
    Y[3, 1] = np.nan
    fit = meta.fit_rma(Y, v, None, "REML")
    ref = meta.fit_rma(np.delete(y, 3), np.delete(v, 3), None, "REML")
    assert list(fit.k) == [13, 12]
    np.testing.assert_allclose(fit.beta[0, 1], ref.beta[0, 0], rtol=1e-10)
    np.testing.assert_allclose(fit.tau2[1], ref.tau2[0], rtol=1e-8)


# ---------------------------------------------------------------------- meta-regression
def _moderator_data(slope, seed, k=20):
    rng = np.random.default_rng(seed)
    x = rng.normal(10, 3, k)
    v = rng.uniform(0.02, 0.06, k)
    y = 0.3 + slope * (x - 10) + rng.normal(0, 1, k) * np.sqrt(v + 0.01)
    return y, v, x


def test_metaregression_detects_planted_slope_with_right_sign():
    y, v, x = _moderator_data(-0.06, seed=4)
    tab = meta.meta_regression(y, v, pd.DataFrame({"duration": x}), n_permutations=500,
                               rng=np.random.default_rng(0))
    row = tab.set_index("moderator").loc["duration"]
    assert row["beta"] < 0
    assert row["p"] < 0.01 and row["p_perm"] < 0.01 and row["qm_p_perm"] < 0.01
    assert 0 <= row["r2"] <= 100


def test_metaregression_null_moderator_not_significant():
    y, v, x = _moderator_data(0.0, seed=4)
    tab = meta.meta_regression(y, v, pd.DataFrame({"edss": x}), n_permutations=500,
                               rng=np.random.default_rng(0))
    row = tab.set_index("moderator").loc["edss"]
    assert row["p"] > 0.05 and row["p_perm"] > 0.05


def test_permutations_are_exact_for_few_studies():
    y, v, x = _moderator_data(0.05, seed=1, k=5)
    tab = meta.meta_regression(y, v, pd.DataFrame({"age": x}), n_permutations=1000)
    row = tab.set_index("moderator").loc["age"]
    assert row["permutation"] == "exact" and row["n_permutations"] == 120
    assert np.isclose(row["p_perm"] * 120, round(row["p_perm"] * 120))


def test_metaregression_table_skips_unusable_moderators_with_reason():
    y, v, x = _moderator_data(0.0, seed=3, k=8)
    studies = [f"S{i}" for i in range(8)]
    mods = pd.DataFrame({"age": x, "duration": 5.0, "edss": np.r_[x[:2], [np.nan] * 6],
                         "t2lv": np.nan, "pctfemale": 50.0}, index=studies)
    opts = meta.resolve_options({"n_permutations": 50})
    tab = meta.metaregression_table(studies, y, v, mods, "within_DMN", opts)
    reasons = tab.set_index("model")["warning"]
    assert "constant" in reasons["single:duration"]
    assert "available for 2 studies" in reasons["single:edss"]
    assert "single:age" in set(tab["model"]) and "joint" not in set(tab["model"])


# ------------------------------------------------------------------- degenerate inputs
def test_fewer_than_min_studies_gives_fixed_effect_with_warning():
    y, v = np.array([0.2, 0.5]), np.array([0.04, 0.09])
    res = meta.meta_analysis(y, v, "REML", min_studies=3)
    w = 1 / v
    assert res["model"] == "fixed" and res["method"] == "FE" and res["tau2"] == 0
    assert "fixed-effect" in res["warning"] and "k=2" in res["warning"]
    np.testing.assert_allclose(res["g"], np.sum(w * y) / w.sum())
    np.testing.assert_allclose(res["se"], np.sqrt(1 / w.sum()))
    assert meta.meta_analysis(y[:1], v[:1])["g"] == pytest.approx(0.2)
    assert meta.meta_analysis([], [])["warning"].startswith("no study")


def _write_study_tables(tmp_path, effects):
    paths = {}
    for study, rows in effects.items():
        path = tmp_path / f"study-{study}_desc-MSvsHC_networks.tsv"
        pd.DataFrame(rows).to_csv(path, sep="\t", index=False, na_rep="n/a")
        paths[study] = path
    return paths


def _row(metric, g, var_g):
    return {"metric": metric, "network": metric.split("_")[1], "n_ms": 20, "n_hc": 15,
            "t": 1.0, "p": 0.3, "g": g, "var_g": var_g, "ci_low": g - 0.4, "ci_high": g + 0.4}


def test_meta_networks_excludes_bad_studies_with_reasons_and_writes_tables(tmp_path):
    rng = np.random.default_rng(0)
    effects = {f"S{i}": [_row("within_DMN", rng.normal(0.3, 0.2), 0.05),
                         _row("within_SN", rng.normal(0, 0.2), 0.05)] for i in range(6)}
    effects["S1"][0]["var_g"] = 0.0
    effects["S2"][0]["g"] = np.nan
    effects["S3"] = effects["S3"][1:]
    for i in (2, 3, 4, 5):  # leave within_SN with k = 2 -> fixed effect
        effects[f"S{i}"][-1]["g"] = np.nan
    moderators = pd.DataFrame({"study": list(effects), "age": rng.normal(40, 4, 6),
                               "duration": rng.normal(8, 2, 6)})
    paths = meta.meta_networks(_write_study_tables(tmp_path, effects), moderators,
                               tmp_path / "meta", {"n_permutations": 20})
    for key in ("networks", "loo", "egger", "metaregression", "moderators", "forest"):
        assert paths[key].exists()
    net = pd.read_csv(paths["networks"], sep="\t").set_index("metric")
    assert net.loc["within_DMN", "k"] == 3 and net.loc["within_DMN", "k_excluded"] == 3
    assert "S1: var_g is zero" in net.loc["within_DMN", "excluded"]
    assert "S2: g is not finite" in net.loc["within_DMN", "excluded"]
    assert "S3: metric missing" in net.loc["within_DMN", "excluded"]
    assert net.loc["within_SN", "model"] == "fixed"
    assert "fixed-effect" in net.loc["within_SN", "warning"]
    forest = pd.read_csv(paths["forest"], sep="\t")
    dmn = forest[forest["metric"] == "within_DMN"]
    assert dmn["included"].sum() == 3
    assert np.isclose(dmn["weight"].sum(), 100)
    assert (dmn.loc[~dmn["included"], "weight"] == 0).all()


def test_collect_effects_reads_group_stage_tables(tmp_path):
    """msnet.group writes network_a/network_b, g_ci_low/g_ci_high and status/reason."""
    rows = [
        {"study_id": "A", "metric": "within_DMN", "network_a": "DMN", "network_b": "DMN",
         "g": 0.3, "var_g": 0.05, "g_ci_low": -0.1, "g_ci_high": 0.7, "status": "ok",
         "reason": ""},
        {"study_id": "A", "metric": "between_DMN_SMN", "network_a": "DMN", "network_b": "SMN",
         "g": np.nan, "var_g": np.nan, "g_ci_low": np.nan, "g_ci_high": np.nan,
         "status": "excluded", "reason": "fewer than 2 subjects per group"},
    ]
    path = tmp_path / "study-A_desc-MSvsHC_networks.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False, na_rep="n/a")
    eff = meta.collect_effects({"A": path}).set_index("metric")
    assert eff.loc["within_DMN", "network"] == "DMN"
    assert eff.loc["between_DMN_SMN", "network"] == "DMN-SMN"
    assert eff.loc["within_DMN", "ci_low"] == -0.1 and eff.loc["within_DMN", "included"]
    assert eff.loc["between_DMN_SMN", "exclusion_reason"] == (
        "excluded at the group stage: fewer than 2 subjects per group")


def test_bad_inputs_raise_clear_errors(tmp_path):
    path = tmp_path / "bad.tsv"
    pd.DataFrame({"metric": ["within_DMN"], "g": [0.1]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(MsnetInputError, match="var_g"):
        meta.collect_effects({"S1": path})
    with pytest.raises(MsnetInputError, match="method"):
        meta.resolve_options({"method": "ML"})
    with pytest.raises(MsnetInputError, match="unknown option"):
        meta.resolve_options({"n_perm": 10})
    with pytest.raises(MsnetInputError, match="min_studies"):
        meta.resolve_options({"min_studies": 1})


def test_study_moderators(tmp_path):
    path = tmp_path / "participants.tsv"
    pd.DataFrame({
        "participant_id": ["sub-1", "sub-2", "sub-3", "sub-4"], "group": ["MS", "MS", "HC", "MS"],
        "age": [30, 40, 50, 60], "sex": ["F", "M", "F", "F"],
        "disease_duration": ["4", "6", "n/a", "n/a"], "edss": [2.0, 3.0, np.nan, 4.0],
    }).to_csv(path, sep="\t", index=False)
    mods = meta.study_moderators({"A": path}).iloc[0]
    assert (mods["n_ms"], mods["n_hc"]) == (3, 1)
    assert mods["age"] == 45 and mods["pctfemale"] == 75
    assert mods["duration"] == 5 and mods["edss"] == 3 and np.isnan(mods["t2lv"])
    sub = meta.study_moderators({"A": path}, included={"A": ["sub-1", "sub-3"]}).iloc[0]
    assert sub["age"] == 40 and sub["edss"] == 2
    bad = tmp_path / "bad.tsv"
    pd.DataFrame({"participant_id": ["sub-1"]}).to_csv(bad, sep="\t", index=False)
    with pytest.raises(MsnetInputError, match="group"):
        meta.study_moderators({"B": bad})


# --------------------------------------------------------------------------- voxelwise
AFFINE = np.array([[4.0, 0, 0, -24], [0, 4.0, 0, -60], [0, 0, 4.0, 0], [0, 0, 0, 1]])


def _write_maps(tmp_path, G, V, mask):
    """Write (k, *shape) arrays as per-study maps; return g paths, var paths, mask path."""
    nib.Nifti1Image(mask.astype(np.uint8), AFFINE).to_filename(tmp_path / "mask.nii.gz")
    g_maps, v_maps = {}, {}
    for i in range(G.shape[0]):
        g_maps[f"S{i}"] = tmp_path / f"study-S{i}_stat-g_map.nii.gz"
        v_maps[f"S{i}"] = tmp_path / f"study-S{i}_stat-varg_map.nii.gz"
        nib.Nifti1Image(G[i].astype(np.float32), AFFINE).to_filename(g_maps[f"S{i}"])
        nib.Nifti1Image(V[i].astype(np.float32), AFFINE).to_filename(v_maps[f"S{i}"])
    return g_maps, v_maps, tmp_path / "mask.nii.gz"


def _random_maps(k, shape, seed, effect=None, tau=0.1):
    rng = np.random.default_rng(seed)
    V = rng.uniform(0.03, 0.1, (k, *shape))
    mu = np.zeros(shape) if effect is None else effect
    G = mu + rng.normal(0, 1, (k, *shape)) * np.sqrt(V + tau**2)
    return G, V


def _load(path, mask):
    return np.asarray(nib.load(path).dataobj, dtype=float)[mask]


def test_voxelwise_maps_equal_network_engine_at_every_voxel(tmp_path):
    shape = (4, 3, 3)
    mask = np.ones(shape, bool)
    mask[0, 0, 0] = False
    G, V = _random_maps(7, shape, seed=1)
    G[2, 1, 1, 1] = np.nan  # one study missing at one voxel
    g_maps, v_maps, mask_path = _write_maps(tmp_path, G, V, mask)
    paths = meta.meta_voxelwise(g_maps, v_maps, mask_path, "DMN", None, tmp_path / "out",
                                {"n_permutations": 0, "moderators": []})
    Y = np.stack([np.asarray(nib.load(p).dataobj, float)[mask] for p in g_maps.values()])
    Vv = np.stack([np.asarray(nib.load(p).dataobj, float)[mask] for p in v_maps.values()])
    maps = {name: _load(paths[name], mask) for name in ("g", "z", "tau2", "i2")}
    for j in range(Y.shape[1]):
        ok = np.isfinite(Y[:, j])
        ref = meta.meta_analysis(Y[ok, j], Vv[ok, j], "REML")  # Knapp-Hartung by default
        z_ref = meta.as_z(ref["stat"], ref["df"])  # the z map holds z-equivalents of t
        np.testing.assert_allclose(
            [maps["g"][j], maps["z"][j], maps["tau2"][j], maps["i2"][j]],
            [ref["g"], z_ref, ref["tau2"], ref["i2"]], rtol=1e-5, atol=1e-6)
    assert _load(paths["fdrq"], ~mask).min() == 1.0


def _nimare_maps(g_maps, v_maps, mask_path, estimator):
    from nimare.dataset import Dataset

    source = {s: {"contrasts": {"1": {"images": {"beta": str(g_maps[s]),
                                                 "varcope": str(v_maps[s])}}}}
              for s in g_maps}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dset = Dataset(source, target=None, mask=str(mask_path))
        return estimator.fit(dset)


@pytest.mark.slow
def test_voxelwise_engine_matches_nimare_ibma(tmp_path, monkeypatch):
    import gc

    from nimare.meta.ibma import DerSimonianLaird, VarianceBasedLikelihood

    # nilearn's safe_get_data runs gc.collect() per image, ~0.25 s each inside pytest
    monkeypatch.setattr(gc, "collect", lambda *args, **kwargs: 0)
    shape = (5, 4, 3)
    mask = np.ones(shape, bool)
    G, V = _random_maps(8, shape, seed=3, tau=0.15)
    G[:, 0, 0, 0] = 0.2 + 0.01 * np.arange(8)  # a homogeneous voxel (tau2 on the boundary)
    g_maps, v_maps, mask_path = _write_maps(tmp_path, G, V, mask)
    Y = np.stack([np.asarray(nib.load(p).dataobj, float)[mask] for p in g_maps.values()])
    Vv = np.stack([np.asarray(nib.load(p).dataobj, float)[mask] for p in v_maps.values()])
    cases = [
        ("DL", False, DerSimonianLaird(small_sample_correction="wald")),
        ("REML", True, VarianceBasedLikelihood(method="reml",
                                               small_sample_correction="knapp-hartung")),
    ]
    for method, knha, estimator in cases:
        res = _nimare_maps(g_maps, v_maps, mask_path, estimator)
        fit = meta.fit_rma(Y, Vv, None, method, knapp_hartung=knha)
        ours = {"est": fit.beta[0], "se": fit.se[0], "tau2": fit.tau2,
                "z": meta.as_z(fit.stat[0], fit.df_test)}
        for key, mine in ours.items():
            theirs = res.get_map(key, return_type="array").astype(float)
            np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{method} knha={knha} {key}")


def test_sign_flip_fwe_is_calibrated_on_null_data():
    opts = meta.resolve_options({"n_permutations": 200, "seed": 1})
    rng = np.random.default_rng(7)
    n_datasets, hits = 40, 0
    for d in range(n_datasets):
        V = rng.uniform(0.03, 0.1, (8, 15))
        Y = rng.normal(0, 1, (8, 15)) * np.sqrt(V + 0.01)
        res = meta.voxelwise_meta(Y, V, opts, network=f"null{d}")
        hits += np.nanmin(res["p_fwe"]) <= 0.05
    # expected 2 of 40 at alpha = 0.05; P(X >= 7) < 0.01 under Binomial(40, 0.05)
    assert hits <= 6


def test_sign_flip_is_exact_for_few_studies():
    rng = np.random.default_rng(0)
    V = rng.uniform(0.03, 0.1, (4, 6))
    Y = 1.0 + rng.normal(0, 0.05, (4, 6))
    res = meta.voxelwise_meta(Y, V, meta.resolve_options({"n_permutations": 1000}))
    assert res["exact"] and res["n_permutations"] == 16
    # all four studies positive everywhere: only the identity and the full flip are as extreme
    np.testing.assert_allclose(res["p_fwe"], 2 / 16)


def _reference_sign_flip_null(Y, V, opts, rng, grid=None, z_threshold=None):
    """The sign-flip null before the compiled refits: one numpy fit of every voxel per
    permutation, full z maps, max |z| and the largest cluster of each map."""
    signs, exact = meta.sign_flips(Y.shape[0], opts["n_permutations"], rng)
    max_stat, max_cluster = np.zeros(len(signs)), np.zeros(len(signs))
    for b, s in enumerate(signs):
        z = meta._pooled_stat(s[:, None] * Y, V, None, opts, opts["min_studies"])
        max_stat[b] = meta._nanmax_abs(z[None])[0]
        if grid is not None:
            max_cluster[b] = grid.max_cluster_size(np.nan_to_num(z), z_threshold, True)
    return max_stat, max_cluster, exact


def _reference_moderator_null(Y, V, X, opts, rng):
    """The meta-regression permutation null before the compiled refits (numpy, per order)."""
    orders, exact = meta.permutation_orders(Y.shape[0], opts["n_permutations"], rng)
    min_k = max(opts["min_studies"], X.shape[1] + 1)
    return np.array([meta._nanmax_abs(meta._pooled_stat(Y[o], V[o], X, opts, min_k)[None])[0]
                     for o in orders]), exact


def _awkward_maps(k=12, n_vox=300, seed=1):
    """Maps with a planted effect, heterogeneity, missing studies, voxels with too few
    studies (fixed effect) and identical effects (Knapp-Hartung fallback)."""
    rng = np.random.default_rng(seed)
    V = rng.uniform(0.02, 0.2, (k, n_vox))
    tau = rng.choice([0.0, 0.1, 0.4], n_vox)
    Y = 0.15 + rng.normal(size=(k, n_vox)) * np.sqrt(V + tau**2)
    Y[rng.random((k, n_vox)) < 0.1] = np.nan
    Y[:, :5] = 0.3
    Y[: k - 2, 5:10] = np.nan
    return Y, V, rng.normal(size=k)


@pytest.mark.parametrize("method", ["REML", "DL"])
@pytest.mark.parametrize("knha", [True, False])
def test_compiled_permutation_nulls_equal_the_numpy_reference(method, knha, monkeypatch):
    from msnet import stats as msstats

    Y, V, x = _awkward_maps()
    mask = np.zeros((10, 10, 4), bool)
    mask.flat[:300] = True
    grid = msstats.VoxelGrid(mask, 1)
    X = np.column_stack([np.ones(x.size), x])
    opts = meta.resolve_options({"n_permutations": 60, "method": method, "knapp_hartung": knha})
    z_thr = 1.5
    ref = _reference_sign_flip_null(Y, V, opts, np.random.default_rng(3), grid, z_thr)
    ref_mod = _reference_moderator_null(Y, V, X, opts, np.random.default_rng(4))
    for compiled in (True, False):  # the kernels, and the numpy fallback on batches
        monkeypatch.setattr(meta, "_COMPILED", compiled)
        new = meta.sign_flip_null(Y, V, opts, np.random.default_rng(3), grid, z_thr)
        new_mod = meta.moderator_permutation_null(Y, V, X, opts, np.random.default_rng(4))
        if method == "DL" and compiled:  # same operations in the same order
            np.testing.assert_array_equal(new[0], ref[0])
        # REML stops at |step| < 1e-10: the numpy reference itself moves by that much
        # when its batches change (summation order), hence a tolerance
        np.testing.assert_allclose(new[0], ref[0], rtol=1e-8, atol=0)
        np.testing.assert_array_equal(new[1], ref[1])
        np.testing.assert_allclose(new_mod[0], ref_mod[0], rtol=1e-8, atol=0)
        assert new[2] == ref[2] and new_mod[1] == ref_mod[1]
        observed = np.abs(meta._pooled_stat(Y, V, None, opts, 3))
        np.testing.assert_array_equal(meta.permutation_p(new[0][:, None], observed, new[2]),
                                      meta.permutation_p(ref[0][:, None], observed, ref[2]))


def test_compiled_kernel_equals_fit_core_column_by_column():
    from msnet import _metakernels as kern

    Y, V, x = _awkward_maps(k=9, n_vox=200, seed=5)
    X = np.column_stack([np.ones(x.size), x])
    rows = np.stack([np.arange(9), np.random.default_rng(0).permutation(9)])
    for p, design in ((1, None), (2, X)):
        for method, code in (("REML", kern.REML), ("DL", kern.DL), ("FE", kern.FE)):
            t = np.empty((2, 200))
            df = np.empty_like(t)
            kern.perm_stats(np.ascontiguousarray(Y.T), np.ascontiguousarray(V.T), x, rows,
                            np.ones((2, 9)), p, code, True, max(3, p + 1), t, df)
            for b in range(2):
                core = meta._fit_core(Y[rows[b]], V[rows[b]], design, method, True, 3)
                with np.errstate(invalid="ignore"):
                    ref = core["beta"][-1] / np.sqrt(core["cov"][:, -1, -1])
                np.testing.assert_allclose(t[b], ref, rtol=1e-8, atol=1e-12)
                np.testing.assert_array_equal(df[b], core["df_test"])


def test_planted_effect_is_recovered_with_cluster_table(tmp_path):
    shape = (8, 8, 6)
    mask = np.zeros(shape, bool)
    mask[1:7, 1:7, 1:5] = True
    effect = np.zeros(shape)
    effect[2:4, 2:4, 2:4] = 1.0
    G, V = _random_maps(12, shape, seed=5, effect=effect)
    g_maps, v_maps, mask_path = _write_maps(tmp_path, G, V, mask)
    mods = pd.DataFrame({"study": list(g_maps), "age": np.linspace(30, 50, 12)})
    paths = meta.meta_voxelwise(g_maps, v_maps, mask_path, "SMN", mods, tmp_path / "out",
                                {"n_permutations": 200})
    logp = _load(paths["logpfwe"], mask)
    planted = effect[mask] > 0
    assert np.all(logp[planted] > -np.log10(0.05))
    assert np.mean(np.abs(logp[~planted]) > -np.log10(0.05)) < 0.05
    clusters = pd.read_csv(paths["clusters"], sep="\t")
    top = clusters.iloc[0]
    assert top["network"] == "SMN" and top["direction"] == "MS>HC" and top["size_vox"] >= 6
    assert top["cluster_p_fwe"] < 0.05 and top["peak_p_fwe"] < 0.05 and top["peak_g"] > 0.5
    # the statistic is a z, named so (peak_z is the MNI z coordinate, as in the group tables)
    assert "peak_t" not in clusters and top["peak_zstat"] > 3
    peak_ijk = np.linalg.solve(AFFINE, [top["peak_x"], top["peak_y"], top["peak_z"], 1])[:3]
    assert effect[tuple(np.round(peak_ijk).astype(int))] > 0
    z_map = np.asarray(nib.load(paths["z"]).dataobj)
    assert top["peak_zstat"] == pytest.approx(z_map[tuple(np.round(peak_ijk).astype(int))],
                                              rel=1e-5)
    for name in ("age", "duration", "edss", "t2lv"):  # unusable moderators give 0 maps
        for stat in ("beta", "z", "logpperm"):
            assert paths[f"mod-{name}_{stat}"].exists()
    assert not _load(paths["mod-edss_beta"], mask).any()
    info = json.loads(paths["info"].read_text())
    assert "available for 0 studies" in info["moderators"]["edss"]["skipped"]
    assert np.abs(_load(paths["mod-age_logpperm"], mask)).max() < -np.log10(0.05)


def test_voxelwise_metaregression_equals_network_metaregression():
    y, v, x = _moderator_data(0.05, seed=8, k=10)
    Y = np.column_stack([y, y[::-1]])
    Vv = np.column_stack([v, v[::-1]])
    opts = meta.resolve_options({"n_permutations": 0})
    vox = meta.voxelwise_metaregression(Y, Vv, x, opts)
    tab = meta.meta_regression(y, v, pd.DataFrame({"x": x}), n_permutations=0)
    row = tab.set_index("moderator").loc["x"]
    assert row["test"] == "knha" and row["df"] == 8
    np.testing.assert_allclose([vox["beta"][0], vox["z"][0]],
                               [row["beta"], meta.as_z(row["stat"], row["df"])], rtol=1e-10)


def test_meta_voxelwise_rejects_maps_off_the_mask_grid(tmp_path):
    mask = np.ones((3, 3, 3), bool)
    G, V = _random_maps(3, (3, 3, 3), seed=0)
    g_maps, v_maps, mask_path = _write_maps(tmp_path, G, V, mask)
    nib.Nifti1Image(np.zeros((4, 3, 3), np.float32), AFFINE).to_filename(g_maps["S1"])
    with pytest.raises(MsnetInputError, match="S1"):
        meta.meta_voxelwise(g_maps, v_maps, mask_path, "VN", None, tmp_path / "out")


def test_metaregression_fdr_families_and_permutation_p():
    table = pd.DataFrame({
        "metric": ["within_DMN", "within_DMN", "within_SN", "within_DMN", "within_DMN",
                   "between_DMN_SN", "within_VN"],
        "model": ["single:age", "single:age", "single:edss", "joint", "joint", "single:age",
                  "single:t2lv"],
        "moderator": ["intercept", "age", "edss", "age", "edss", "age", "t2lv"],
        "p": [0.001, 0.01, 0.04, 0.01, 0.02, 0.01, np.nan],
        "p_perm": [np.nan, 0.02, np.nan, 0.03, 0.5, 0.2, np.nan]})
    q = meta.metaregression_fdr(table)
    assert np.isnan(q[0]) and np.isnan(q[6])  # intercept; a model that was not fitted
    # single-moderator within-network family: p_perm 0.02 (age) and p 0.04 (no p_perm)
    np.testing.assert_allclose(q[[1, 2]], [0.04, 0.04])
    np.testing.assert_allclose(q[[3, 4]], [0.06, 0.5])  # the joint model is its own family
    assert q[5] == pytest.approx(0.2)  # between-network metrics are their own family


def test_meta_networks_writes_fdr_of_the_metaregression(tmp_path):
    rng = np.random.default_rng(3)
    effects = {f"S{i}": [_row("within_DMN", rng.normal(0.3, 0.2), 0.05),
                         _row("within_SN", rng.normal(0, 0.2), 0.05)] for i in range(6)}
    moderators = pd.DataFrame({"study": list(effects), "age": rng.normal(40, 4, 6),
                               "edss": rng.normal(3, 1, 6)})
    paths = meta.meta_networks(_write_study_tables(tmp_path, effects), moderators,
                               tmp_path / "meta", {"n_permutations": 20})
    reg = pd.read_csv(paths["metaregression"], sep="\t")
    slopes = reg[(reg["moderator"] != "intercept") & reg["p"].notna()]
    assert len(slopes) == 2 * 4  # 2 metrics x (age, edss, and both in the joint model)
    assert slopes["q_fdr"].notna().all()
    assert reg.loc[(reg["moderator"] == "intercept") | reg["p"].isna(), "q_fdr"].isna().all()
    assert (slopes["q_fdr"] >= slopes["p_perm"] - 1e-12).all()
    np.testing.assert_allclose(reg["q_fdr"], meta.metaregression_fdr(reg), equal_nan=True)


# ------------------------------------------------------------------------ meta vs mega
def test_meta_vs_mega_table(tmp_path):
    meta_table = pd.DataFrame({"metric": ["within_DMN", "within_SN"], "network": ["DMN", "SN"],
                               "k": [10, 10], "g": [0.3, -0.1], "ci_low": [0.1, -0.3],
                               "ci_high": [0.5, 0.1], "p": [0.01, 0.3], "i2": [20.0, 0.0],
                               "tau2": [0.01, 0.0]})
    mega = pd.DataFrame({"study_id": "pooled", "metric": ["within_DMN", "within_SN"],
                         "network_a": ["DMN", "SN"], "network_b": ["DMN", "SN"],
                         "beta": [0.01, 0.002], "g": [0.25, 0.05], "g_ci_low": [0.1, -0.1],
                         "g_ci_high": [0.4, 0.2], "p": [0.001, 0.5], "n_studies": 10})
    mega_path = tmp_path / "pooled.tsv"
    mega.to_csv(mega_path, sep="\t", index=False)
    out = meta.meta_vs_mega(meta_table, mega_path, tmp_path / "mvm.tsv").set_index("metric")
    assert (tmp_path / "mvm.tsv").exists()
    assert out.loc["within_DMN", "difference"] == pytest.approx(0.05)
    assert out.loc["within_DMN", "mega_ci_low"] == 0.1
    assert bool(out.loc["within_DMN", "both_significant"]) is True
    assert bool(out.loc["within_DMN", "same_direction"]) is True
    assert bool(out.loc["within_SN", "same_direction"]) is False
