"""Tests for msnet.connectivity on small synthetic data (8 mm / 6 mm MNI grids, toy grids)."""

from __future__ import annotations

import json
import re
import sys
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msnet import ANALYSIS_NETWORKS, atlas
from msnet import connectivity as conn
from msnet.errors import MsnetInputError

N_VOLUMES = 150


@pytest.fixture(scope="module")
def mask8():
    from nilearn.datasets import load_mni152_brain_mask

    return load_mni152_brain_mask(resolution=8)


@pytest.fixture(scope="module")
def templates8(mask8):
    return atlas.network_templates(mask8)


@pytest.fixture(scope="module")
def signals():
    """Independent network time courses, one column per template network."""
    return np.random.default_rng(1).standard_normal((N_VOLUMES, 12))


def planted(signals, weights, seed, noise=0.5, baseline=100.0):
    """BOLD = sum_k s_k(t) x weights_k + white noise + a baseline, float32 (volumes, voxels)."""
    data = signals @ weights
    data += noise * np.random.default_rng(seed).standard_normal(data.shape)
    return (data + baseline).astype(np.float32)


def near(coords, center, radius_mm):
    return np.linalg.norm(coords - np.asarray(center), axis=1) <= radius_mm


# --------------------------------------------------------------------------- dual regression


def test_stage2_maps_match_generating_templates(templates8, signals):
    names, tmpl = templates8
    assert names[:4] == list(ANALYSIS_NETWORKS)
    _, maps = conn.dual_regression(planted(signals, tmpl, seed=2), tmpl)
    assert maps.shape == (4, tmpl.shape[1]) and maps.dtype == np.float32
    for k, net in enumerate(ANALYSIS_NETWORKS):
        r = conn.spatial_correlation(maps[k], tmpl[k])
        assert r > 0.5, (net, r)
        # and each map resembles its own template more than any other analysis template
        others = [conn.spatial_correlation(maps[k], tmpl[j]) for j in range(4) if j != k]
        assert r > max(others), net


def test_planted_amplitude_difference_has_right_sign_and_place(mask8, templates8, signals):
    _, tmpl = templates8
    coords = atlas.mask_coordinates(mask8)
    up = near(coords, (0, -52, 26), 12) & (tmpl[0] > 0.3)    # PCC: stronger in subject B
    down = near(coords, (-4, 42, 12), 12) & (tmpl[0] > 0.3)  # mPFC: weaker in subject B
    elsewhere = (tmpl[0] > 0.3) & ~near(coords, (0, -52, 26), 24) & ~near(coords, (-4, 42, 12), 24)
    assert up.sum() >= 5 and down.sum() >= 5 and elsewhere.sum() >= 20
    weights_b = tmpl.copy()
    weights_b[0] *= 1 + 0.5 * up - 0.5 * down
    _, map_a = conn.dual_regression(planted(signals, tmpl, seed=3), tmpl)
    _, map_b = conn.dual_regression(planted(signals, weights_b, seed=4), tmpl)
    diff = map_b[0] - map_a[0]
    assert diff[up].mean() > 0.05
    assert diff[down].mean() < -0.05
    assert abs(diff[elsewhere].mean()) < 0.02
    # the change is specific to the DMN map: other maps differ there by noise only
    others = map_b[1:] - map_a[1:]
    assert np.abs(others[:, up].mean(axis=1)).max() < diff[up].mean() / 2
    assert np.abs(others[:, down].mean(axis=1)).max() < -diff[down].mean() / 2


def test_nuisance_network_does_not_leak_into_analysis_maps(templates8, signals):
    names, tmpl = templates8
    fp = names.index("FrontoParietal")
    weights = tmpl.copy()
    weights[fp] *= 3.0
    data = planted(signals, weights, seed=5)
    fp_only = (tmpl[fp] > 0.5) & (tmpl[:4].max(axis=0) < 0.05)
    assert fp_only.sum() >= 20
    _, maps = conn.dual_regression(data, tmpl)
    assert np.abs(maps[:, fp_only].mean(axis=1)).max() < 0.03
    # the check is sensitive: leaving the nuisance maps out of the model makes FP leak
    _, leaky = conn.dual_regression(data, tmpl[:4])
    assert np.abs(leaky[:, fp_only].mean(axis=1)).max() > 0.1


@pytest.mark.parametrize("dtype,baseline", [(np.float64, 0.0), (np.float32, 1000.0)])
def test_dual_regression_equals_independent_ols(dtype, baseline):
    import statsmodels.api as sm

    rng = np.random.default_rng(7)
    n_t, n_v, n_k = 40, 300, 5
    templates = rng.random((n_k, n_v))
    data = rng.standard_normal((n_t, n_k)) @ templates + rng.standard_normal((n_t, n_v))
    data = (data + baseline + rng.standard_normal(n_v)).astype(dtype)
    tc, maps = conn.dual_regression(data, templates, n_analysis=3)
    # stage 1: per-volume OLS with an intercept (== spatial demeaning), float64
    design = np.column_stack([np.ones(n_v), templates.T])
    ref_tc = np.linalg.lstsq(design, data.T.astype(np.float64), rcond=None)[0][1:].T
    np.testing.assert_allclose(tc, ref_tc - ref_tc.mean(axis=0), rtol=1e-4, atol=1e-4)
    # stage 2: statsmodels OLS of the z-scored voxel series on z-scored time courses
    z = (ref_tc - ref_tc.mean(0)) / ref_tc.std(0)
    for v in (0, 17, 299):
        y = data[:, v].astype(np.float64)
        fit = sm.OLS((y - y.mean()) / y.std(), sm.add_constant(z)).fit()
        np.testing.assert_allclose(maps[:, v], fit.params[1:4], rtol=1e-4, atol=1e-5)


def test_dual_regression_constant_voxel_and_bad_input():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((30, 50)).astype(np.float32)
    data[:, 3] = 7.25
    _, maps = conn.dual_regression(data, rng.random((4, 50)), n_analysis=2)
    assert np.all(maps[:, 3] == 0) and np.all(np.isfinite(maps))
    assert conn.flat_voxels(data).tolist() == [i == 3 for i in range(50)]
    with pytest.raises(MsnetInputError, match="too few"):
        conn.dual_regression(data[:5], rng.random((4, 50)))
    with pytest.raises(MsnetInputError, match="same voxels"):
        conn.dual_regression(data, rng.random((4, 49)))


def test_design_vif_equals_statsmodels():
    from statsmodels.stats.outliers_influence import variance_inflation_factor
    import statsmodels.api as sm

    rng = np.random.default_rng(11)
    tc = rng.standard_normal((80, 6))
    tc[:, 1] += 0.8 * tc[:, 0]
    tc[:, 5] = 0.0  # absent network: constant time course
    exog = sm.add_constant(tc[:, :5])
    expected = [variance_inflation_factor(exog, k + 1) for k in range(4)]
    np.testing.assert_allclose(conn.design_vif(tc), expected, rtol=1e-8)
    assert np.isinf(conn.design_vif(tc, n_analysis=6)[5])


# --------------------------------------------------------------------------- ROIs and matrices


def test_roi_timeseries_equals_nilearn_spheres_masker():
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.maskers import NiftiSpheresMasker
    from nilearn.maskers.nifti_spheres_masker import apply_mask_and_get_affinity

    mask = load_mni152_brain_mask(resolution=6)
    in_mask = np.asarray(mask.dataobj).astype(bool)
    data = np.random.default_rng(3).standard_normal((12, int(in_mask.sum()))).astype(np.float32)
    series, info = conn.roi_timeseries(data, mask, radius_mm=5.0)
    assert list(series.columns) == list(atlas.seitzman_rois()["roi"])
    # at 6 mm no sphere is empty, and some hold only the voxel containing the seed
    assert not info["fallback"].any() and (info["n_voxels"] == 1).any()
    vol = np.zeros(in_mask.shape + (len(data),), dtype=np.float32)
    vol[in_mask] = data.T
    img = nib.Nifti1Image(vol, mask.affine)
    seeds = info[["x", "y", "z"]].to_numpy().tolist()
    _, affinity = apply_mask_and_get_affinity(seeds, img, 5.0, True, mask_img=mask)
    np.testing.assert_array_equal(np.asarray(affinity.sum(axis=1)).ravel(), info["n_voxels"])
    masker = NiftiSpheresMasker(seeds, radius=5.0, mask_img=mask, allow_overlap=True)
    np.testing.assert_allclose(series.to_numpy(), masker.fit_transform(img), rtol=1e-5, atol=1e-6)


def test_fallback_spheres_are_those_nilearn_finds_empty(mask8):
    from nilearn.maskers.nifti_spheres_masker import apply_mask_and_get_affinity

    in_mask = np.asarray(mask8.dataobj).astype(bool)
    _, info = conn.roi_timeseries(np.zeros((3, int(in_mask.sum())), np.float32), mask8)
    assert info["fallback"].any() and not info["missing"].any()
    img = nib.Nifti1Image(np.zeros(in_mask.shape + (3,), np.float32), mask8.affine)
    seeds = info[["x", "y", "z"]].to_numpy().tolist()
    with pytest.raises(ValueError, match="empty") as err:
        apply_mask_and_get_affinity(seeds, img, 5.0, True, mask_img=mask8)
    empty = {int(i) for i in re.findall(r"\d+", str(err.value).split("empty")[-1])}
    five = info["radius"].to_numpy() == 5.0  # nilearn takes one radius; compare those ROIs
    assert empty & set(np.flatnonzero(five)) == set(np.flatnonzero(info["fallback"] & five))
    assert (info.loc[info["fallback"], "fallback_distance_mm"] > 0).all()


def test_empty_sphere_falls_back_to_nearest_voxel_or_is_missing():
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    mask = np.zeros((6, 6, 6), dtype=np.int8)
    mask[0, 0, 0] = mask[0, 0, 1] = 1  # voxels at (0,0,0) and (0,0,4) mm
    mask_img = nib.Nifti1Image(mask, affine)
    data = np.array([[1.0, 3.0], [2.0, 5.0], [0.0, 1.0]])
    rois = pd.DataFrame({"roi": ["A", "B", "C"], "x": [0.0, 0.0, 16.0], "y": [0.0, 0.0, 16.0],
                         "z": [2.0, 12.0, 16.0], "radius": 2.0})
    series, info = conn.roi_timeseries(data, mask_img, rois, max_fallback_mm=9.0)
    np.testing.assert_allclose(series["A"], data.mean(axis=1))  # both voxels at 2 mm
    np.testing.assert_allclose(series["B"], data[:, 1])         # nearest voxel, 8 mm away
    assert series["C"].isna().all()                              # 27.7 mm > 9 mm: missing
    assert info["n_voxels"].tolist() == [2, 1, 0]
    assert info["fallback"].tolist() == [False, True, False]
    assert info["missing"].tolist() == [False, False, True]
    assert info["fallback_distance_mm"].iloc[1] == pytest.approx(8.0)


def test_relmat_equals_nilearn_connectivity_measure():
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import EmpiricalCovariance

    rng = np.random.default_rng(4)
    x = rng.standard_normal((60, 7)) @ rng.standard_normal((7, 7))
    series = pd.DataFrame(x, columns=[f"ROI{i:03d}" for i in range(1, 8)])
    z = conn.relmat(series)
    measure = ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance(),
                                  standardize="zscore_sample")
    r = measure.fit_transform([x])[0]
    off = ~np.eye(7, dtype=bool)
    np.testing.assert_allclose(z.to_numpy()[off], np.arctanh(r[off]), rtol=1e-10)
    assert np.isnan(np.diag(z.to_numpy())).all()
    assert z.index.name == "roi" and list(z.columns) == list(series.columns)


def test_relmat_missing_constant_and_duplicate_rois_are_nan():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 5))
    x[:, 1] = np.nan       # missing ROI
    x[:, 2] = 3.0          # constant ROI
    x[:, 4] = x[:, 3]      # two ROIs on the same voxel
    z = conn.relmat(pd.DataFrame(x, columns=list("abcde"))).to_numpy()
    assert np.isnan(z[1]).all() and np.isnan(z[:, 2]).all()
    assert np.isnan(z[3, 4]) and np.isfinite(z[0, 3]) and np.isfinite(z[0, 4])


def test_network_summary_matches_hand_computation():
    rois = pd.DataFrame({"roi": [f"R{i}" for i in range(6)],
                         "network": ["SMN", "DMN", "DMN", "SMN", "unassigned", "DMN"]})
    z = np.array([  # diagonal 9 (not NaN) to check it is excluded explicitly
        [9.0, 0.1, 0.2, 0.9, 5.0, 0.3],
        [0.1, 9.0, 0.5, 0.4, 5.0, 0.7],
        [0.2, 0.5, 9.0, 0.6, 5.0, np.nan],
        [0.9, 0.4, 0.6, 9.0, 5.0, 0.8],
        [5.0, 5.0, 5.0, 5.0, 9.0, 5.0],
        [0.3, 0.7, np.nan, 0.8, 5.0, 9.0],
    ])
    # shuffled DataFrame: the function must align by ROI name
    frame = pd.DataFrame(z, index=rois["roi"], columns=rois["roi"]).iloc[::-1, ::-1]
    table = conn.network_summary(frame, rois)
    assert list(table.columns) == ["network_a", "network_b", "fc_z", "n_edges"]
    assert table[["network_a", "network_b"]].values.tolist() == [
        ["DMN", "DMN"], ["DMN", "SMN"], ["SMN", "SMN"]]
    # DMN = R1, R2, R5: edges (1,2)=0.5, (1,5)=0.7, (2,5)=NaN
    # DMN-SMN: R1-R0 .1, R1-R3 .4, R2-R0 .2, R2-R3 .6, R5-R0 .3, R5-R3 .8
    # SMN = R0, R3: edge 0.9
    np.testing.assert_allclose(table["fc_z"], [0.6, 2.4 / 6, 0.9])
    assert table["n_edges"].tolist() == [2, 6, 1]


def test_within_network_fc_exceeds_between_on_planted_data(mask8, templates8, signals):
    _, tmpl = templates8
    data = planted(signals, tmpl, seed=6)
    series, info = conn.roi_timeseries(data, mask8)
    assert not info["missing"].any()
    table = conn.network_summary(conn.relmat(series), atlas.seitzman_rois())
    nets = set(table["network_a"]) | set(table["network_b"])
    assert "unassigned" not in nets and set(atlas.network_names()) == nets
    for net in ANALYSIS_NETWORKS:
        within = table.query("network_a == @net and network_b == @net")["fc_z"].item()
        between = table.query("(network_a == @net) != (network_b == @net)")["fc_z"]
        assert len(between) == 11 and within > between.max(), net


def test_seed_maps_are_fisher_z_correlations(mask8, templates8, signals):
    _, tmpl = templates8
    data = planted(signals, tmpl, seed=8)
    maps, info = conn.seed_maps(data, mask8)
    assert list(maps) == list(atlas.CANONICAL_SEEDS)
    assert (info["n_voxels"] >= 1).all()
    assert conn.spatial_correlation(maps["DMN"], tmpl[0]) > 0.5
    # reference at a few voxels from the seed's mean series
    membership, _ = conn.sphere_membership(mask8, [atlas.CANONICAL_SEEDS["DMN"][1]], 6.0)
    seed_ts = data[:, membership.toarray()[0] > 0].mean(axis=1)
    for v in (0, 100, 2000):
        r = np.corrcoef(seed_ts, data[:, v])[0, 1]
        assert maps["DMN"][v] == pytest.approx(np.arctanh(r), abs=1e-4)


# --------------------------------------------------------------------------- subject stage


def fake_cleaned(mask_img, data, lesion=None, include=True):
    qc = {"include": include, "exclusion_reason": None if include else "mean FD 0.9 mm > 0.5",
          "mean_fd": 0.1, "lesion_overlap": {"DMN": 0.2}}
    return SimpleNamespace(data=data, mask_img=mask_img, tr=2.0,
                           sample_mask=None if data is None else np.arange(2, 2 + len(data)),
                           qc=qc, lesion_mask=lesion,
                           voxel_mean=None if data is None else np.full(data.shape[1], 1000.0))


def test_psc_maps_are_linear_in_amplitude_and_peak_at_the_planted_place():
    """Stage 2 in % signal change recovers 100 * amplitude / mean exactly (no saturation),
    unlike standardised coefficients, which flatten where the network signal is strong."""
    rng = np.random.default_rng(7)
    n_t, n_v = 400, 60
    templates = np.zeros((2, n_v))
    templates[0, :30] = np.linspace(0.2, 1.0, 30)
    templates[1, 30:] = 1.0
    signals = rng.standard_normal((n_t, 2))
    signals = (signals - signals.mean(0)) / signals.std(0)
    weights = templates.copy()
    weights[0, 25:30] += 0.5  # a local amplitude increase at the strongest voxels
    mean = np.full(n_v, 800.0)
    noise = 0.5 * rng.standard_normal((n_t, n_v))
    data = mean + signals @ weights * 8.0 + noise
    _, psc = conn.dual_regression(data, templates, n_analysis=1, voxel_mean=mean)
    expected = 100 * 8.0 * weights[0] / mean
    assert np.allclose(psc[0, :30], expected[:30], atol=0.02)
    _, std = conn.dual_regression(data, templates, n_analysis=1)
    gain_psc = psc[0, 27] / psc[0, 22]
    gain_std = std[0, 27] / std[0, 22]
    assert gain_psc > 1.4 and gain_std < 1.1  # the standardised map saturates


def out_paths(tmp_path, seeds=False):
    base = tmp_path / "sub-01"
    paths = {
        "qc": base / "sub-01_qc.json",
        "maps": {n: base / f"sub-01_network-{n}_stat-z_map.nii.gz" for n in ANALYSIS_NETWORKS},
        "timeseries": base / "sub-01_atlas-Seitzman300_timeseries.tsv",
        "relmat": base / "sub-01_atlas-Seitzman300_relmat.tsv",
        "networks": base / "sub-01_networks.tsv",
    }
    if seeds:
        paths["seed_maps"] = {n: base / f"sub-01_seed-{n}_stat-z_map.nii.gz"
                              for n in ANALYSIS_NETWORKS}
    return paths


def lesioned_mask(mask8):
    """8 mm brain mask minus a lesion around the PCC; returns (analysis mask img, lesion)."""
    brain = np.asarray(mask8.dataobj).astype(bool)
    coords = atlas.mask_coordinates(mask8)
    lesion = np.zeros_like(brain)
    lesion[brain] = near(coords, (0, -52, 26), 10)
    return nib.Nifti1Image((brain & ~lesion).astype(np.int8), mask8.affine), lesion


def test_subject_outputs_written_and_readable(tmp_path, mask8, signals):
    mask_img, lesion = lesioned_mask(mask8)
    _, tmpl = atlas.network_templates(mask_img)
    brain = np.asarray(mask8.dataobj).astype(bool)
    cleaned = fake_cleaned(mask_img, planted(signals, tmpl, seed=9), lesion=lesion[brain])
    result = conn.subject_connectivity(cleaned, {"seed_maps": True})
    paths = out_paths(tmp_path, seeds=True)
    conn.write_subject_outputs(result, paths)

    analysis = np.asarray(mask_img.dataobj).astype(bool)
    img = nib.load(paths["maps"]["DMN"])
    vol = np.asarray(img.dataobj)
    assert img.shape == mask8.shape and vol.dtype == np.float32
    np.testing.assert_allclose(img.affine, mask8.affine)
    assert np.all(vol[~analysis] == 0) and np.all(vol[lesion] == 0)
    assert conn.spatial_correlation(vol[analysis], tmpl[0]) > 0.5
    assert nib.load(paths["seed_maps"]["SN"]).shape == mask8.shape

    qc = json.loads(paths["qc"].read_text())
    assert qc["include"] is True and qc["mean_fd"] == 0.1
    assert set(qc["dr_template_r"]) == set(ANALYSIS_NETWORKS)
    assert min(qc["dr_template_r"].values()) > 0.5
    assert 1 <= max(qc["dr_vif"].values()) < 2
    assert qc["lesion_overlap"] == {"DMN": 0.2}  # denoising's QC passes through
    assert qc["connectivity"]["seed_maps"] is True and qc["dr_n_flat_voxels"] == 0

    series = pd.read_csv(paths["timeseries"], sep="\t")
    assert series.shape == (N_VOLUMES, 300) and series.columns[0] == "ROI001"
    rel = pd.read_csv(paths["relmat"], sep="\t", index_col="roi")
    assert rel.shape == (300, 300) and np.isnan(np.diag(rel.to_numpy())).all()
    np.testing.assert_allclose(rel.to_numpy(), result.relmat.to_numpy(), rtol=1e-6)
    nets = pd.read_csv(paths["networks"], sep="\t")
    assert list(nets.columns) == ["network_a", "network_b", "fc_z", "n_edges"]
    side = json.loads(conn.sidecar_path(paths["relmat"]).read_text())
    # the atlas is one file of the results folder, referenced, not repeated per subject
    assert side["Atlas"] == "bids::atlas/atlas-Seitzman300_dseg.tsv" and "ROI001" not in side
    assert len(side["ROIVoxelCounts"]) == 300 and side["Units"] == "Fisher z"
    assert set(json.loads(conn.sidecar_path(paths["networks"]).read_text())) == set(nets.columns)
    from msnet.derivatives import sidecar_path

    map_side = json.loads(sidecar_path(paths["maps"]["DMN"]).read_text())
    assert map_side["Network"] == "DMN" and map_side["Level"] == "one subject"
    assert map_side["Units"].startswith("% signal change")
    ts_side = json.loads(conn.sidecar_path(paths["timeseries"]).read_text())
    assert ts_side["RepetitionTime"] == 2.0 and ts_side["SampleMask"][0] == 2


def test_unprocessable_subject_gets_nan_outputs_not_a_crash(tmp_path, mask8):
    cleaned = fake_cleaned(mask8, None, include=False)
    cleaned.qc["exclusion_reason"] = "only 20 volumes survive censoring"
    result = conn.subject_connectivity(cleaned, {})
    paths = out_paths(tmp_path)
    conn.write_subject_outputs(result, paths)
    brain = np.asarray(mask8.dataobj).astype(bool)
    vol = np.asarray(nib.load(paths["maps"]["SMN"]).dataobj)
    assert np.isnan(vol[brain]).all() and np.all(vol[~brain] == 0)
    qc = json.loads(paths["qc"].read_text())
    assert qc["include"] is False and qc["exclusion_reason"] == "only 20 volumes survive censoring"
    assert pd.read_csv(paths["timeseries"], sep="\t").shape == (0, 300)
    assert pd.read_csv(paths["relmat"], sep="\t", index_col="roi").isna().all().all()
    nets = pd.read_csv(paths["networks"], sep="\t")
    assert nets["fc_z"].isna().all() and (nets["n_edges"] == 0).all()


def test_too_few_volumes_is_recorded_exclusion(mask8, templates8, signals):
    _, tmpl = templates8
    result = conn.subject_connectivity(fake_cleaned(mask8, planted(signals[:10], tmpl, 1)), {})
    assert result.qc["include"] is False and "dual regression" in result.qc["exclusion_reason"]


def test_collinear_networks_exclude_subject_but_outputs_are_kept(mask8, templates8, signals):
    _, tmpl = templates8
    collinear = signals.copy()
    collinear[:, 1] = collinear[:, 0] + 0.01 * signals[:, 1]  # SMN follows DMN
    result = conn.subject_connectivity(fake_cleaned(mask8, planted(collinear, tmpl, 12)), {})
    assert result.qc["include"] is False and result.qc["dr_vif"]["SMN"] > 100
    assert "VIF" in result.qc["exclusion_reason"] and "max_vif" in result.qc["exclusion_reason"]
    assert np.isfinite(result.maps["DMN"]).all()
    kept = conn.subject_connectivity(fake_cleaned(mask8, planted(collinear, tmpl, 12)),
                                     {"max_vif": None})
    assert kept.qc["include"] is True
    # an earlier exclusion reason is kept and the new one appended
    cleaned = fake_cleaned(mask8, planted(collinear, tmpl, 12), include=False)
    reason = conn.subject_connectivity(cleaned, {}).qc["exclusion_reason"]
    assert reason.startswith("mean FD 0.9 mm > 0.5; dual regression ill-conditioned")


def test_compute_subject_connectivity_wires_denoise(tmp_path, monkeypatch, mask8, templates8,
                                                    signals):
    _, tmpl = templates8
    calls = {}

    def find_subject_files(fmriprep_dir, participant_id, task, space, multi_run):
        calls["find"] = (fmriprep_dir, participant_id, task, space, multi_run)
        return "FILES"

    def clean_subject(files, options, qc_options, lesion_mask=None, progress=None, threads=None):
        calls["clean"] = (files, options, qc_options, lesion_mask)
        progress("cleaning")
        return fake_cleaned(mask8, planted(signals, tmpl, seed=10))

    monkeypatch.setitem(sys.modules, "msnet.denoise",
                        SimpleNamespace(clean_subject=clean_subject))
    monkeypatch.setitem(sys.modules, "msnet.io.fmriprep",
                        SimpleNamespace(find_subject_files=find_subject_files))
    paths = out_paths(tmp_path)
    qc = conn.compute_subject_connectivity(
        "/data/study", "sub-01", paths, {"smoothing_fwhm": 6}, {"max_mean_fd": 0.5}, {},
        study_id="S01")
    assert calls["find"] == ("/data/study", "sub-01", "rest", "MNI152NLin2009cAsym", "first")
    assert calls["clean"] == ("FILES", {"smoothing_fwhm": 6, "multi_run": "first"},
                              {"max_mean_fd": 0.5}, None)
    on_disk = json.loads(paths["qc"].read_text())
    assert on_disk == qc and on_disk["study_id"] == "S01" and on_disk["participant_id"] == "sub-01"
    assert all(p.exists() for p in paths["maps"].values())
    with pytest.raises(MsnetInputError, match="seed_maps"):
        conn.compute_subject_connectivity("/d", "sub-01", paths, connectivity_options={
            "seed_maps": True})
    with pytest.raises(MsnetInputError, match="multi_run"):
        conn.compute_subject_connectivity("/d", "sub-01", paths, {"multi_run": "concatenate"})


@pytest.mark.parametrize("options,match", [
    ({"seed_radius": 6}, "unknown key"),
    ({"seed_maps": "yes"}, "true or false"),
    ({"roi_radius_mm": 0}, "above 0"),
    ({"template_sigma_mm": None}, "above 0"),
    ({"max_vif": 0.5}, ">= 1"),
])
def test_bad_options_are_reported(options, match):
    with pytest.raises(MsnetInputError, match=match):
        conn.validate_options(options)


def test_default_options():
    assert conn.validate_options(None) == conn.DEFAULT_OPTIONS


def test_flat_voxels_are_nan_in_subject_maps(mask8, templates8, signals):
    """Voxels without signal are NaN (not 0) in the stage-2 and seed maps: constant in the
    cleaned data, or flagged by denoising as constant in the raw BOLD."""
    _, tmpl = templates8
    data = planted(signals, tmpl, seed=21)
    constant = np.zeros(data.shape[1], bool)
    constant[::7] = True
    data[:, constant] = 100.0
    raw_flat = np.zeros_like(constant)
    raw_flat[3::11] = True  # signal smoothed in from neighbours, but none of its own
    raw_flat &= ~constant
    cleaned = fake_cleaned(mask8, data)
    cleaned.flat_voxels = raw_flat
    result = conn.subject_connectivity(cleaned, {"seed_maps": True})
    nan = constant | raw_flat
    for values in [*result.maps.values(), *result.seed_maps.values()]:
        assert np.isnan(values[nan]).all() and np.isfinite(values[~nan]).all()
    assert result.qc["include"] is True and result.qc["dr_n_flat_voxels"] == constant.sum()
    assert all(np.isfinite(list(result.qc["dr_template_r"].values())))


def test_constant_bold_is_no_signal_not_vif(tmp_path):
    """An all-zero BOLD is excluded as 'no signal' (denoising), not for VIF = inf."""
    from test_denoise import SHAPE, write_subject

    from msnet.denoise import clean_subject

    files = write_subject(tmp_path, bold_data=np.zeros(SHAPE + (80,)), dtype=np.float32)
    result = conn.subject_connectivity(clean_subject(files, {}, {}), {})
    assert result.qc["include"] is False
    assert result.qc["exclusion_reason"].startswith("no signal") and "VIF" not in \
        result.qc["exclusion_reason"]
    assert all(np.isnan(m).all() for m in result.maps.values())


def test_unwritable_outputs_fail_before_any_work(tmp_path, monkeypatch):
    """A results folder that cannot be written is reported before denoising starts."""
    def must_not_run(*args, **kwargs):
        raise AssertionError("the subject was processed although its outputs cannot be written")

    monkeypatch.setitem(sys.modules, "msnet.io.fmriprep",
                        SimpleNamespace(find_subject_files=must_not_run))
    monkeypatch.setitem(sys.modules, "msnet.denoise", SimpleNamespace(clean_subject=must_not_run))
    (tmp_path / "blocked").write_text("a file where the results folder should be")
    paths = out_paths(tmp_path / "blocked" / "results")
    with pytest.raises(MsnetInputError, match="Cannot write into the output folder .*blocked"):
        conn.compute_subject_connectivity("/d", "sub-01", paths)

    import msnet.io.atomic as atomic

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)  # a read-only folder, even as root
    with pytest.raises(MsnetInputError, match="Permission denied.*nothing was computed"):
        conn.compute_subject_connectivity("/d", "sub-01", out_paths(tmp_path / "ro"))


@pytest.mark.skipif(sys.platform == "win32" or __import__("os").geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_results_folder(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o555)
    try:
        with pytest.raises(MsnetInputError, match="Cannot write into"):
            conn.compute_subject_connectivity("/d", "sub-01", out_paths(results))
    finally:
        results.chmod(0o755)


def test_thread_limits_set_the_blas_threads_of_the_job():
    from threadpoolctl import threadpool_info

    from msnet.connectivity import thread_limits

    def blas_threads():
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    before = blas_threads()
    with thread_limits(1):
        assert blas_threads() <= {1}
    with thread_limits(None):
        assert blas_threads() == before
    assert blas_threads() == before


def test_tsv_writer_writes_the_bytes_pandas_writes(tmp_path):
    from msnet.connectivity import _write_tsv
    from msnet.io.atomic import write_tsv

    rng = np.random.default_rng(0)
    names = [f"ROI{i:03d}" for i in range(40)]
    values = rng.normal(size=(30, 40)) * 10
    values[:, 5] = np.nan
    values[0, :5] = [np.inf, -np.inf, -0.0, 1e-30, 123456789.0]
    z = np.arctanh(np.clip(rng.normal(size=(40, 40)) * 0.3, -0.99, 0.99))
    np.fill_diagonal(z, np.nan)
    frames = {
        "timeseries": pd.DataFrame(values, columns=names),
        "relmat": pd.DataFrame(z, index=pd.Index(names, name="roi"), columns=names).reset_index(),
        "networks": pd.DataFrame({"network_a": ["DMN", "SMN"], "network_b": ["DMN", "VN"],
                                  "fc_z": [0.1, np.nan], "n_edges": [3, 0]}),
        "empty": pd.DataFrame(columns=names, dtype=float),
        "quoted": pd.DataFrame({"a\tb": [1.5], "c": ['say "x"']}),  # pandas' own path
    }
    for name, frame in frames.items():
        write_tsv(frame, tmp_path / f"{name}-pandas.tsv", float_format="%.7g")
        _write_tsv(frame, tmp_path / f"{name}-msnet.tsv")
        assert (tmp_path / f"{name}-msnet.tsv").read_bytes() == (tmp_path / f"{name}-pandas.tsv").read_bytes()
