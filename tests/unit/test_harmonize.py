"""ComBat harmonisation (issue 11 §3): the adapter equals neuroHarmonize, and on simulated
multi-site maps (simulate.site_effect) it removes the site effect, keeps the planted MS
effect and keeps the pooled model's FWER."""

import numpy as np
import pandas as pd
import pytest

from msnet import ANALYSIS_NETWORKS, simulate
from msnet import stats as st
from msnet.errors import MsnetInputError
from msnet.harmonize import Harmonizer, combat, combat_covariates, shrinkage_table

SEED = 20261121


def _random_sites(seed=1, n=120, p=400, k=8):
    rng = np.random.default_rng(seed)
    site = rng.integers(0, k, n)
    site[:k] = np.arange(k)  # every site present
    group = rng.integers(0, 2, n).astype(float)
    age = rng.normal(45, 10, n)
    Y = (rng.normal(size=(n, p)) * np.exp(rng.normal(0, 0.3, k))[site, None]
         + rng.normal(0, 0.5, (k, p))[site] + 0.5 * group[:, None] + 0.02 * age[:, None])
    cov = pd.DataFrame({"group_ms": group, "age": age})
    return Y, np.array([f"site{s}" for s in site]), cov


# --------------------------------------------------------------------------- the library


def test_combat_equals_a_direct_neuroharmonize_call():
    from neuroHarmonize import harmonizationLearn

    Y, batch, cov = _random_sites()
    res = combat(Y, batch, cov)
    model, direct = harmonizationLearn(Y, cov.assign(SITE=batch)[["SITE", "group_ms", "age"]])
    np.testing.assert_allclose(res.data, direct, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.model["gamma_star"], model["gamma_star"], atol=1e-12)
    # shrinkage table: exactly the EB posterior weights of Johnson et al. (2007)
    table = shrinkage_table(res, "test").set_index("batch")
    for i, b in enumerate(model["SITE_labels"]):
        n = (batch == b).sum()
        t2, d_star = model["t2"][i], model["delta_star"][i]
        assert table.at[b, "n_subjects"] == n
        assert table.at[b, "additive_shrinkage"] == pytest.approx(
            np.median(d_star / (n * t2 + d_star)))
        # the posterior mean is the prior-weighted mix of the LS estimate and the prior mean
        # (up to the iteration's convergence tolerance, 1e-4 relative)
        w = d_star / (n * t2 + d_star)
        np.testing.assert_allclose(model["gamma_star"][i], (1 - w) * model["gamma_hat"][i]
                                   + w * model["gamma_bar"][i], rtol=1e-4, atol=1e-4)
    assert table["additive_shrinkage"].between(0, 1).all()
    assert table["multiplicative_shrinkage"].between(0, 1).all()


def test_combat_passes_constant_features_and_drops_constant_covariates():
    Y, batch, cov = _random_sites(p=50)
    Y[:, 7] = 3.0
    res = combat(Y.astype(np.float32), batch, cov.assign(const=1.0))
    assert res.data.dtype == np.float32 and np.isfinite(res.data).all()
    assert (res.data[:, 7] == 3.0).all() and res.features.sum() == 49
    assert res.covariates == ["group_ms", "age"]


def test_combat_refuses_lone_subject_sites_and_nan():
    Y, batch, cov = _random_sites(p=20)
    batch[0] = "alone"
    with pytest.raises(MsnetInputError, match="fewer than 2 subjects"):
        combat(Y, batch, cov)
    Y[1, 1] = np.nan
    with pytest.raises(MsnetInputError, match="NaN"):
        combat(Y, np.array(["a", "b"] * 60), cov)


def test_preserved_covariates_keep_within_ms_clinical_variables():
    subjects = pd.DataFrame({
        "group": ["MS", "MS", "MS", "HC", "HC"], "age": [30, 40, 50, 35, 45],
        "sex": ["F", "M", "F", "M", "F"], "mean_fd": [0.1, 0.2, 0.1, 0.15, 0.12],
        "edss": [2.0, 4.0, np.nan, np.nan, np.nan], "disease_duration": [5, 10, 15, np.nan, np.nan]})
    table, names = combat_covariates(subjects)
    assert names == ["group", "age", "sex", "mean_fd", "disease_duration", "edss"]
    assert list(table["group_ms"]) == [1, 1, 1, 0, 0]
    assert list(table["sex[M]"]) == [0, 1, 0, 1, 0]
    assert list(table["edss"]) == [-1.0, 1.0, 0.0, 0.0, 0.0]  # MS mean 3, missing MS -> 0
    assert list(table["disease_duration"]) == [-5.0, 0.0, 5.0, 0.0, 0.0]


# --------------------------------------------------------------------------- simulated sites


def _map_study(cfg, seed, grid, index, noise_sd, rng, plan, effects, sites):
    """One study's generating network maps (simulate's own model and site effect) plus white
    noise standing in for the dual-regression estimation error."""
    study = simulate.STUDY_IDS[index]
    plan = plan[plan["study_id"] == study].reset_index(drop=True)
    eff = effects[effects["study_id"] == study]
    deltas = (eff["direction"] * eff["delta"]).to_numpy()
    site = sites.iloc[index]
    n_net = len(grid.names)
    maps = []
    for i, row in plan.iterrows():
        srng = simulate.subject_rng(seed, index, i)
        fields = simulate._smooth_fields(srng, grid, n_net)
        m, _, _ = simulate._subject_maps(cfg, grid, row, deltas, fields, srng)
        m = simulate.apply_site_effect(m, grid.base_maps, site["additive"], site["multiplicative"])
        maps.append(m[: len(ANALYSIS_NETWORKS)])
    maps = np.stack(maps)
    maps += rng.normal(0.0, noise_sd, maps.shape).astype(np.float32)
    return plan, maps


def simulated_maps(site_effect, effect_size=0.5, seed=SEED, resolution_mm=4, scale=0.05,
                   n_studies=25, noise_sd=0.4):
    cfg = simulate.sim_config({"scale": scale, "resolution_mm": resolution_mm,
                               "effect_size": effect_size, "site_effect": site_effect,
                               "n_studies": n_studies})
    grid = simulate.load_grid(resolution_mm)
    rng = np.random.default_rng([seed, 7])
    plan, effects = simulate.plan_dataset(cfg, seed), simulate.plan_effects(cfg, seed)
    sites = simulate.site_effects(cfg, seed)
    parts = [_map_study(cfg, seed, grid, i, noise_sd, rng, plan, effects, sites)
             for i in range(n_studies)]
    subjects = pd.concat([p for p, _ in parts], ignore_index=True)
    subjects["mean_fd"] = rng.uniform(0.05, 0.3, len(subjects))
    maps = np.concatenate([m for _, m in parts])  # (n, networks, V)
    return grid, subjects, maps


def _analysis_mask(grid, k):
    return grid.base_maps[k] > 0.2


def _between_site_variance(Y, subjects):
    """Mean over voxels of the variance across sites of the HC site means."""
    hc = (subjects["group"] == "HC").to_numpy()
    means = pd.DataFrame(Y[hc]).groupby(subjects["study_id"].to_numpy()[hc]).mean()
    return float(means.var(axis=0, ddof=1).mean())


@pytest.fixture(scope="module")
def sites_sim():
    """Demo-sized maps (25 studies, 8 mm grid) with and without a planted site effect: the
    same subjects and noise (the site effect has its own random stream)."""
    return (simulated_maps(site_effect=0.3, resolution_mm=8),
            simulated_maps(site_effect=0.0, resolution_mm=8))


def _harmonise(subjects, Y, net="DMN"):
    sub, out, records = Harmonizer(covariates=["age", "sex", "mean_fd"]).maps(subjects, Y, net)
    assert len(sub) == len(subjects) and not records
    return out


@pytest.mark.slow
def test_combat_removes_the_planted_site_effect(sites_sim):
    """The planted site effect in the HC maps is the difference between the two simulations;
    what is left of it after ComBat is the difference between their harmonised maps. Its
    between-site variance drops by >= 80 % in every network."""
    (grid, subjects, maps), (_, subjects0, maps0) = sites_sim
    assert subjects.equals(subjects0)
    truth = simulate.site_effects(simulate.sim_config({"site_effect": 0.3}), SEED)
    assert truth["additive"].std() > 0.15 and np.log(truth["multiplicative"]).std() > 0.15
    for k, net in enumerate(ANALYSIS_NETWORKS):
        mask = _analysis_mask(grid, k)
        Y, Y0 = maps[:, k, mask], maps0[:, k, mask]
        before = _between_site_variance(Y - Y0, subjects)
        after = _between_site_variance(_harmonise(subjects, Y, net)
                                       - _harmonise(subjects, Y0, net), subjects)
        assert before > 0.02 and after <= 0.2 * before, (net, before, after)


def _fwe_findings(grid, subjects, Y_by_net, n_perm=200):
    """Published locations recovered (FWE < 0.05, right sign, within 12 mm) by the pooled
    voxelwise model (study indicators + covariates, Freedman-Lane within-study permutations)."""
    import nibabel as nib

    from msnet.report import compare_with_published

    data = subjects.copy()
    data["group_ms"] = (data["group"] == "MS").astype(float)
    design = st.build_design(data, ["group_ms"], ["age", "sex", "mean_fd"], study_col="study_id")
    X, cols = design.with_study_dummies()
    k = cols.index("group_ms")
    found = 0
    for j, net in enumerate(ANALYSIS_NETWORKS):
        mask = _analysis_mask(grid, j)
        vol_mask = np.zeros(grid.mask.shape, bool)
        vol_mask[grid.mask] = mask
        res = st.permuted_glm(Y_by_net[net][design.index], X[:, k], np.delete(X, k, axis=1),
                              n_perm=n_perm, seed=[SEED, j], mask=vol_mask,
                              blocks=design.studies)
        maps = st.inference_maps(res)
        imgs = []
        for name in ("t", "logpfwe"):
            vol = np.zeros(grid.mask.shape, np.float32)
            vol[vol_mask] = maps[name]
            imgs.append(nib.Nifti1Image(vol, grid.mask_img.affine))
        found += int(compare_with_published(*imgs, net)["found"].sum())
    return found


@pytest.mark.slow
def test_planted_ms_effect_survives_combat(sites_sim):
    grid, subjects, maps = sites_sim[0]
    plain, harmonised = {}, {}
    for k, net in enumerate(ANALYSIS_NETWORKS):
        plain[net] = maps[:, k, _analysis_mask(grid, k)]
        harmonised[net] = _harmonise(subjects, plain[net], net)
    assert _fwe_findings(grid, subjects, harmonised) >= 10


def _null_fwer(n_sims, n_perm=100, harmonise=True, n_studies=10):
    """Fraction of null simulations in which the pooled model on (ComBat-harmonised) DMN maps
    has any FWE-significant voxel.

    The subjects (simulate's plan of the first ``n_studies`` studies at the demo scale) are
    fixed; each simulation draws new maps with no MS effect: the DMN base map scaled by the
    subject's amplitude, plus a smooth random field (FWHM about 14 mm) and white noise, and a
    new site effect per study (:func:`msnet.simulate.site_effects` with its own seed,
    ``site_effect`` 0.3, applied by :func:`msnet.simulate.apply_site_effect`).
    """
    from scipy import ndimage

    cfg = simulate.sim_config({"resolution_mm": 8, "n_studies": n_studies, "site_effect": 0.3})
    grid = simulate.load_grid(8)
    subjects = simulate.plan_dataset(cfg, SEED)
    subjects["mean_fd"] = np.random.default_rng(5).uniform(0.05, 0.3, len(subjects))
    data = subjects.assign(group_ms=(subjects["group"] == "MS").astype(float))
    design = st.build_design(data, ["group_ms"], ["age", "sex", "mean_fd"], study_col="study_id")
    X, cols = design.with_study_dummies()
    k = cols.index("group_ms")
    mask = _analysis_mask(grid, 0)
    vol_mask = np.zeros(grid.mask.shape, bool)
    vol_mask[grid.mask] = mask
    base = grid.base_maps[0][mask]
    box = tuple(slice(ix.min(), ix.max() + 1) for ix in np.nonzero(vol_mask))
    study_index = subjects["study_id"].map({s: i for i, s in enumerate(simulate.STUDY_IDS)})
    n = len(subjects)
    hits = 0
    for r in range(n_sims):
        rng = np.random.default_rng([SEED, r])
        field = rng.standard_normal((n, *vol_mask[box].shape), dtype=np.float32)
        field = ndimage.gaussian_filter(field, (0, 0.75, 0.75, 0.75))[:, vol_mask[box]]
        maps = (base * rng.normal(1.0, 0.15, (n, 1)) + 0.15 * field / field.std()
                + rng.normal(0.0, 0.3, (n, base.size)))
        sites = simulate.site_effects(cfg, 1000 + r)
        for i, eff in enumerate(sites.itertuples()):
            rows = (study_index == i).to_numpy()
            maps[rows] = simulate.apply_site_effect(maps[rows], base, eff.additive,
                                                    eff.multiplicative)
        Y = maps
        if harmonise:
            Y = _harmonise(subjects, Y)
        res = st.permuted_glm(Y[design.index], X[:, k], np.delete(X, k, axis=1), n_perm=n_perm,
                              seed=[r, 3], blocks=design.studies, mask=vol_mask)
        hits += bool((res.p_fwe < 0.05).any())
    return hits / n_sims


@pytest.mark.slow
def test_fwer_under_the_null_after_combat():
    assert 0.01 <= _null_fwer(200) <= 0.10


# --------------------------------------------------------------------------- outputs, report


def test_meta_vs_mega_puts_combat_mega_beside_meta_and_mega(tmp_path):
    from msnet.meta import meta_vs_mega

    meta = pd.DataFrame({"metric": ["within_DMN", "within_SMN"], "network": ["DMN", "SMN"],
                         "k": 25, "model": "random", "g": [0.3, -0.2], "ci_low": [0.1, -0.4],
                         "ci_high": [0.5, 0.0], "p": [0.01, 0.06], "i2": 10.0, "tau2": 0.01})
    mega = pd.DataFrame({"metric": ["within_DMN", "within_SMN"], "n_studies": 25,
                         "g": [0.32, -0.18], "g_ci_low": [0.2, -0.3], "g_ci_high": [0.44, -0.06],
                         "p": [1e-4, 0.004]})
    combat_mega = mega.assign(g=[0.35, -0.15])
    table = meta_vs_mega(meta, mega, tmp_path / "t.tsv", combat_table=combat_mega)
    np.testing.assert_allclose(table["combat_g"], [0.35, -0.15])
    np.testing.assert_allclose(table["combat_difference"], [0.03, 0.03], atol=1e-12)
    assert "combat_g" not in meta_vs_mega(meta, mega, tmp_path / "u.tsv")


def test_methods_cite_combat_only_when_it_ran():
    from msnet.config import validate_config
    from msnet.report import methods_text

    plain = methods_text(validate_config({}), versions={})
    assert "ComBat" not in plain and "kxj037" not in plain
    text = methods_text(validate_config({"group": {"harmonize": "combat"}}), versions={})
    para = next(p for p in text.split("\n\n") if p.startswith("Harmonisation."))
    assert "batch" in para and "age, sex" in para and "EDSS" in para
    assert "doi:10.1093/biostatistics/kxj037" in text
    assert "doi:10.1016/j.neuroimage.2017.11.024" in text


def test_report_inputs_name_the_combat_outputs():
    from msnet.report import report_inputs

    plain = report_inputs("results", ["S01"], None)
    assert not any(k.startswith("combat") for k in plain)
    inputs = report_inputs("results", ["S01"], None, harmonize="combat")
    assert inputs["combat_table"].endswith(
        "group/pooled/pooled_harmonize-combat_desc-MSvsHC_networks.tsv")
    assert inputs["combat_maps"]["DMN"]["t"].endswith(
        "pooled_harmonize-combat_network-DMN_space-MNI152NLin2009cAsym_stat-t_map.nii.gz")
