"""Tests of msnet.stats: every statistic against an independent reference."""

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from scipy import stats as sps

from msnet import stats as st

AFFINE = np.array([[4.0, 0, 0, 20.0], [0, 4.0, 0, -70.0], [0, 0, 4.0, 18.0], [0, 0, 0, 1]])
"""4 mm grid whose voxel (7, 3, 4) is MNI (48, -58, 34), the right angular gyrus."""


def _smooth_noise(rng, n, shape, sigma=1.0):
    """n smooth unit-variance Gaussian fields of a 3-D shape, flattened (n, V)."""
    data = ndimage.gaussian_filter(rng.normal(size=(n, *shape)), (0, sigma, sigma, sigma))
    data /= data.std(axis=0, keepdims=True)
    return data.reshape(n, -1)


def _design(rng, n=40):
    group = np.r_[np.ones(n // 2), np.zeros(n - n // 2)]
    age = rng.normal(45, 10, n)
    sex = rng.integers(0, 2, n).astype(float)
    return np.column_stack([np.ones(n), group, age - age.mean(), sex - sex.mean()])


# --------------------------------------------------------------------------- OLS / effect sizes


def test_ols_matches_statsmodels():
    import statsmodels.api as sm

    rng = np.random.default_rng(1)
    X = _design(rng)
    Y = rng.normal(size=(40, 6)) + 0.8 * X[:, [1]]
    res = st.ols(Y, X, [0, 1, 0, 0])
    ref = sm.OLS(Y[:, 3], X).fit()
    lo, hi = st.confidence_interval(res.effect[3], res.se[3], 0.95, res.df)
    np.testing.assert_allclose(res.beta[:, 3], ref.params, rtol=1e-10)
    np.testing.assert_allclose(res.t[3], ref.tvalues[1], rtol=1e-10)
    np.testing.assert_allclose(res.p[3], ref.pvalues[1], rtol=1e-8)
    np.testing.assert_allclose([lo, hi], ref.conf_int(0.05)[1], rtol=1e-10)
    assert res.df == ref.df_resid


def test_ols_matches_nilearn_second_level_model():
    from nilearn.glm.second_level import SecondLevelModel

    rng = np.random.default_rng(2)
    X = _design(rng, 16)
    shape = (4, 5, 3)
    Y = rng.normal(size=(16, np.prod(shape))) + X[:, [1]] * rng.normal(size=np.prod(shape))
    imgs = [nib.Nifti1Image(y.reshape(shape).astype(np.float32), AFFINE) for y in Y]
    mask = nib.Nifti1Image(np.ones(shape, np.uint8), AFFINE)
    dm = pd.DataFrame(X[:, [1, 2, 3, 0]], columns=["group", "age", "sex", "intercept"])
    model = SecondLevelModel(mask_img=mask).fit(imgs, design_matrix=dm)
    t_ref = model.compute_contrast("group", output_type="stat").get_fdata().ravel()
    res = st.ols(Y.astype(np.float32), X, [0, 1, 0, 0])
    np.testing.assert_allclose(res.t, t_ref, rtol=1e-4, atol=1e-5)


def test_hedges_g_equals_hand_formula_from_means_and_sds():
    rng = np.random.default_rng(3)
    n1, n2, m1, m2, s1, s2 = 20, 15, 1.2, 0.7, 1.0, 1.3
    a = rng.normal(size=n1)
    b = rng.normal(size=n2)
    a = m1 + s1 * (a - a.mean()) / a.std(ddof=1)
    b = m2 + s2 * (b - b.mean()) / b.std(ddof=1)
    # hand formula: pooled SD, Cohen's d, small-sample correction J, Borenstein var(g)
    sp = np.sqrt(((n1 - 1) * s1**2 + (n2 - 1) * s2**2) / (n1 + n2 - 2))
    d_hand = (m1 - m2) / sp
    j = 1 - 3 / (4 * (n1 + n2 - 2) - 1)
    var_hand = j**2 * ((n1 + n2) / (n1 * n2) + d_hand**2 / (2 * (n1 + n2)))
    # from the OLS t of a model without covariates
    y = np.r_[a, b]
    X = np.column_stack([np.ones(n1 + n2), np.r_[np.ones(n1), np.zeros(n2)]])
    t = st.ols(y, X, [0, 1]).t[0]
    g, var_g = st.hedges_g(st.d_from_t(t, n1, n2), n1, n2)
    np.testing.assert_allclose(g, j * d_hand, rtol=1e-12)
    np.testing.assert_allclose(var_g, var_hand, rtol=1e-12)
    assert var_g > 1 / n1 + 1 / n2 - 0.05  # two-group variance, not 1/n of a one-sample t


def test_fdr_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(4).uniform(size=50) ** 3
    p[[3, 7]] = np.nan
    q = st.fdr_bh(p)
    ok = np.isfinite(p)
    np.testing.assert_allclose(q[ok], multipletests(p[ok], method="fdr_bh")[1])
    assert np.isnan(q[~ok]).all()


def test_fit_pooled_matches_statsmodels_mixedlm():
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(5)
    n_study, n_per = 6, 20
    df = pd.DataFrame({"study_id": np.repeat([f"s{i}" for i in range(n_study)], n_per),
                       "group_ms": np.tile(np.r_[np.ones(12), np.zeros(8)], n_study),
                       "age": rng.normal(40, 10, n_study * n_per)})
    df["y"] = (0.4 * df["group_ms"] + 0.02 * df["age"] + rng.normal(size=len(df))
               + np.repeat(rng.normal(0, 0.7, n_study), n_per))
    design = st.build_design(df, ["group_ms"], ["age"], study_col="study_id")
    fit = st.fit_pooled(df["y"].to_numpy(), design, "group_ms")
    df["age_c"] = df["age"] - df.groupby("study_id")["age"].transform("mean")
    ref = smf.mixedlm("y ~ group_ms + age_c", df, groups=df["study_id"]).fit(reml=True)
    assert fit["method"] == "MixedLM"
    np.testing.assert_allclose(fit["beta"], ref.params["group_ms"], rtol=1e-4)
    np.testing.assert_allclose(fit["se"], ref.bse["group_ms"], rtol=1e-3)
    np.testing.assert_allclose(fit["p"], ref.pvalues["group_ms"], rtol=1e-3)
    np.testing.assert_allclose([fit["ci_low"], fit["ci_high"]],
                               ref.conf_int().loc["group_ms"], rtol=1e-3)
    np.testing.assert_allclose(fit["tau2"], ref.cov_re.iloc[0, 0], rtol=1e-3)


def test_build_design_covariate_policy():
    df = pd.DataFrame({
        "study_id": ["a"] * 4 + ["b"] * 4,
        "g": [1, 1, 0, 0] * 2,
        "age": [30, 40, 50, 60, 1, 2, 3, np.nan],  # one missing value in study b
        "fd": [0.1, 0.2, 0.3, 0.4, 0.2, 0.2, 0.2, 0.2],  # constant in study b
        "site_only": [np.nan] * 8,  # all missing
        "sex": ["M", "F", "M", "F", "F", "F", "M", "M"],
        "dup": [1, 1, 0, 0, 1, 1, 0, 0],  # = g: collinear
    }, dtype=object).astype({"g": float, "age": float, "fd": float, "site_only": float,
                             "dup": float})
    d = st.build_design(df, ["g"], ["age", "fd", "site_only", "sex", "dup", "absent"],
                        study_col="study_id")
    assert d.excluded == {7: "missing age"}
    assert list(d.index) == [0, 1, 2, 3, 4, 5, 6]
    assert d.notes["site_only"] == "all values missing"
    assert d.notes["absent"] == "not in the data"
    assert d.notes["dup"] == "collinear with the other terms"
    assert d.notes["fd"].startswith("not adjusted in study b")
    assert d.covariates_used == ["age", "fd", "sex"]
    assert d.columns == ["intercept", "g", "age", "fd", "sex[M]"]
    np.testing.assert_allclose(d.X[:, d.col("age")], [-15, -5, 5, 15, -1, 0, 1])
    np.testing.assert_allclose(d.X[4:, d.col("fd")], 0.0)
    one = st.build_design(df[df.study_id == "b"], ["g"], ["fd"])
    assert one.notes == {"fd": "constant"} and one.columns == ["intercept", "g"]
    X, cols = d.with_study_dummies()
    assert cols[:2] == ["study[a]", "study[b]"] and X.shape == (7, 6)


# --------------------------------------------------------------------------- permutations


def test_permutations_match_brute_force_freedman_lane():
    """Null maxima (t, cluster size, TFCE) equal an explicit Freedman-Lane refit per
    permutation, with nilearn's cluster and TFCE functions applied to the refitted maps."""
    from nilearn.mass_univariate._utils import calculate_cluster_measures, calculate_tfce

    rng = np.random.default_rng(6)
    shape, n, n_perm = (4, 3, 3), 30, 20
    X = _design(rng, n)
    Y = _smooth_noise(rng, n, shape, 0.7)
    mask = np.ones(shape, bool)
    res = st.permuted_glm(Y, X[:, 1], X[:, [0, 2, 3]], n_perm=n_perm, seed=11, mask=mask,
                          cluster_forming_p=0.2, tfce=True)
    perms = st.draw_permutations(np.random.default_rng(11), n_perm, n)
    Z = X[:, [0, 2, 3]]
    H = Z @ np.linalg.pinv(Z)
    E = Y - H @ Y
    t_maps = np.array([st.ols(H @ Y + E[np.argsort(p)], X, [0, 1, 0, 0]).t for p in perms])
    np.testing.assert_allclose(res.h0_max_t, np.abs(t_maps).max(axis=1), rtol=2e-5)
    np.testing.assert_allclose(res.t, st.ols(Y, X, [0, 1, 0, 0]).t, rtol=1e-10)
    struct = ndimage.generate_binary_structure(3, 1)
    vols = t_maps.reshape(n_perm, *shape).transpose(1, 2, 3, 0)
    sizes, _ = calculate_cluster_measures(vols, res.clusters.threshold_t, struct, True)
    np.testing.assert_array_equal(res.clusters.h0_max_size, sizes)
    tfce_ref = np.abs(calculate_tfce(vols, struct, two_sided_test=True)).max(axis=(0, 1, 2))
    np.testing.assert_allclose(res.h0_max_tfce, tfce_ref, rtol=1e-3)


def test_within_block_permutations_match_brute_force():
    """Study blocks with study indicators as confounds: the fast path (indicator part of the
    basis dropped) equals an explicit refit on within-study permutations."""
    rng = np.random.default_rng(12)
    n, n_perm = 36, 15
    study = np.repeat([0, 1, 2], 12)
    D = (study[:, None] == np.arange(3)).astype(float)
    X = np.column_stack([rng.integers(0, 2, n), D, rng.normal(size=(n, 2))])
    Y = rng.normal(size=(n, 20)) + study[:, None]
    res = st.permuted_glm(Y, X[:, 0], X[:, 1:], n_perm=n_perm, seed=4, blocks=study)
    perms = st.draw_permutations(np.random.default_rng(4), n_perm, n, study)
    Z = X[:, 1:]
    H = Z @ np.linalg.pinv(Z)
    E = Y - H @ Y
    brute = [np.abs(st.ols(H @ Y + E[np.argsort(p)], X, np.eye(6)[0]).t).max() for p in perms]
    np.testing.assert_allclose(res.h0_max_t, brute, rtol=2e-5)
    Qc, codes = st._null_design(Z, st._orthonormal_basis(Z), study)
    assert Qc.shape[1] == 2 and codes is None


def test_free_permutations_across_studies_match_brute_force():
    """Study indicators among the confounds, permutations across studies: the indicator part
    of the projection (a scatter-add over the subjects each permutation puts in each study)
    and the dense covariate part equal an explicit Freedman-Lane refit; 1 or 2 threads give
    the same null, and the cluster and TFCE maxima equal those of the refitted maps."""
    rng = np.random.default_rng(13)
    shape, n_study, n_perm = (4, 3, 3), 8, 12
    study = np.repeat(np.arange(n_study), 7)
    n = study.size
    D = (study[:, None] == np.arange(n_study)).astype(float)
    X = np.column_stack([rng.integers(0, 2, n), D, rng.normal(size=n),
                         rng.integers(0, 2, n)])  # tested, 8 study dummies, age, sex (0/1)
    Y = _smooth_noise(rng, n, shape, 0.7) + study[:, None] * 0.3
    Z = X[:, 1:]
    Qc, codes = st._null_design(Z, st._orthonormal_basis(Z), None)
    assert Qc.shape[1] == 2 and np.array_equal(codes, study)  # age and sex stay dense
    mask = np.ones(shape, bool)
    kw = dict(n_perm=n_perm, seed=5, mask=mask, cluster_forming_p=0.1, tfce=True)
    res = st.permuted_glm(Y, X[:, 0], Z, **kw)
    res2 = st.permuted_glm(Y, X[:, 0], Z, n_jobs=2, **kw)
    perms = st.draw_permutations(np.random.default_rng(5), n_perm, n)
    H = Z @ np.linalg.pinv(Z)
    E = Y - H @ Y
    t_maps = np.array([st.ols(H @ Y + E[np.argsort(p)], X, np.eye(X.shape[1])[0]).t
                       for p in perms])
    np.testing.assert_allclose(res.h0_max_t, np.abs(t_maps).max(axis=1), rtol=2e-5)
    np.testing.assert_allclose(res2.h0_max_t, res.h0_max_t, rtol=1e-6)
    np.testing.assert_array_equal(res2.clusters.h0_max_size, res.clusters.h0_max_size)
    grid = st.VoxelGrid(mask)
    ref = [np.abs(grid.tfce(t, True)).max() for t in t_maps]
    np.testing.assert_allclose(res.h0_max_tfce, ref, rtol=1e-4)


def test_null_maxima_equal_step_by_step_tfce_and_nilearn_clusters():
    """The union-find maxima equal the maximum of the full step-by-step TFCE map and
    nilearn's cluster size and mass, for both connectivities, one- and two-sided."""
    from nilearn.mass_univariate._utils import calculate_cluster_measures

    rng = np.random.default_rng(14)
    shape = (9, 8, 7)
    mask = np.ones(shape, bool)
    mask[:2, :2] = False
    maps = [ndimage.gaussian_filter(rng.normal(size=shape), 1.2)[mask] for _ in range(6)]
    T = np.array([m / m.std() * 1.5 for m in maps])
    for connectivity in (1, 3):
        grid = st.VoxelGrid(mask, connectivity)
        for two_sided in (True, False):
            size, mass, top = grid.null_maxima(T, two_sided, 1.0, tfce=True)
            full = [np.abs(grid.tfce(t, two_sided)).max() for t in T]
            np.testing.assert_allclose(top, full, rtol=1e-12)
            vols = np.zeros((*shape, len(T)))
            vols[mask] = T.T
            ref_size, ref_mass = calculate_cluster_measures(
                vols, 1.0, grid.structure, two_sided)
            np.testing.assert_array_equal(size, ref_size)
            np.testing.assert_allclose(mass, ref_mass, rtol=1e-12)
            assert [grid.max_cluster_size(t, 1.0, two_sided) for t in T] == list(size)


def test_permutations_agree_with_nilearn_permuted_ols():
    from nilearn.mass_univariate import permuted_ols

    rng = np.random.default_rng(7)
    n, n_perm = 40, 2000
    X = _design(rng, n)
    Y = rng.normal(size=(n, 150))
    Y[:, :30] += np.linspace(0.2, 1.0, 30) * X[:, [1]]
    res = st.permuted_glm(Y, X[:, 1], X[:, [0, 2, 3]], n_perm=n_perm, seed=1)
    ref = permuted_ols(X[:, [1]], Y, confounding_vars=X[:, [2, 3]], n_perm=n_perm,
                       random_state=1)
    np.testing.assert_allclose(res.t, ref["t"][0], rtol=1e-8)
    # same null distribution within Monte-Carlo error (different random permutations)
    assert sps.ks_2samp(res.h0_max_t, ref["h0_max_t"][0]).pvalue > 0.01
    p_ref = 10 ** -ref["logp_max_t"][0]
    tol = 4 * np.sqrt(2 * p_ref * (1 - p_ref) / n_perm) + 2 / n_perm
    assert np.all(np.abs(res.p_fwe - p_ref) <= tol)
    assert 0.0 < p_ref.min() < 0.05 < p_ref.max()  # the comparison spans both regimes


def test_tfce_matches_nilearn():
    from nilearn.mass_univariate._utils import calculate_tfce

    rng = np.random.default_rng(8)
    shape = (7, 6, 5)
    vol = ndimage.gaussian_filter(rng.normal(size=shape), 1.0) * 6
    mask = np.ones(shape, bool)
    mask[0, 0, :] = False
    vol[~mask] = 0
    ref = calculate_tfce(vol[..., None], ndimage.generate_binary_structure(3, 1))[..., 0]
    mine = st.VoxelGrid(mask).tfce(vol[mask], two_sided=True)
    np.testing.assert_allclose(mine, ref[mask], rtol=1e-10)
    assert (mine > 0).any() and (mine < 0).any()


def test_observed_t_tfce_and_cluster_mass_equal_nilearn_permuted_ols():
    """The observed maps of permuted_glm are nilearn permuted_ols's (t, TFCE, cluster mass
    and size at the same cluster-forming p), through nilearn's public function."""
    from nilearn.maskers import NiftiMasker
    from nilearn.mass_univariate import permuted_ols

    rng = np.random.default_rng(15)
    shape, n = (8, 7, 6), 36
    mask = np.ones(shape, bool)
    mask[0] = False
    X = _design(rng, n)
    Y = _smooth_noise(rng, n, shape, 1.0)[:, mask.ravel()]
    Y[:, :40] += 0.9 * X[:, [1]]
    masker = NiftiMasker(nib.Nifti1Image(mask.astype(np.uint8), AFFINE)).fit()
    res = st.permuted_glm(Y, X[:, 1], X[:, [0, 2, 3]], n_perm=5, seed=0, mask=mask,
                          cluster_forming_p=0.05, tfce=True)
    ref = permuted_ols(X[:, [1]], Y, confounding_vars=X[:, [2, 3]], n_perm=5, random_state=0,
                       masker=masker, threshold=0.05, tfce=True, verbose=0)
    np.testing.assert_allclose(res.t, ref["t"][0], rtol=1e-10)
    np.testing.assert_allclose(res.tfce, ref["tfce"][0], rtol=1e-10)
    c = res.clusters
    assert c.sizes.size > 1
    np.testing.assert_array_equal(np.r_[0, c.sizes][c.labels], ref["size"][0])
    np.testing.assert_allclose(np.r_[0.0, c.masses][c.labels], ref["mass"][0], rtol=1e-10)


def test_block_permutations_stay_within_blocks():
    blocks = np.array(list("aabbbcacb"))
    perms = st.draw_permutations(np.random.default_rng(0), 200, len(blocks), blocks)
    assert (blocks[perms] == blocks[None, :]).all()
    assert all(sorted(p) == list(range(len(blocks))) for p in perms)
    assert len({tuple(p) for p in perms}) > 50


def test_fwe_false_positive_rate_is_calibrated():
    rng = np.random.default_rng(9)
    shape, n, n_sim = (4, 4, 4), 20, 200
    mask = np.ones(shape, bool)
    hits_vox = hits_clu = 0
    for k in range(n_sim):
        X = _design(rng, n)
        Y = _smooth_noise(rng, n, shape, 0.8) + 0.5 * X[:, [2]] / 10
        res = st.permuted_glm(Y, X[:, 1], X[:, [0, 2]], n_perm=99, seed=k, mask=mask,
                              cluster_forming_p=0.05)
        hits_vox += res.p_fwe.min() <= 0.05
        hits_clu += res.clusters.p_fwe.size > 0 and res.clusters.p_fwe.min() <= 0.05
    assert 0.01 <= hits_vox / n_sim <= 0.10
    assert 0.01 <= hits_clu / n_sim <= 0.10


def test_planted_blobs_found_with_sign_peak_and_label():
    rng = np.random.default_rng(10)
    shape, n = (10, 8, 8), 40
    X = _design(rng, n)
    ijk = np.indices(shape).reshape(3, -1).T
    pos, neg = np.array([7, 3, 4]), np.array([2, 5, 3])
    blob = lambda c: np.exp(-np.sum((ijk - c) ** 2, axis=1) / (2 * 1.0**2))  # noqa: E731
    Y = _smooth_noise(rng, n, shape, 0.7) + X[:, [1]] * (2.5 * blob(pos) - 2.5 * blob(neg))
    mask_img = nib.Nifti1Image(np.ones(shape, np.uint8), AFFINE)
    res = st.permuted_glm(Y, X[:, 1], X[:, [0, 2, 3]], n_perm=200, seed=0,
                          mask=np.ones(shape, bool), cluster_forming_p=0.001, tfce=True)
    table = st.cluster_table(res, mask_img, effect=res.effect, effect_name="beta",
                             directions=("MS>HC", "MS<HC"))
    assert list(table.columns) == st.cluster_columns("beta")
    sig = table[table.significant]
    assert set(sig.direction) == {"MS>HC", "MS<HC"}
    for direction, center in (("MS>HC", pos), ("MS<HC", neg)):
        top = sig[sig.direction == direction].iloc[0]
        peak_ijk = np.linalg.solve(AFFINE, [top.peak_x, top.peak_y, top.peak_z, 1])[:3]
        assert np.abs(peak_ijk - center).max() <= 1
        assert np.sign(top.peak_t) == (1 if direction == "MS>HC" else -1)
        assert top.cluster_p_fwe < 0.05 and top.peak_p_fwe < 0.05
        assert res.clusters.p_fwe_mass[top.cluster_id - 1] < 0.05
        assert top.size_mm3 == top.size_vox * 64
    assert sig[sig.direction == "MS>HC"].iloc[0].label == "Right Angular Gyrus"
    assert table.label.map(lambda s: isinstance(s, str) and len(s) > 0).all()
    maps = st.inference_maps(res)
    assert set(maps) == set(st.inference_map_names(
        {"n_permutations": 200, "cluster_forming_p": 0.001, "tfce": True}))
    flat = lambda c: np.ravel_multi_index(c, shape)  # noqa: E731
    for name in ("logpcfwe", "logptfcefwe", "logpfwe"):
        assert maps[name][flat(pos)] > -np.log10(0.05)
        assert maps[name][flat(neg)] < np.log10(0.05)
