"""Unit tests for msnet.simulate (8 mm grid, few volumes, one study at a time)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msnet import ANALYSIS_NETWORKS, atlas, simulate
from msnet.errors import MsnetInputError

SEED = 11
TINY = {"resolution_mm": 8, "n_volumes": 40, "high_motion_fraction": 0.5}
"""S03 at the demo scale: 3 MS + 3 HC (one high-motion subject per group at most)."""
POOLED = {
    "resolution_mm": 8,
    "n_volumes": 100,
    "min_per_group": 20,
    "effect_size": 0.4,
    "effect_tau": 0.0,
    "high_motion_fraction": 0.15,
}
"""S03 with 20 MS + 20 HC, a clear effect and a few high-motion subjects, for ground-truth
recovery and denoising tests."""
STUDY = "S03"

FIRST_ROW_NA = re.compile(
    r"(_derivative1(_power2)?|^framewise_displacement|^dvars|^std_dvars|^rmsd)$"
)


def _load(path, grid):
    """In-mask data of a written image, time first."""
    return nib.load(path).get_fdata(dtype=np.float32)[grid.mask].T


def _hashes(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _project_out(confounds: pd.DataFrame, n_dummy: int, *arrays):
    """Residualise arrays (time first, steady-state volumes) on the 'simple' confounds."""
    cols = [
        c for c in confounds.columns
        if c.startswith(("trans_", "rot_", "cosine")) or c in ("csf", "white_matter")
    ]  # fmt: skip
    x = np.nan_to_num(confounds[cols].to_numpy()[n_dummy:])
    q, _ = np.linalg.qr(np.column_stack([x, np.ones(len(x))]))
    return [a - q @ (q.T @ a) for a in arrays]


def _corr(a, b):
    """Column-wise Pearson correlation of two (time, n) arrays."""
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    return (a * b).mean(0)


@pytest.fixture(scope="module")
def grid():
    return simulate.load_grid(8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    simulate.simulate_study(TINY, SEED, STUDY, out)
    return out


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    out = tmp_path_factory.mktemp("pooled")
    simulate.simulate_study(POOLED, SEED, STUDY, out)
    return out, list(simulate.iter_study_subjects(POOLED, SEED, STUDY))


# ----------------------------------------------------------------------------- plan


def test_study_sizes_mirror_the_meta_analysis():
    assert len(simulate.STUDY_SIZES) == 25
    assert sum(ms for ms, _ in simulate.STUDY_SIZES) == 1524
    assert sum(hc for _, hc in simulate.STUDY_SIZES) == 886
    assert simulate.STUDY_IDS[0] == "S01" and simulate.STUDY_IDS[-1] == "S25"


def test_plan_at_full_scale_has_all_participants():
    plan = simulate.plan_dataset({"scale": 1.0}, SEED)
    assert plan["study_id"].nunique() == 25
    assert (plan["group"] == "MS").sum() == 1524
    assert (plan["group"] == "HC").sum() == 886
    assert plan["participant_id"].is_unique
    assert plan["participant_id"].str.fullmatch(r"sub-[A-Za-z0-9]+").all()


@pytest.mark.parametrize("min_per_group", [3, 5])
def test_plan_at_demo_scale_respects_min_per_group(min_per_group):
    sim = {"scale": 0.05, "min_per_group": min_per_group}
    counts = simulate.plan_dataset(sim, SEED).groupby(["study_id", "group"]).size()
    for study, (n_ms, n_hc) in zip(simulate.STUDY_IDS, simulate.STUDY_SIZES):
        assert counts[(study, "MS")] == max(min_per_group, int(np.floor(n_ms * 0.05 + 0.5)))
        assert counts[(study, "HC")] == max(min_per_group, int(np.floor(n_hc * 0.05 + 0.5)))


def test_plan_clinical_variables_are_realistic():
    plan = simulate.plan_dataset({"scale": 1.0}, SEED)
    ms, hc = plan[plan["group"] == "MS"], plan[plan["group"] == "HC"]
    assert hc[["disease_duration", "edss", "t2lv", "phenotype"]].isna().all().all()
    assert ms[["disease_duration", "edss", "t2lv", "phenotype"]].notna().all().all()
    edss = ms["edss"].to_numpy()
    assert edss.min() >= 0 and edss.max() <= 10
    np.testing.assert_array_equal(edss * 2, np.round(edss * 2))
    assert 0.6 < np.mean((edss >= 1) & (edss <= 4.5))
    assert 35 <= ms["age"].mean() <= 45 and 0.65 <= (ms["sex"] == "F").mean() <= 0.75
    assert 6 <= ms["disease_duration"].mean() <= 10 and (ms["t2lv"] > 0).all()
    assert ms["edss"].corr(ms["disease_duration"]) > 0.3
    assert (ms["phenotype"] == "RRMS").mean() > 0.7
    assert (ms["age"] - ms["disease_duration"] >= 12).all()


def test_plan_is_deterministic_and_seed_dependent():
    a = simulate.plan_dataset({}, SEED)
    pd.testing.assert_frame_equal(a, simulate.plan_dataset({}, SEED))
    assert not a["age"].equals(simulate.plan_dataset({}, SEED + 1)["age"])


def test_plan_imports_no_imaging_library():
    code = (
        "import sys; from msnet.simulate import plan_dataset; plan_dataset({'scale': 1}, 0); "
        "bad = [m for m in ('nilearn', 'nibabel', 'scipy', 'nimare') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "sim",
    [
        {"resolution_mm": 1},
        {"scale": 0},
        {"n_volumes": 10.5},
        {"min_per_group": True},
        {"clinical_variable": "age"},
        {"n_dummy": 10, "n_volumes": 30},
        {"typo_key": 1},
    ],
)
def test_sim_config_rejects_bad_values(sim):
    with pytest.raises(MsnetInputError, match="simulate"):
        simulate.sim_config(sim)


def test_unknown_study_and_bad_seed_raise(tmp_path):
    with pytest.raises(MsnetInputError, match="S99"):
        simulate.simulate_study(TINY, SEED, "S99", tmp_path)
    with pytest.raises(MsnetInputError, match="seed"):
        simulate.plan_dataset({}, -1)


# ----------------------------------------------------------------------------- files


def test_same_seed_same_bytes_other_seed_other_bold(tiny, tmp_path):
    simulate.simulate_study(TINY, SEED, STUDY, tmp_path / "again")
    simulate.simulate_study(TINY, SEED + 1, STUDY, tmp_path / "other")
    first = _hashes(tiny)
    assert first == _hashes(tmp_path / "again")
    other = _hashes(tmp_path / "other")
    bolds = [k for k in first if k.endswith("desc-preproc_bold.nii.gz")]
    assert len(bolds) == 6
    assert all(first[k] != other[k] for k in bolds)


def test_study_layout_and_metadata(tiny, grid):
    study = tiny / f"study-{STUDY}"
    desc = json.loads((study / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "msnet"
    parts = pd.read_csv(study / "participants.tsv", sep="\t", keep_default_na=False)
    assert list(parts.columns) == list(simulate.PARTICIPANT_COLUMNS)
    assert (parts.loc[parts["group"] == "HC", "edss"] == "n/a").all()
    subjects = simulate.iter_study_subjects(TINY, SEED, STUDY)
    for (row, sub), pid in zip(subjects, parts["participant_id"], strict=True):
        assert row["participant_id"] == pid
        paths = simulate.subject_paths(study, pid, 8)
        assert all(p.exists() for p in paths.values())
        tr = simulate.STUDY_PROTOCOLS[simulate.study_index(STUDY)][1]  # TINY leaves tr null
        assert json.loads(paths["bold_json"].read_text())["RepetitionTime"] == tr
        img = nib.load(paths["bold"])
        assert img.shape == grid.mask.shape + (40,) and img.get_data_dtype() == np.int16
        assert img.header.get_zooms() == (8.0, 8.0, 8.0, tr)
        np.testing.assert_array_equal(_load(paths["bold"], grid), sub.bold)
        np.testing.assert_array_equal(nib.load(paths["mask"]).get_fdata() > 0, grid.mask)


def test_nilearn_reads_every_subject_with_each_strategy(tiny):
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    bolds = sorted((tiny / f"study-{STUDY}").glob("sub-*/func/*_desc-preproc_bold.nii.gz"))
    assert len(bolds) == 6
    for bold in bolds:
        for strategy in ("simple", "scrubbing", "compcor"):
            conf, sample_mask = load_confounds_strategy(str(bold), denoise_strategy=strategy)
            assert conf.shape[0] == 40 and not conf.isna().any().any()
            assert sample_mask is not None and 0 not in sample_mask and 1 not in sample_mask
        conf, _ = load_confounds_strategy(
            str(bold), denoise_strategy="compcor", compcor="anat_separated"
        )
        assert conf.filter(like="a_comp_cor").shape[1] == 10


def test_confounds_na_only_where_fmriprep_writes_them(tiny):
    for tsv in (tiny / f"study-{STUDY}").glob("sub-*/func/*_desc-confounds_timeseries.tsv"):
        conf = pd.read_csv(tsv, sep="\t", na_values="n/a", keep_default_na=False)
        assert len(conf) == 40
        expected = {c for c in conf.columns if FIRST_ROW_NA.search(c)}
        assert {"framewise_displacement", "dvars", "std_dvars", "rmsd"} <= expected
        assert set(conf.columns[conf.iloc[0].isna()]) == expected
        assert not conf.iloc[1:].isna().any().any()
        nss = conf[["non_steady_state_outlier00", "non_steady_state_outlier01"]].to_numpy()
        np.testing.assert_array_equal(nss[:3], [[1, 0], [0, 1], [0, 0]])
        meta = json.loads(tsv.with_suffix(".json").read_text())
        acc = [c for c in conf.columns if c.startswith("a_comp_cor_")]
        assert [meta[c]["Mask"] for c in acc] == ["combined"] * 10 + ["CSF"] * 5 + ["WM"] * 5
        assert all(meta[c]["Method"] == "aCompCor" and meta[c]["Retained"] for c in acc)


def test_confounds_match_nipype_definitions(tiny, grid, monkeypatch, tmp_path):
    from nipype.algorithms import confounds as nac

    # nipype's Yule-Walker AR(1) needs nitime (not installed): same estimator, inline.
    monkeypatch.setattr(
        nac, "_AR_est_YW", lambda x, order: np.array([np.dot(x[1:], x[:-1]) / np.dot(x, x)])
    )
    study = tiny / f"study-{STUDY}"
    paths = simulate.subject_paths(study, f"sub-{STUDY}MS001", 8)
    conf = pd.read_csv(paths["confounds"], sep="\t", na_values="n/a")
    std, raw, _ = nac.compute_dvars(
        str(paths["bold"]), str(paths["mask"]), remove_zerovariance=True
    )
    np.testing.assert_allclose(conf["dvars"][1:], raw, rtol=1e-4)
    np.testing.assert_allclose(conf["std_dvars"][1:], std, rtol=1e-4)
    motion = conf[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]].to_numpy()
    np.savetxt(tmp_path / "mc.par", motion)
    fd = nac.FramewiseDisplacement(in_file=str(tmp_path / "mc.par"), parameter_source="SPM")
    fd.inputs.out_file = str(tmp_path / "fd.txt")
    fd.inputs.out_figure = str(tmp_path / "fd.pdf")
    fd_res = fd.run().outputs.fd_average
    np.testing.assert_allclose(np.nanmean(conf["framewise_displacement"]), fd_res, rtol=1e-5)
    cosines = nac._cosine_drift(128.0, 2.0 * np.arange(38))[:, :-1]
    np.testing.assert_allclose(conf.filter(like="cosine").to_numpy()[2:], cosines, atol=1e-7)


def test_high_motion_subjects_exceed_qc_threshold():
    rng = np.random.default_rng(0)

    def mean_fd(high):
        return np.nanmean(simulate.framewise_displacement(simulate._motion_params(rng, 140, high)))

    low = [mean_fd(False) for _ in range(200)]
    high = [mean_fd(True) for _ in range(200)]
    assert max(low) < 0.4 and min(high) > 0.5


def test_grey_matter_tsnr_is_realistic(pooled, grid):
    _, subjects = pooled
    bold = subjects[0][1].bold[2:]
    tsnr = np.median((bold.mean(0) / bold.std(0))[grid.gm > 0.5])
    assert 50 <= tsnr <= 110


# ----------------------------------------------------------------------------- ground truth


def test_generating_amplitude_differs_with_the_planted_sign(pooled):
    out, _ = pooled
    truth = pd.read_csv(out / f"study-{STUDY}" / "ground_truth_subjects.tsv", sep="\t")
    assert len(truth) == 40
    means = truth.groupby("group").mean(numeric_only=True)
    for finding, direction in atlas.published_findings()[["finding", "direction"]].to_numpy():
        diff = means.loc["MS", f"map_{finding}"] - means.loc["HC", f"map_{finding}"]
        assert np.sign(diff) == direction, finding


def test_written_data_carry_the_planted_effect(pooled, grid):
    """MS - HC difference of the voxel/network-time-course correlation has the planted sign."""
    out, subjects = pooled
    findings = atlas.published_findings()
    corr = {"MS": [], "HC": []}
    for row, sub in subjects:
        paths = simulate.subject_paths(out / f"study-{STUDY}", row["participant_id"], 8)
        data = _load(paths["bold"], grid)[2:, grid.finding_voxel]
        tcs = sub.timecourses[2:, grid.finding_network]
        corr[row["group"]].append(_corr(*_project_out(sub.confounds, 2, data, tcs)))
    diff = np.mean(corr["MS"], axis=0) - np.mean(corr["HC"], axis=0)
    np.testing.assert_array_equal(np.sign(diff), findings["direction"].to_numpy())


def test_regressing_confounds_improves_network_correlation(pooled, grid):
    """Partial correlation (confounds removed from voxels and time course) beats the raw one."""
    _, subjects = pooled
    in_net = [np.flatnonzero(grid.base_maps[k] > 0.8) for k in range(len(ANALYSIS_NETWORKS))]
    n_high = 0
    for row, sub in subjects:
        y, tc = sub.bold[2:], sub.timecourses[2:]
        y_clean, tc_clean = _project_out(sub.confounds, 2, y, tc)
        raw = np.mean([_corr(y[:, v], tc[:, [k]]).mean() for k, v in enumerate(in_net)])
        clean = np.mean(
            [_corr(y_clean[:, v], tc_clean[:, [k]]).mean() for k, v in enumerate(in_net)]
        )
        assert clean > raw + 0.02, row["participant_id"]
        n_high += bool(row["high_motion"])
    assert n_high >= 1


@pytest.mark.parametrize("slope", [0.3, -0.3])
def test_clinical_slope_plants_an_association(slope):
    sim = {"resolution_mm": 8, "n_volumes": 30, "min_per_group": 20, "clinical_slope": slope}
    rows = list(simulate.iter_study_subjects(sim, SEED, STUDY))
    ms = [(r["edss"], s.amplitude[0], s.clinical_factor) for r, s in rows if r["group"] == "MS"]
    edss, amp, factor = np.array(ms).T
    assert np.sign(np.corrcoef(edss, amp)[0, 1]) == np.sign(slope)
    assert abs(np.corrcoef(edss, amp)[0, 1]) > 0.5
    mean, sd = simulate.clinical_population_moments()["edss"]
    np.testing.assert_allclose(factor, np.maximum(0.05, 1 + slope * (edss - mean) / sd))
    assert all(sub.clinical_factor == 1.0 for row, sub in rows if row["group"] == "HC")


def test_no_clinical_effect_by_default(tiny):
    truth = pd.read_csv(tiny / f"study-{STUDY}" / "ground_truth_subjects.tsv", sep="\t")
    assert (truth["clinical_factor"] == 1.0).all()


def test_dataset_index_and_ground_truth(tiny):
    simulate.write_dataset_index(TINY, SEED, tiny)
    studies = pd.read_csv(tiny / "studies.tsv", sep="\t")
    columns = ["study_id", "fmriprep_dir", "participants_tsv", "task", "space", "site"]
    assert list(studies.columns) == columns
    assert len(studies) == 25
    row = studies[studies["study_id"] == STUDY].iloc[0]
    assert (tiny / row["fmriprep_dir"] / "dataset_description.json").exists()
    assert (tiny / row["participants_tsv"]).exists()
    truth = json.loads((tiny / "ground_truth.json").read_text())
    assert truth["seed"] == SEED and truth["sim"]["resolution_mm"] == 8
    sizes = simulate.group_sizes(TINY)
    assert [(s["n_ms"], s["n_hc"]) for s in truth["studies"]] == [tuple(s) for s in sizes]
    assert len(truth["findings"]) == 11
    for f, published in zip(truth["findings"], simulate.atlas.PUBLISHED_FINDINGS):
        assert (f["finding"], f["network"], f["direction"]) == published[:3]
        assert f["mni"] == list(published[4]) and len(f["per_study_effect"]) == 25
        assert np.linalg.norm(np.subtract(f["voxel_mni"], f["mni"])) <= 8 * np.sqrt(3) / 2
    assert truth["clinical"]["slope"] == 0.0 and truth["clinical"]["variable"] == "edss"


def test_study_protocols_are_published_run_lengths_unless_overridden():
    """Null n_volumes/tr: each study its own 6-10 min run at TR 2-3 s (several protocols, as in
    a real consortium); a number replaces every study's value; the written runs follow it."""
    default = simulate.study_protocols(simulate.sim_config({}))
    assert len(default) == 25 and len(set(default)) > 5
    for volumes, tr in default:
        assert 2.0 <= tr <= 3.0 and 6.0 <= volumes * tr / 60 <= 10.0
    fixed = simulate.study_protocols(simulate.sim_config({"n_volumes": 90}))
    assert [v for v, _ in fixed] == [90] * 25 and [t for _, t in fixed] == [t for _, t in default]
    cfg = simulate.study_config(simulate.sim_config({"tr": 1.5}), "S05")
    assert (cfg["n_volumes"], cfg["tr"]) == (simulate.STUDY_PROTOCOLS[4][0], 1.5)
    with pytest.raises(MsnetInputError, match="n_dummy"):
        simulate.sim_config({"n_dummy": 10, "n_volumes": 30})
