"""Per-subject QC pages (msnet.qcpage): written by the subject stage for included, excluded
and unprocessable subjects, with the decision, the censored volumes, the carpets and the four
network maps; linked from the report's QC tables; switched by qc.subject_pages."""

from __future__ import annotations

import base64
import html
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from test_denoise import NO_QC, SPACE, write_subject
from test_report import write_qc

from msnet import ANALYSIS_NETWORKS
from msnet.connectivity import compute_subject_connectivity
from msnet.errors import MsnetInputError
from msnet.io.plan import study_qc_table, subject_outputs
from msnet.qc import resolve_qc_options, summarise_study_qc
from msnet.qcpage import carpet_voxels, png_bytes


def run_subject(root, qc_options=None, denoise_options=None, **kwargs):
    write_subject(root, **kwargs)
    paths = subject_outputs(root / "out", "S", "01", page=True)
    compute_subject_connectivity(root, "sub-01", paths, space=SPACE,
                                 qc_options=NO_QC if qc_options is None else qc_options,
                                 denoise_options=denoise_options, study_id="S",
                                 connectivity_options={"max_vif": None})  # a 16-voxel grid
    qc = json.loads(open(paths["qc"]).read())
    return qc, open(paths["page"], encoding="ascii").read()


def n_censored(qc) -> int:
    return qc["n_volumes"] - qc["n_dummy"] - qc["n_kept"]


def pngs(page) -> list:
    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(data)))
            for data in re.findall(r'href="data:image/png;base64,([^"]+)"', page)]


def test_included_subject_page_shows_decision_censoring_carpets_and_networks(tmp_path):
    qc, page = run_subject(tmp_path, fd_spikes=(20, 45, 59), dvars_spikes=(40,))
    assert qc["include"] is True
    assert '<p id="decision" class="decision include"><strong>Included</strong>' in page
    assert n_censored(qc) > 3  # scrub: 5 removes short segments around the spikes
    assert page.count('class="censored"') == n_censored(qc)
    assert page.count('class="dummy"') == qc["n_dummy"] == 1
    assert f'data-n-censored="{n_censored(qc)}"' in page
    marked = sorted(int(v) for v in re.findall(r'class="censored" data-volume="(\d+)"', page))
    assert {20, 45, 59} <= set(marked) and 0 not in marked
    for net in ANALYSIS_NETWORKS:
        assert page.count(f'data-network="{net}"') == 1
    assert page.count('class="carpet"') == 2 and "Before denoising" in page
    assert "After denoising" in page
    images = pngs(page)
    carpet = images[0]
    assert carpet.size == (qc["n_volumes"], len(carpet_voxels(qc["n_voxels"])))
    assert all(im.size[0] > 0 for im in images)  # every PNG decodes
    assert len(re.findall(r'class="threshold"', page)) == 2  # FD and std DVARS limits


def test_excluded_subject_page_states_the_reason(tmp_path):
    qc, page = run_subject(tmp_path, qc_options={**NO_QC, "max_mean_fd": 0.01})
    assert qc["include"] is False and "max_mean_fd" in qc["exclusion_reason"]
    decision = re.search(r'<p id="decision" class="decision exclude">(.*?)</p>', page).group(1)
    assert "Excluded:" in decision
    assert html.escape(qc["exclusion_reason"]) in decision
    for net in ANALYSIS_NETWORKS:
        assert f'data-network="{net}"' in page


def test_unprocessable_subject_still_gets_its_page(tmp_path):
    qc, page = run_subject(tmp_path, qc_options={}, denoise_options={"scrub": 0},
                           fd_spikes=tuple(range(1, 80)))
    assert qc["include"] is False and "cannot be processed" in qc["exclusion_reason"]
    assert "cannot be processed" in page
    assert page.count('class="censored"') == n_censored(qc) == 79
    for net in ANALYSIS_NETWORKS:
        assert f'data-network="{net}"' in page


@pytest.mark.parametrize("width", [1, 7, 8])
def test_png_encoder_round_trips(width):
    from PIL import Image

    rng = np.random.default_rng(width)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (5, width), dtype=np.uint8)
    im = Image.open(io.BytesIO(png_bytes(index, palette))).convert("RGB")
    np.testing.assert_array_equal(np.asarray(im), palette[index])
    rgb = rng.integers(0, 256, (3, width, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(rgb)))), rgb)


def test_subject_pages_switch():
    from msnet.config import validate_config

    assert validate_config({})["qc"]["subject_pages"] is True
    assert "page" not in subject_outputs("r", "S", "01")
    assert subject_outputs("r", "S", "01", page=True)["page"] == \
        "r/subjects/study-S/sub-01/sub-01_qc.html"
    assert "subject_pages" not in resolve_qc_options({"subject_pages": False})  # no threshold
    with pytest.raises(MsnetInputError, match="qc.subject_pages"):
        resolve_qc_options({"subject_pages": "yes"})


@pytest.mark.parametrize("enabled", [True, False])
def test_report_qc_tables_link_each_subject_to_its_page(tmp_path, enabled):
    from msnet.report import _Report

    jsons = [write_qc(tmp_path, "A", "01"), write_qc(tmp_path, "A", "02", False, 0.9, "motion"),
             write_qc(tmp_path, "A", "03")]
    for label in ("01", "02"):  # sub-03 has no page: no link, not a broken one
        (tmp_path / "subjects" / "study-A" / f"sub-{label}" / f"sub-{label}_qc.html").write_text("")
    part = tmp_path / "participants.tsv"
    pd.DataFrame({"participant_id": ["sub-01", "sub-02", "sub-03"],
                  "group": ["MS", "HC", "HC"]}).to_csv(part, sep="\t", index=False)
    summarise_study_qc(jsons, part, "A", study_qc_table(tmp_path, "A"))
    rep = _Report({"qc": {"subject_pages": enabled}}, {"qc": [study_qc_table(tmp_path, "A")]},
                  tmp_path / "figures", tmp_path)
    section = rep.dataset_qc()
    links = re.findall(r'<a href="([^"]+)">(sub-\d+)</a>', section)
    if not enabled:
        assert links == []
        return
    # the per-subject table links sub-01 and sub-02, the excluded table sub-02
    assert sorted(links) == sorted([
        ("subjects/study-A/sub-01/sub-01_qc.html", "sub-01"),
        ("subjects/study-A/sub-02/sub-02_qc.html", "sub-02"),
        ("subjects/study-A/sub-02/sub-02_qc.html", "sub-02")])
    assert all((tmp_path / href).is_file() for href, _ in links)
