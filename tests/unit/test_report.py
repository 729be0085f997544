"""Tests of msnet.report: published-findings check, QC summary, methods text, HTML report."""

from __future__ import annotations

import base64
import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msnet import ANALYSIS_NETWORKS
from msnet.atlas import gaussian_blob, published_findings
from msnet.io.atomic import write_tsv
from msnet.io.plan import study_qc_table
from msnet.qc import qc_summary, read_study_qc, summarise_study_qc
from msnet.report import (COMPARISON_COLUMNS, FIGURES, SECTIONS, build_report,
                          compare_with_published, figure_paths, fwe_significant, input_files,
                          methods_text, report_inputs)

# A 4 mm grid over the MNI brain's bounding box (37 x 47 x 34 voxels).
AFFINE = np.array([[4.0, 0, 0, -72], [0, 4.0, 0, -108], [0, 0, 4.0, -48], [0, 0, 0, 1]])
SHAPE = (37, 47, 34)
COORDS = (np.indices(SHAPE).reshape(3, -1).T @ AFFINE[:3, :3].T + AFFINE[:3, 3])


def blob_maps(blobs, signed_logp=True, threshold=2.0):
    """Statistic and -log10 p_FWE images from (centre, amplitude) blobs (sigma 6 mm).

    Voxels with |stat| > ``threshold`` get p_FWE = 0.001, the others p_FWE = 0.5.
    """
    stat = np.zeros(len(COORDS))
    for centre, amplitude in blobs:
        stat += amplitude * gaussian_blob(COORDS, centre, 6.0)
    stat = stat.reshape(SHAPE)
    logp = np.where(np.abs(stat) > threshold, 3.0, -np.log10(0.5))
    if signed_logp:
        logp = logp * np.sign(stat)
    return (nib.Nifti1Image(stat.astype(np.float32), AFFINE),
            nib.Nifti1Image(logp.astype(np.float32), AFFINE))


def published_blobs(network, amplitude=6.0, shift=(0.0, 0.0, 0.0), flip=1):
    table = published_findings().query("network == @network")
    return [(np.array([r.x, r.y, r.z]) + np.asarray(shift), flip * r.direction * amplitude)
            for r in table.itertuples()]


# --------------------------------------------------------------------------- comparison


@pytest.mark.parametrize("network", ANALYSIS_NETWORKS)
def test_planted_findings_are_found(network):
    result = compare_with_published(*blob_maps(published_blobs(network)), network)
    expected = published_findings().query("network == @network")
    assert list(result["finding"]) == list(expected["finding"])
    assert result["found"].all()
    assert (result["distance_mm"] <= 4.0).all()  # the peak is the grid voxel nearest the centre
    assert (np.sign(result["statistic"]) == expected["direction"].to_numpy()).all()
    assert (result["p_fwe"] < 0.05).all()
    assert result["peak_label"].str.len().gt(0).all()


def test_unsigned_logp_map_as_meta_writes_it():
    stat, logp = blob_maps(published_blobs("SMN"), signed_logp=False)
    assert compare_with_published(stat, logp, "SMN")["found"].all()


def test_wrong_sign_is_not_found():
    result = compare_with_published(*blob_maps(published_blobs("DMN", flip=-1)), "DMN")
    assert not result["found"].any()
    assert result["peak_x"].isna().all()
    assert result["note"].str.contains("no MS").all()


def test_only_the_flipped_finding_is_missed():
    blobs = published_blobs("SN")
    blobs[1] = (blobs[1][0], -blobs[1][1])  # SN_R_INS is a decrease; plant an increase
    result = compare_with_published(*blob_maps(blobs), "SN").set_index("finding")
    assert result.loc["SN_R_AG", "found"]
    assert not result.loc["SN_R_INS", "found"]


def test_distance_limit():
    far = compare_with_published(*blob_maps(published_blobs("VN", shift=(20, 0, 0))), "VN")
    assert not far["found"].any()
    # the shifted blob's significant flank reaches into the radius, but its peak does not
    assert far["note"].str.contains("no FWE-significant").all()
    near = compare_with_published(*blob_maps(published_blobs("VN", shift=(8, 0, 0))), "VN")
    assert near["found"].all()
    assert near["distance_mm"].between(6.0, 12.0).all()
    wider = compare_with_published(*blob_maps(published_blobs("VN", shift=(20, 0, 0))), "VN",
                                   radius_mm=24.0)
    assert wider["found"].all()


def test_not_significant_is_not_found():
    stat, logp = blob_maps(published_blobs("VN"), threshold=100.0)  # nothing significant
    result = compare_with_published(stat, logp, "VN")
    assert not result["found"].any()
    assert result["note"].str.contains("p_FWE 0.5").all()


def test_fwe_threshold_is_strict():
    logp = -np.log10(np.array([0.049, 0.05, 0.051, 1.0], np.float32))
    assert fwe_significant(logp, 0.05).tolist() == [True, False, False, False]
    assert fwe_significant(-logp, 0.05).tolist() == [True, False, False, False]


def test_grid_mismatch_is_an_input_error():
    from msnet.errors import MsnetInputError

    stat, logp = blob_maps(published_blobs("VN"))
    other = nib.Nifti1Image(np.asarray(logp.dataobj)[:-1], AFFINE)
    with pytest.raises(MsnetInputError, match="different grids"):
        compare_with_published(stat, other, "VN")


# --------------------------------------------------------------------------- QC, methods


def write_qc(root, study, label, include=True, mean_fd=0.15, reason=None, **extra):
    path = root / "subjects" / f"study-{study}" / f"sub-{label}" / f"sub-{label}_qc.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    qc = {"study_id": study, "participant_id": f"sub-{label}", "include": include,
          "exclusion_reason": reason, "mean_fd": mean_fd, "max_fd": 3 * mean_fd,
          "pct_censored": 40.0 if not include else 5.0, "minutes_kept": 4.5, "n_volumes": 140,
          "n_dummy": 2, "n_kept": 130, "tsnr_median": 60.0, "fd_source": "confounds",
          "tr": 2.0, "denoise": {"strategy": "custom", "motion": "basic", "wm_csf": "basic",
                                 "global_signal": None, "compcor": None, "n_compcor": "all",
                                 "scrub": 5, "fd_threshold": 0.3, "std_dvars_threshold": 1.5,
                                 "detrend": True, "high_pass": 0.01, "low_pass": 0.1,
                                 "smoothing_fwhm": 5.0, "standardize_confounds": True,
                                 "multi_run": "first"}, **extra}
    path.write_text(json.dumps(qc))
    return str(path)


def test_qc_summary_rows_and_groups(tmp_path):
    paths = [write_qc(tmp_path, "A", "01"), write_qc(tmp_path, "A", "02", False, 0.9, "motion")]
    part = tmp_path / "participants.tsv"
    pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "group": ["MS", "HC"]}).to_csv(
        part, sep="\t", index=False)
    table = qc_summary(paths, {"A": part})
    assert list(table["participant_id"]) == ["sub-01", "sub-02"]
    assert list(table["group"]) == ["MS", "HC"]
    assert list(table["include"]) == [True, False]
    assert table.loc[1, "exclusion_reason"] == "motion"
    assert table["mean_fd"].tolist() == [0.15, 0.9]
    assert qc_summary(paths)["group"].eq("n/a").all()


def test_study_qc_table_round_trips(tmp_path):
    paths = [write_qc(tmp_path, "A", "01"), write_qc(tmp_path, "A", "02", False, 0.9, "motion")]
    part = tmp_path / "participants.tsv"
    pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "group": ["MS", "HC"]}).to_csv(
        part, sep="\t", index=False)
    out = tmp_path / "qc.tsv"
    summarise_study_qc(paths, part, "A", out)
    pd.testing.assert_frame_equal(read_study_qc([out]), qc_summary(paths, {"A": part}),
                                  check_dtype=False)


def test_methods_text_reflects_config():
    config = {"denoise": {"motion": "derivatives", "global_signal": "basic", "smoothing_fwhm": 4},
              "meta": {"method": "DL", "n_permutations": 123}, "qc": {"max_mean_fd": 0.25},
              "group": {"n_permutations": 77, "tfce": True}}
    text = methods_text(config, {"msnet": "9.9", "nilearn": "0.13.1"})
    for needle in ("12 motion parameters", "1 global signal", "4 mm FWHM", "DerSimonian",
                   "123 permutations", "mean FD > 0.25 mm", "77 Freedman-Lane", "TFCE",
                   "msnet 9.9", "nilearn 0.13.1", "Nickerson", "Egger", "Hedges", "Winkler",
                   "Smith & Nichols", "Seitzman", "Esteban", "Abraham"):
        assert needle in text, needle
    default = methods_text({}, {"msnet": "0"})
    assert "REML" in default and "24 motion parameters" in default
    assert "TFCE" not in default.split("References")[0]


# --------------------------------------------------------------------------- report


STUDIES = ["S01", "S02", "S03", "S04"]


def _group_rows(study, rng, g_shift=0.0):
    rows = []
    for net in ANALYSIS_NETWORKS:
        g = rng.normal(0.5 + g_shift, 0.1)
        v = 0.1 + rng.uniform(0, 0.05)
        rows.append({"study_id": study, "metric": f"within_{net}", "network_a": net,
                     "network_b": net, "kind": "within", "n_ms": 6, "n_hc": 5, "t": g * 3,
                     "p": 0.04, "d": g, "g": g, "var_g": v, "g_ci_low": g - 1.96 * v ** 0.5,
                     "g_ci_high": g + 1.96 * v ** 0.5, "status": "ok", "reason": ""})
    rows.append({**rows[0], "metric": "between_DMN_SMN", "network_b": "SMN", "kind": "between"})
    return pd.DataFrame(rows)


def make_results(root, networks_with_maps=("DMN", "SN")):
    """A small synthetic results tree in the formats of the group, clinical and meta stages.

    Maps are written for ``networks_with_maps`` only (the others test "not available").
    """
    from msnet.meta import meta_networks, meta_vs_mega

    rng = np.random.default_rng(0)
    inputs = {"qc": [], "group_study_tables": {}}
    qc_jsons, participants = [], {}
    for s, study in enumerate(STUDIES):
        labels = [f"{s}{i:02d}" for i in range(6)]
        groups = ["MS", "MS", "MS", "HC", "HC", "HC"]
        part = root / "sim" / f"study-{study}" / "participants.tsv"
        part.parent.mkdir(parents=True)
        pd.DataFrame({"participant_id": [f"sub-{x}" for x in labels], "group": groups,
                      "age": rng.uniform(25, 50, 6).round(1), "sex": ["F", "M"] * 3,
                      "disease_duration": [5.0 + s, 7.0, 9.0, None, None, None],
                      "edss": [2.0 + s / 2, 3.0, 1.5, None, None, None]}).to_csv(
            part, sep="\t", index=False, na_rep="n/a")
        participants[study] = str(part)
        study_jsons = []
        for i, label in enumerate(labels):
            bad = i == 5 and s == 0
            study_jsons.append(write_qc(root, study, label, include=not bad,
                                        mean_fd=0.7 if bad else rng.uniform(0.05, 0.3),
                                        reason="mean FD 0.700 mm > max_mean_fd 0.5 mm"
                                        if bad else None))
        inputs["qc"].append(study_qc_table(root, study))
        summarise_study_qc(study_jsons, part, study, inputs["qc"][-1])
        qc_jsons += study_jsons
        path = root / "group" / f"study-{study}" / f"study-{study}_desc-MSvsHC_networks.tsv"
        write_tsv(_group_rows(study, rng), path)
        inputs["group_study_tables"][study] = str(path)
    pooled = _group_rows("pooled", rng).assign(method="MixedLM", z=2.5, n_studies=4)
    inputs["pooled_table"] = str(root / "group" / "pooled" / "pooled_desc-MSvsHC_networks.tsv")
    write_tsv(pooled, inputs["pooled_table"])
    inputs["meta_tables"] = {k: str(v) for k, v in meta_networks(
        inputs["group_study_tables"], participants, root / "meta",
        {"n_permutations": 20, "moderators": ["duration", "edss"]}).items()}
    inputs["meta_vs_mega"] = str(root / "meta" / "meta_desc-metavsmega_stats.tsv")
    meta_vs_mega(inputs["meta_tables"]["networks"], inputs["pooled_table"],
                 inputs["meta_vs_mega"])
    inputs.update(pooled_maps={}, meta_maps={}, pooled_clusters={}, meta_clusters={},
                  subject_qc=qc_jsons[0])
    for net in networks_with_maps:
        blobs = published_blobs(net)
        for kind, stat, logp_name, signed in (("pooled", "t", "logpfwe", True),
                                              ("meta", "z", "logp_fwe", False)):
            stat_img, logp_img = blob_maps(blobs, signed_logp=signed)
            folder = root / ("group/pooled" if kind == "pooled" else "meta")
            prefix = folder / f"{kind}_network-{net}"
            prefix.parent.mkdir(parents=True, exist_ok=True)
            paths = {stat: f"{prefix}_stat-{stat}_map.nii.gz",
                     logp_name: f"{prefix}_stat-{logp_name}_map.nii.gz"}
            stat_img.to_filename(paths[stat])
            logp_img.to_filename(paths[logp_name])
            inputs[f"{kind}_maps"][net] = paths
        write_tsv(pd.DataFrame({
            "network": net, "cluster_id": [1], "direction": ["MS>HC"], "size_vox": [40],
            "size_mm3": [2560.0], "peak_x": [-4.0], "peak_y": [40.0], "peak_z": [12.0],
            "peak_t": [6.1], "peak_g": [0.4], "peak_p_fwe": [0.001], "cluster_p_fwe": [0.002],
            "significant": [True], "label": ["Left Cingulate Gyrus, anterior division"]}),
            root / "group" / "pooled" / f"pooled_network-{net}_clusters.tsv")
        inputs["pooled_clusters"][net] = str(root / "group" / "pooled" /
                                             f"pooled_network-{net}_clusters.tsv")
        write_tsv(pd.DataFrame({
            "network": net, "cluster_id": [1], "direction": ["MS<HC"], "size_voxels": [30],
            "size_mm3": [1920.0], "peak_x": [-8.0], "peak_y": [-52.0], "peak_z": [28.0],
            "peak_stat": [-5.7], "peak_g": [-0.3], "label": ["Left Cingulate Gyrus"],
            "p_fwe_peak": [0.001], "p_fwe_cluster": [0.01]}),
            root / "meta" / f"meta_network-{net}_clusters.tsv")
        inputs["meta_clusters"][net] = str(root / "meta" / f"meta_network-{net}_clusters.tsv")
    rows, scatter = [], []
    for net in ANALYSIS_NETWORKS:
        for var in ("disease_duration", "edss"):
            rows.append({"study_id": "pooled", "metric": f"within_{net}", "kind": "within",
                         "variable": var, "method": "MixedLM", "n": 11, "n_studies": 4,
                         "beta": 0.01, "se": 0.02, "z": 0.5, "p": 0.6, "ci_low": -0.03,
                         "ci_high": 0.05, "std_beta": 0.05, "q_fdr": 0.8, "status": "ok",
                         "reason": ""})
            x = rng.normal(size=11)
            scatter.append(pd.DataFrame({"metric": f"within_{net}", "variable": var,
                                         "study_id": "S01", "participant_id": "sub-x",
                                         "x_resid": x, "y_resid": 0.1 * x + rng.normal(size=11)}))
    inputs["clinical_table"] = str(root / "clinical" / "pooled_desc-clinical_networks.tsv")
    inputs["clinical_scatter"] = str(root / "clinical" /
                                     "pooled_desc-partialregression_scatter.tsv")
    write_tsv(pd.DataFrame(rows), inputs["clinical_table"])
    write_tsv(pd.concat(scatter), inputs["clinical_scatter"])
    inputs["excluded_inputs"] = str(root / "excluded_inputs.tsv")
    write_tsv(pd.DataFrame({"study_id": ["S02"], "participant_id": ["sub-99"],
                            "reason": ["no BOLD run found"]}), inputs["excluded_inputs"])
    return inputs


def _images(text):
    return re.findall(r'<img [^>]*src="data:image/png;base64,([^"]*)"', text)


@pytest.mark.slow
def test_build_report_full(tmp_path):
    written = make_results(tmp_path)
    inputs = report_inputs(tmp_path, STUDIES, written["subject_qc"], ("DMN", "SN"),
                           written["excluded_inputs"])
    for key, value in written.items():  # the standard locations are where the stages write
        assert inputs[key] == value, key
    assert set(input_files(inputs)) >= set(input_files(written))
    out = build_report({"seed": 1}, inputs, tmp_path / "report.html", tmp_path / "figures")
    text = (tmp_path / "report.html").read_text()
    for sid, _ in SECTIONS:
        assert f'<h2 id="{sid}">' in text
    images = _images(text)
    assert len(images) == text.count("<img ")
    for data in images:
        assert base64.b64decode(data, validate=True).startswith(b"\x89PNG")
    assert not re.search(r'(src|href)="https?://', text)  # self-contained
    # figures: QC, study effects, 4 x (forest, funnel, bubble), clinical, 2 x 2 glass brains
    assert len(images) == 1 + 1 + 12 + 1 + 4
    for path in out["figures"]:
        assert (tmp_path / "figures" / path.split("/")[-1]).stat().st_size > 0
    expected = figure_paths(tmp_path / "figures", ("DMN", "SN"))
    for kind in FIGURES:
        for png in expected[kind]:
            assert png in out["figures"], png
    # the comparison table: one row per finding and analysis
    table = pd.read_csv(out["comparison"], sep="\t", na_values=["n/a"])
    assert list(table.columns) == COMPARISON_COLUMNS
    assert len(table) == 2 * len(published_findings())
    with_maps = table["network"].isin(["DMN", "SN"])
    assert table.loc[with_maps, "found"].all()
    assert not table.loc[~with_maps, "found"].any()
    assert "Excluded subjects" in text and "mean FD 0.700 mm" in text
    assert "no BOLD run found" in text
    assert "Voxelwise meta-analysis maps for SMN: not available" in text
    assert "published null" in text
    assert "12 motion parameters" not in text and "6 motion parameters" in text  # from QC JSON


def test_build_report_without_optional_inputs(tmp_path):
    inputs = make_results(tmp_path, networks_with_maps=())
    sparse = {"qc": inputs["qc"], "meta_tables": {"networks": inputs["meta_tables"]["networks"]},
              "clinical_table": str(tmp_path / "does_not_exist.tsv")}
    build_report({}, sparse, tmp_path / "out" / "report.html", tmp_path / "out" / "figures")
    text = (tmp_path / "out" / "report.html").read_text()
    for sid, _ in SECTIONS:
        assert f'<h2 id="{sid}">' in text
    for what in ("Meta vs mega table", "Clinical association table", "Partial-regression data",
                 "Meta-regression table", "Leave-one-out table", "Per-study group tables",
                 "Pooled mega-analysis clusters (DMN)"):
        assert f"{what}: not available" in text, what
    assert all(_images(text))
    table = pd.read_csv(tmp_path / "out" / "report_desc-published_comparison.tsv", sep="\t")
    assert not table["found"].any()

    build_report({}, {}, tmp_path / "empty" / "report.html", tmp_path / "empty" / "figures")
    empty = (tmp_path / "empty" / "report.html").read_text()
    assert all(f'<h2 id="{sid}">' in empty for sid, _ in SECTIONS)
    assert "Subject QC tables: not available" in empty
    assert "<img" not in empty


def test_methods_text_lists_only_the_covariates_in_the_models(tmp_path):
    """Covariates the models dropped (absent, constant, too few df) are not claimed."""
    from msnet.report import _Report, covariates_in_models, methods_text

    study = pd.DataFrame({"status": ["ok", "ok", "excluded"], "covariates": ["age,sex", "age", ""]})
    pooled = pd.DataFrame({"status": ["ok"], "covariates": ["age,sex"]})
    used, note = covariates_in_models([study, pooled], ["age", "sex", "mean_fd"])
    assert used == ["age", "sex"]
    assert "sex was not in 1 of 3 models" in note and "mean FD could not be used" in note
    text = methods_text({}, versions={}, covariates_used={"group": (used, note),
                                                          "clinical": ([], "")})
    group = next(p for p in text.split("\n\n") if p.startswith("Group comparison"))
    assert "adjusting for age and sex (" in group and "mean FD could not" in group
    clinical = next(p for p in text.split("\n\n") if p.startswith("Clinical associations"))
    assert "adjusting for no covariates" in clinical
    # the report reads the covariates from the stage tables it is given
    write_tsv(study, tmp_path / "study.tsv")
    write_tsv(pooled, tmp_path / "pooled.tsv")
    write_tsv(pd.DataFrame({"status": ["ok", "ok"], "covariates": ["age", "age"]}),
              tmp_path / "clinical.tsv")
    inputs = {"group_study_tables": {"A": str(tmp_path / "study.tsv")},
              "pooled_table": str(tmp_path / "pooled.tsv"),
              "clinical_table": str(tmp_path / "clinical.tsv")}
    html_text = _Report({}, inputs, tmp_path, tmp_path).methods()
    assert "adjusting for age and sex (sex was not in 1 of 3 models" in html_text
    assert "regressed on disease duration, EDSS and T2 lesion volume jointly, adjusting for " \
           "age (sex could not be used in any model)" in html_text.replace("\n", " ")
