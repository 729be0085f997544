"""Tests of msnet.plotting: every figure is written as non-empty PNG and SVG, also from
empty or degenerate inputs, and the same input gives the same bytes."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msnet import ANALYSIS_NETWORKS
from msnet import plotting

AFFINE = np.array([[6.0, 0, 0, -72], [0, 6.0, 0, -108], [0, 0, 6.0, -48], [0, 0, 0, 1]])
SHAPE = (25, 31, 23)  # 6 mm grid over the MNI brain's bounding box


def assert_written(paths, stem):
    assert set(paths) == {"png", "svg"}
    assert paths["png"] == f"{stem}.png" and paths["svg"] == f"{stem}.svg"
    png, svg = Path(paths["png"]).read_bytes(), Path(paths["svg"]).read_text()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    assert not list(Path(stem).parent.glob(".*"))  # no temporary file left behind
    return svg


def maps(amplitude):
    """A t map with one positive blob at the right angular gyrus and its -log10 p map."""
    ijk = np.indices(SHAPE).reshape(3, -1).T
    xyz = ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    t = amplitude * np.exp(-np.sum((xyz - [48, -58, 34]) ** 2, axis=1) / 72.0)
    t = t.reshape(SHAPE).astype(np.float32)
    logp = np.where(np.abs(t) > 3, 2.5, 0.2).astype(np.float32) * np.sign(t)
    return nib.Nifti1Image(t, AFFINE), nib.Nifti1Image(logp, AFFINE)


def test_glass_brain_with_and_without_survivors(tmp_path):
    stem = tmp_path / "gb"
    svg = assert_written(plotting.plot_glass_brain(*maps(6.0), stem, "SN test", network="SN"),
                         stem)
    assert "voxels with FWE p &lt; 0.05" in svg
    assert "published MS &gt; HC" in svg and "published MS &lt; HC" in svg
    empty = tmp_path / "empty"
    svg = assert_written(plotting.plot_glass_brain(*maps(0.0), empty, "SN empty", network="SN",
                                                   stat_label="z"), empty)
    assert "no voxel survives FWE p &lt; 0.05" in svg
    z_map = tmp_path / "z"  # the colorbar says which statistic it shows
    svg = assert_written(plotting.plot_glass_brain(*maps(6.0), z_map, "z", stat_label="z"), z_map)
    assert re.search(r">z</text>", svg)
    weak = tmp_path / "weak"  # a blob that is not significant anywhere
    stat, _ = maps(6.0)
    logp = nib.Nifti1Image(np.full(SHAPE, 1.0, np.float32), AFFINE)  # p = 0.1 everywhere
    svg = assert_written(plotting.plot_glass_brain(stat, logp, weak, "weak"), weak)
    assert "no voxel survives" in svg


def study_table():
    rng = np.random.default_rng(1)
    rows = []
    for study in ["S01", "S02", "S03", "pooled"]:
        for net in ANALYSIS_NETWORKS:
            g = rng.normal(0.3, 0.2)
            rows.append({"study_id": study, "metric": f"within_{net}", "g": g,
                         "g_ci_low": g - 0.5, "g_ci_high": g + 0.5, "n_ms": 10, "n_hc": 8})
    rows[1]["g"] = np.nan  # an excluded study
    return pd.DataFrame(rows)


def test_study_effects(tmp_path):
    stem = tmp_path / "effects"
    svg = assert_written(plotting.plot_study_effects(study_table(), stem), stem)
    assert "pooled (mega)" in svg and "DMN (within-network FC)" in svg
    # the study without an estimate keeps its row, marked, and is named under the panels
    assert "no estimate" in svg and "S01 (SMN)" in svg
    assert_written(plotting.plot_study_effects(pd.DataFrame(
        columns=["study_id", "metric", "g"]), tmp_path / "none"), tmp_path / "none")


def forest_rows(k=5, excluded=1):
    rng = np.random.default_rng(2)
    g = rng.normal(0.4, 0.2, k)
    var = rng.uniform(0.02, 0.2, k)
    w = 1 / (var + 0.01)
    return pd.DataFrame({
        "metric": "within_DMN", "network": "DMN", "study": [f"S{i:02d}" for i in range(k)],
        "included": [True] * (k - excluded) + [False] * excluded,
        "exclusion_reason": [""] * (k - excluded) + ["g is not finite"] * excluded,
        "g": g, "var_g": var, "se": np.sqrt(var), "ci_low": g - 1.96 * np.sqrt(var),
        "ci_high": g + 1.96 * np.sqrt(var), "weight": 100 * w / w.sum()})


META_ROW = {"metric": "within_DMN", "model": "random", "method": "REML", "k": 4, "g": 0.38,
            "ci_low": 0.1, "ci_high": 0.66, "p": 0.01, "pi_low": -0.1, "pi_high": 0.86,
            "tau2": 0.01, "i2": 12.0, "q_p": 0.3}


def test_forest_and_funnel(tmp_path):
    svg = assert_written(plotting.plot_forest(forest_rows(), META_ROW, tmp_path / "f", "DMN"),
                         tmp_path / "f")
    assert "95% prediction interval" in svg and "(no valid effect size): S04" in svg
    svg = assert_written(plotting.plot_funnel(forest_rows(), pd.Series(META_ROW),
                                              {"p": 0.4321}, tmp_path / "u", "DMN"),
                         tmp_path / "u")
    assert "Egger p = 0.432" in svg
    nothing = forest_rows(k=2, excluded=2)
    assert_written(plotting.plot_forest(nothing, {}, tmp_path / "f0"), tmp_path / "f0")
    assert_written(plotting.plot_funnel(nothing, {}, None, tmp_path / "u0"), tmp_path / "u0")


def test_figures_are_byte_identical_when_redrawn(tmp_path):
    a = plotting.plot_forest(forest_rows(), META_ROW, tmp_path / "a")
    b = plotting.plot_forest(forest_rows(), META_ROW, tmp_path / "b")
    for ext in ("png", "svg"):
        assert Path(a[ext]).read_bytes() == Path(b[ext]).read_bytes()


def test_bubble(tmp_path):
    mods = pd.DataFrame({"study": [f"S{i:02d}" for i in range(5)],
                         "duration": [5.0, 7, 8, 10, 12], "edss": [2.0, 2.5, 3, 3.5, 4.0]})
    reg = pd.DataFrame({
        "metric": "within_DMN",
        "model": ["single:duration", "single:duration", "single:edss", "single:t2lv"],
        "moderator": ["intercept", "duration", "edss", "t2lv"],
        "beta": [0.2, 0.02, np.nan, np.nan], "p": [0.3, 0.6, np.nan, np.nan],
        "p_perm": [np.nan, 0.65, np.nan, np.nan],
        "warning": ["", "", "", "moderator 't2lv' available for 0 studies (< 3)"]})
    svg = assert_written(plotting.plot_bubble(forest_rows(), mods, reg, tmp_path / "b"),
                         tmp_path / "b")
    assert "β = 0.020" in svg and "not estimable" in svg and "available for 0" in svg
    assert_written(plotting.plot_bubble(forest_rows(), mods, pd.DataFrame(), tmp_path / "b0"),
                   tmp_path / "b0")


def test_clinical_scatter(tmp_path):
    rng = np.random.default_rng(3)
    frames = []
    for net in ("DMN", "SMN"):
        for var in ("disease_duration", "edss"):
            x = rng.normal(size=30)
            frames.append(pd.DataFrame({"metric": f"within_{net}", "variable": var,
                                        "x_resid": x, "y_resid": 0.2 * x + rng.normal(size=30)}))
    scatter = pd.concat(frames, ignore_index=True)
    table = pd.DataFrame({"metric": ["within_DMN"], "variable": ["edss"], "beta": [0.123],
                          "p": [0.045], "method": ["MixedLM"]})
    svg = assert_written(plotting.plot_clinical_scatter(scatter, tmp_path / "c", table),
                         tmp_path / "c")
    assert "β = 0.123" in svg and "MixedLM" in svg and "residual OLS" in svg
    assert "disease duration (residual, years)" in svg and "EDSS (residual, EDSS points)" in svg
    assert "FC (residual, Fisher z)" in svg
    assert_written(plotting.plot_clinical_scatter(scatter.iloc[:0], tmp_path / "c0"),
                   tmp_path / "c0")


@pytest.mark.parametrize("with_group", [True, False])
def test_qc_overview(tmp_path, with_group):
    rng = np.random.default_rng(4)
    n = 20
    table = pd.DataFrame({"study_id": np.repeat(["S01", "S02"], n // 2),
                          "participant_id": [f"sub-{i:02d}" for i in range(n)],
                          "include": [True] * (n - 2) + [False] * 2,
                          "mean_fd": rng.uniform(0.05, 0.3, n),
                          "pct_censored": rng.uniform(0, 20, n)})
    if with_group:
        table["group"] = ["MS", "HC"] * (n // 2)
    stem = tmp_path / "qc"
    svg = assert_written(plotting.plot_qc_overview(table, stem, {"max_mean_fd": 0.5}), stem)
    assert "QC limit 0.5" in svg
    assert_written(plotting.plot_qc_overview(table.iloc[:0], tmp_path / "qc0"), tmp_path / "qc0")


def min_font_px(svg: str, window_px: float = 1256.0) -> float:
    """Smallest text of an SVG in CSS px as the report shows it: at its natural size
    (1 pt = 4/3 px), shrunk only when wider than the content area of a 1,400-px window."""
    width = float(re.search(r'viewBox="0 0 ([0-9.]+) ', svg).group(1))
    shown = min(width * 4 / 3, window_px)
    sizes = [float(x) for x in re.findall(r"font-size: ?([0-9.]+)px", svg)]
    return min(sizes) * shown / width


def test_text_is_readable_at_the_displayed_size(tmp_path):
    """Text of at least 11.5 px where the report shows each figure (today's forest plot
    text was about 7 px, glass-brain ticks about 6 px)."""
    svgs = {
        "forest": plotting.plot_forest(forest_rows(), META_ROW, tmp_path / "f", "t"),
        "funnel": plotting.plot_funnel(forest_rows(), META_ROW, {"p": 0.2}, tmp_path / "u"),
        "effects": plotting.plot_study_effects(study_table(), tmp_path / "e"),
        "glass": plotting.plot_glass_brain(*maps(6.0), tmp_path / "g", "t", network="SN"),
    }
    for name, paths in svgs.items():
        svg = Path(paths["svg"]).read_text()
        assert min_font_px(svg) >= 11.5, name
        assert float(re.search(r'viewBox="0 0 ([0-9.]+) ', svg).group(1)) * 4 / 3 <= 1256, name
