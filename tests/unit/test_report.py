"""Tests of msnet.report: published-findings check, QC summary, methods text, HTML report."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msnet import ANALYSIS_NETWORKS
from msnet.atlas import gaussian_blob, published_findings
from msnet.io.atomic import write_tsv
from msnet.io.plan import map_name, study_qc_table
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


def _para(text, start):
    return next(p for p in text.split("\n\n") if p.startswith(start))


def _refs(text):
    return text.split("\n\nReferences\n")[1].split("\n")


def test_methods_text_reflects_config():
    config = {"denoise": {"motion": "derivatives", "global_signal": "basic", "smoothing_fwhm": 4},
              "meta": {"method": "DL", "n_permutations": 123}, "qc": {"max_mean_fd": 0.25},
              "group": {"n_permutations": 77, "tfce": True}}
    text = methods_text(config, {"msnet": "9.9", "nilearn": "0.13.1"})
    for needle in ("12 motion parameters", "1 global signal", "4 mm FWHM", "DerSimonian",
                   "123 permutations", "mean FD > 0.25 mm", "77 Freedman-Lane", "TFCE",
                   "msnet 9.9", "nilearn 0.13.1", "Nickerson", "Egger", "Hedges", "Winkler",
                   "Smith & Nichols", "Seitzman", "Abraham"):
        assert needle in text, needle
    default = methods_text({}, {"msnet": "0"})
    assert "REML" in default and "24 motion parameters" in default
    assert "TFCE" not in default and "Smith & Nichols" not in default


@pytest.mark.parametrize("units, expected, absent", [
    ("psc", "% signal change per standard deviation", "standardised regression coefficients"),
    ("standardized", "partial standardised regression coefficients", "% signal change")])
def test_methods_text_stage2_units_follow_the_config(units, expected, absent):
    text = _para(methods_text({"connectivity": {"stage2_units": units}}, {}),
                 "Network connectivity")
    assert expected in text and absent not in text
    assert f"stage2_units: {units}" in text


def test_methods_text_estimator_test_permutations_and_tfce_follow_the_config():
    from msnet.meta import DEFAULT_OPTIONS

    reml = methods_text({"meta": {"knapp_hartung": False}}, {})
    dl = methods_text({"meta": {"method": "DL", "knapp_hartung": True, "n_permutations": 250,
                                "cluster_threshold": 0.005}}, {})
    assert "restricted maximum likelihood (REML; Viechtbauer, 2005)" in _para(reml, "Meta")
    assert "DerSimonian" not in reml and "Knapp" not in reml and "Wald-type z" in reml
    assert "(Wald z)" in reml and "(Knapp-Hartung t converted to z)" in dl
    default = methods_text({}, {})  # whatever msnet.meta's defaults are, the text says it
    assert ("Knapp-Hartung t tests" in default) == DEFAULT_OPTIONS["knapp_hartung"]
    assert ("REML" in _para(default, "Meta")) == (DEFAULT_OPTIONS["method"] == "REML")
    meta = _para(dl, "Meta-analysis")
    assert "DerSimonian-Laird estimator (DerSimonian & Laird, 1986)" in meta
    assert "REML" not in meta and "Viechtbauer, 2005" not in dl
    assert "Knapp-Hartung t tests (Knapp & Hartung, 2003)" in meta
    assert "250 permutations of the moderators" in meta and "250 sign-flip" in meta
    assert "p < 0.005" in meta
    assert any(r.startswith("DerSimonian R, Laird N.") for r in _refs(dl))
    assert not any(r.startswith("DerSimonian") for r in _refs(reml))
    none = _para(methods_text({"meta": {"n_permutations": 0}, "group": {"n_permutations": 0}},
                              {}), "Meta-analysis")
    assert "sign-flip" not in none and "permutations of the moderators" not in none
    assert "parametric p-values (meta.n_permutations: 0" in none
    tfce = methods_text({"group": {"tfce": True, "cluster_forming_p": 0.01}}, {})
    assert "threshold-free cluster enhancement (TFCE; Smith & Nichols, 2009)" in tfce
    assert "cluster-forming p < 0.01" in _para(tfce, "Group comparison")
    assert any(r.startswith("Smith SM, Nichols TE.") for r in _refs(tfce))
    assert "5000 Freedman-Lane" in reml and "77 Freedman-Lane" in methods_text(
        {"group": {"n_permutations": 77}}, {})


def test_methods_text_states_every_qc_rule_including_vif_and_flat_voxels():
    qc = _para(methods_text({}, {}), "Denoising and quality control")
    for rule in ("mean FD > 0.5 mm", "more than 30% of volumes censored",
                 "less than 4 min of data left", "more than 5% of the brain-mask voxels",
                 "variance inflation factor of any network's stage-2 coefficient > 10",
                 "no signal"):
        assert rule in qc, rule
    changed = _para(methods_text({"connectivity": {"max_vif": 25},
                                  "qc": {"max_pct_flat_voxels": None, "max_mean_fd": 0.3}}, {}),
                    "Denoising")
    assert "> 25" in changed and "mean FD > 0.3 mm" in changed and "(flat)" not in changed
    off = _para(methods_text({"connectivity": {"max_vif": None}}, {}), "Denoising")
    assert "variance inflation" not in off


def test_references_are_exactly_the_works_cited_with_dois():
    from msnet.report import REFERENCES, citations_bib, cited_references

    for config in ({}, {"data": {"mode": "fmriprep"}, "meta": {"method": "DL",
                                                                "knapp_hartung": True},
                        "group": {"tfce": True}}):
        text = methods_text(config, {})
        body, refs = text.split("\n\nReferences\n")
        cited = cited_references(body)
        assert [r.text() for r in cited] == refs.split("\n")
        for ref in REFERENCES.values():  # listed if and only if cited in the text
            assert (ref in cited) == (f"({ref.cite}" in body or f"; {ref.cite}" in body)
        for ref in cited:
            assert ref.doi or ref.key in ("pymare", "jneurol_ms_rsfmri_meta"), ref.key
            assert not ref.doi or f"doi:{ref.doi}" in text
        bib = citations_bib(text)
        assert bib.count("@") == len(cited)
        assert all(f"doi = {{{r.doi}}}" in bib for r in cited if r.doi)
    # what the defaults cite, and only that
    text = methods_text({}, {})
    for name in ("Seitzman et al., 2020", "Salo et al., 2023", "Seabold & Perktold, 2010",
                 "Makris et al., 2006", "Desikan et al., 2006", "PyMARE developers",
                 "Benjamini & Hochberg, 1995", "Disrupted and reorganized connectivity"):
        assert name in text, name
    for name in ("DerSimonian", "Smith & Nichols", "Seitzman et al., 2018",
                 "Esteban"):  # not used by the defaults (Esteban: the demo ran no fMRIPrep)
        assert name not in text, name
    assert "Knapp" not in methods_text({"meta": {"knapp_hartung": False}}, {})
    assert "10.1016/j.neuroimage.2019.116290" in text
    assert "Esteban et al., 2019" in methods_text({"data": {"mode": "fmriprep"}}, {})


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
                                              ("meta", "z", "logpfwe", False)):
            stat_img, logp_img = blob_maps(blobs, signed_logp=signed)
            folder = root / ("group/pooled" if kind == "pooled" else "meta")
            folder.mkdir(parents=True, exist_ok=True)
            paths = {s: str(folder / map_name(f"{kind}_network-{net}", s))
                     for s in (stat, logp_name)}
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
            "network": net, "cluster_id": [1], "direction": ["MS<HC"], "size_vox": [30],
            "size_mm3": [1920.0], "peak_x": [-8.0], "peak_y": [-52.0], "peak_z": [28.0],
            "peak_zstat": [-5.7], "peak_g": [-0.3], "peak_p_fwe": [0.001],
            "cluster_p_fwe": [0.01], "significant": [True],
            "label": ["Left Cingulate Gyrus, posterior division"]}),
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
    return re.findall(r'<img [^>]*src="data:image/svg\+xml;base64,([^"]*)"', text)


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
        assert b"<svg" in base64.b64decode(data, validate=True)[:2000]
    assert not re.search(r'(src|href)="https?://', text)  # self-contained
    assert not re.search(r'(src|href)="(?!data:|#)', text)  # no link to another file
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
    # coordinates: msnet's representative ones, said so; the reference meta-analysis cited
    assert "msnet coordinate (MNI; not published)" in text and "published MNI" not in text
    assert "representative MNI coordinate msnet chose" in text
    assert "Disrupted and reorganized connectivity of brain networks in multiple sclerosis" in text
    # meta cluster tables show their z as z (the TSV's peak_zstat), pooled ones as t
    assert '<th title="peak_zstat">Peak z</th>' in text
    assert '<th title="peak_t">Peak t</th>' in text
    # citations.bib: every work of the reference list, with DOIs
    bib = (tmp_path / "citations.bib").read_text()
    assert out["citations"] == str(tmp_path / "citations.bib")
    refs = re.findall(r"<h3>References</h3><ol>(.*?)</ol>", text)[0].count("<li>")
    assert bib.count("@") == refs and "doi = {10.1016/j.neuroimage.2019.116290}" in bib


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """The report of :func:`make_results` (maps for DMN and SN): its HTML text."""
    root = tmp_path_factory.mktemp("full_report")
    written = make_results(root)
    inputs = report_inputs(root, STUDIES, written["subject_qc"], ("DMN", "SN"),
                           written["excluded_inputs"])
    build_report({"seed": 1}, inputs, root / "report.html", root / "figures")
    return (root / "report.html").read_text()


def html_tables(text):
    """Every ``<table>`` of a page as (headers, rows of cell texts), tags stripped."""
    def strip(cell):
        return html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
    out = []
    for table in re.findall(r"<table.*?</table>", text, flags=re.S):
        heads = [strip(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", table, flags=re.S)]
        rows = [[strip(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)]
                for row in re.findall(r"<tbody>.*?</tbody>", table, flags=re.S)[0].split("<tr>")
                if "<td" in row] if "<tbody>" in table else []
        out.append((heads, rows))
    return out


@pytest.mark.slow
def test_report_tables_are_for_people(full_report):
    tables = html_tables(full_report)
    assert len(tables) > 10
    headers = [h for heads, _ in tables for h in heads]
    assert not [h for h in headers if "_" in h]  # human headers, not snake_case
    assert "Hedges' g" in headers and "FDR q" in headers and "Exclusion reason" in headers
    p_heads = {"p", "FDR q", "Permutation p", "Q p", "Peak FWE p", "Cluster FWE p"}
    n_p = 0
    for heads, rows in tables:
        if len(heads) != len(rows[0]) if rows else True:
            continue
        for col, head in enumerate(heads):
            cells = [r[col] for r in rows]
            if head in p_heads:  # p-values: "< 0.001" or three decimals
                n_p += len(cells)
                assert all(re.fullmatch(r"< 0\.001|[01]\.\d{3}|\u2013", c) for c in cells), \
                    (head, cells)
            if head in ("Hedges' g", "95% CI low", "95% CI high"):
                assert all(re.fullmatch(r"-?\d+\.\d{2}|\u2013", c) for c in cells), (head, cells)
    assert n_p > 20
    cells = [c for _, rows in tables for r in rows for c in r]
    assert "< 0.001" in cells
    # rounded: at most 3 significant digits after the decimal point, nothing like 0.79858164
    assert not [c for c in cells if re.fullmatch(r"-?\d+\.0*[1-9]\d{3,}", c)]
    assert "within_DMN" not in cells and "DMN (within)" in cells
    # no scroll box hides rows; every row of the QC table is in the page; print stylesheet
    assert 'class="scroll"' not in full_report and "max-height" not in full_report
    assert "@media print" in full_report
    excluded = [t for t in tables if "Exclusion reason" in t[0]]
    assert excluded and excluded[0][1][0][-1].startswith("mean FD 0.700 mm")


@pytest.mark.slow
def test_report_figures_are_embedded_svgs(full_report):
    images = re.findall(r'<img [^>]*>', full_report)
    assert images
    for tag in images:
        width = re.search(r'width="(\d+)"', tag)
        data = re.search(r'src="data:image/svg\+xml;base64,([^"]*)"', tag)
        assert width and data, tag[:200]
        svg = base64.b64decode(data.group(1)).decode()
        view = float(re.search(r'viewBox="0 0 ([0-9.]+) ', svg).group(1))
        assert abs(float(width.group(1)) - view * 4 / 3) <= 1  # shown at its natural size
    # nothing refers to another file: the page works when moved alone
    assert not re.search(r'(src|href)="(?!data:|#)', full_report)


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


# --------------------------------------------------------------------------- conclusions


def _metareg_rows(duration_p, edss_p, q=None):
    """Meta-regression rows in the meta stage's format for two metrics (single and joint)."""
    rows = []
    for metric in ("within_DMN", "between_SMN_VN"):
        for model, mods in (("single:duration", ["duration"]), ("single:edss", ["edss"]),
                            ("single:t2lv", ["t2lv"]), ("joint", ["duration", "edss", "t2lv"])):
            for mod in ["intercept", *mods]:
                p = {"duration": duration_p, "edss": edss_p, "t2lv": 0.01}.get(mod, 0.5)
                rows.append({"metric": metric, "model": model, "moderator": mod, "k": 25,
                             "beta": 0.1, "p": p, "p_perm": p})
    table = pd.DataFrame(rows)
    if q is not None:
        table["q_fdr"] = q(table)
    return table


def _conclusions(tmp_path, clinical_q, metareg, config=None):
    from msnet.report import _Report

    write_tsv(pd.DataFrame({
        "study_id": "pooled", "metric": "within_DMN", "kind": "within",
        "variable": ["disease_duration", "edss", "t2lv"], "method": "MixedLM", "n": 40,
        "beta": 0.02, "se": 0.01, "p": [0.03, 0.2, 0.4], "q_fdr": clinical_q,
        "status": "ok"}), tmp_path / "clinical.tsv")
    write_tsv(metareg, tmp_path / "metareg.tsv")
    rep = _Report(config or {}, {"clinical_table": str(tmp_path / "clinical.tsv"),
                                 "meta_tables": {"metaregression": str(tmp_path / "metareg.tsv")}},
                  tmp_path / "figures", tmp_path)
    return rep, rep.clinical(), rep.meta_regression()


def _verdicts(section):
    return re.findall(r'<p class="verdict">(.*?)</p>', section)


def test_uncorrected_moderator_hits_do_not_overturn_the_null(tmp_path):
    """About 5 of 80 uncorrected p < 0.05 is chance: both sections keep the null."""
    # 2 metrics x 7 slopes; duration and t2lv p = 0.01-0.04 uncorrected, none FDR-significant
    reg = _metareg_rows(0.04, 0.3)
    reg.loc[reg["moderator"] == "t2lv", ["p", "p_perm"]] = 0.045
    rep, clinical, metareg = _conclusions(tmp_path, [0.09, 0.3, 0.4], reg)
    assert "q_fdr" in rep.meta["metaregression"]  # computed for a table written without it
    (v1,), (v2,) = _verdicts(clinical), _verdicts(metareg)
    assert v1 == v2 and "null for disease duration and EDSS: reproduced" in v1
    assert "NOT reproduced" not in clinical + metareg
    assert "not evidence of an association" in metareg
    assert "expected by chance" in metareg
    # the same metric ~ moderator from two models is told apart
    assert "between_SMN_VN ~ T2 lesion volume (single-moderator model" in metareg
    assert "between_SMN_VN ~ T2 lesion volume (joint model" in metareg
    assert "published null" in _verdicts(clinical)[0] and "planted no association" in v1


def test_a_corrected_association_overturns_the_null_in_both_sections(tmp_path):
    from msnet.meta import metaregression_fdr

    reg = _metareg_rows(0.5, 0.0005, q=metaregression_fdr)
    _, clinical, metareg = _conclusions(tmp_path, [0.5, 0.6, 0.7], reg,
                                        {"data": {"mode": "fmriprep"}})
    (v1,), (v2,) = _verdicts(clinical), _verdicts(metareg)
    assert v1 == v2 and "NOT reproduced" in v1
    assert "across studies, within_DMN ~ EDSS (single-moderator model" in v1
    assert "planted" not in v1  # real data: no ground truth to quote
    # and a subject-level one, with the study level null
    _, clinical, metareg = _conclusions(tmp_path, [0.01, 0.6, 0.7], _metareg_rows(0.5, 0.5))
    (v1,), (v2,) = _verdicts(clinical), _verdicts(metareg)
    assert v1 == v2 and "NOT reproduced" in v1
    assert "within MS, within_DMN ~ disease duration" in v1


def test_report_methods_use_the_options_the_outputs_record(tmp_path):
    """The subject QC file and the meta table, not the config, decide the methods text."""
    from msnet.report import _Report

    qc = json.loads(Path(write_qc(tmp_path, "A", "01")).read_text())
    qc.update(connectivity={"stage2_units": "standardized", "max_vif": 7.0},
              qc_thresholds={"max_mean_fd": 0.2, "max_pct_censored": 25.0,
                             "min_minutes_kept": 5.0, "max_pct_flat_voxels": 2.0})
    path = tmp_path / "qc.json"
    path.write_text(json.dumps(qc))
    write_tsv(pd.DataFrame({"metric": ["within_DMN", "within_SN"], "model": ["random", "fixed"],
                            "method": ["DL", "FE"], "test": ["knha", "knha"]}),
              tmp_path / "networks.tsv")
    config = {"connectivity": {"stage2_units": "psc"}, "meta": {"method": "REML"}}
    rep = _Report(config, {"subject_qc": str(path),
                           "meta_tables": {"networks": str(tmp_path / "networks.tsv")}},
                  tmp_path, tmp_path)
    text = rep.methods_text()
    assert "partial standardised regression coefficients" in text
    assert "% signal change" not in text
    assert "mean FD > 0.2 mm" in text and "coefficient > 7" in text and "more than 2%" in text
    assert "DerSimonian-Laird" in text and "Knapp-Hartung t tests" in text
    assert "REML" not in text


def test_exclusions_by_rule_counts_each_rule():
    from msnet.report import exclusions_by_rule

    qc = pd.DataFrame({"include": [False, False, False, True, False], "exclusion_reason": [
        "dual regression ill-conditioned: VIF DMN = 31 > connectivity.max_vif 10 (...)",
        "mean FD 0.700 mm > max_mean_fd 0.5 mm; 40.0 % of volumes censored > "
        "max_pct_censored 30.0 %",
        "dual regression ill-conditioned: VIF SN = 12 > connectivity.max_vif 10 (...)",
        None, "no signal: the BOLD is constant over time"]})
    table = exclusions_by_rule(qc).set_index("rule")["excluded"]
    assert table.iloc[0] == 2 and "VIF" in table.index[0]
    assert table["mean FD (qc.max_mean_fd)"] == 1 and table["no signal"] == 1
    assert table["censored volumes (qc.max_pct_censored)"] == 1 and table.sum() == 5


def test_null_not_assessed_when_no_model_could_be_fitted(tmp_path):
    reg = _metareg_rows(np.nan, np.nan)
    reg["p"] = reg["p_perm"] = np.nan
    _, clinical, metareg = _conclusions(tmp_path, [np.nan] * 3, reg)
    (v1,), (v2,) = _verdicts(clinical), _verdicts(metareg)
    assert v1 == v2 and "not assessed" in v1 and "reproduced" not in v1
    assert "no meta-regression on study means could be fitted" in v1
