"""Acceptance on a reduced simulation: planted effects found, the clinical null kept."""

import json

import numpy as np
import pandas as pd
import pytest

from msnet import ANALYSIS_NETWORKS
from msnet.atlas import published_findings
from msnet.report import compare_with_published

pytestmark = pytest.mark.slow


def _comparison(run, analysis):
    key = "t" if analysis == "pooled" else "z"
    return pd.concat([compare_with_published(run[analysis][n][key], run[analysis][n]["logp"], n)
                      for n in ANALYSIS_NETWORKS], ignore_index=True)


def test_subject_stage_runs_for_every_subject_and_excludes_high_motion(null_clinical_run):
    records = [json.loads(open(p).read()) for p in null_clinical_run["qc"]]
    assert all("include" in r for r in records)
    assert 0.7 < np.mean([r["include"] for r in records]) < 1.0
    moved = [r for r in records if r["mean_fd"] and r["mean_fd"] > 0.5]
    assert moved and not any(r["include"] for r in moved)


@pytest.mark.parametrize("analysis", ["pooled", "meta"])
def test_every_planted_finding_is_recovered(null_clinical_run, analysis):
    """Each published location: an FWE-significant peak of the published sign within 12 mm."""
    table = _comparison(null_clinical_run, analysis)
    assert len(table) == len(published_findings())
    missed = table.loc[~table["found"], ["finding", "note"]]
    assert missed.empty, missed.to_string()
    assert (table["distance_mm"] <= 12).all()
    assert (np.sign(table["statistic"]) == np.where(table["direction"] == "MS>HC", 1, -1)).all()


def test_null_clinical_association_is_not_significant(null_clinical_run):
    table = pd.read_csv(null_clinical_run["clinical"], sep="\t")
    tested = table[table["variable"].isin(["edss", "disease_duration"])]
    assert len(tested) and not (tested["q_fdr"] < 0.05).any()
    metareg = pd.read_csv(null_clinical_run["meta_tables"]["metaregression"], sep="\t")
    clinical = metareg[metareg["moderator"].isin(["duration", "edss"])]
    assert len(clinical) and not (clinical["p"] < 0.05 / len(clinical)).any()


def test_planted_edss_slope_is_detected_with_its_sign(planted_clinical_run):
    table = pd.read_csv(planted_clinical_run["clinical"], sep="\t")
    within = table[(table["variable"] == "edss") & (table["kind"] == "within")]
    assert (within["q_fdr"] < 0.05).all(), within[["metric", "beta", "p", "q_fdr"]]
    assert (within["beta"] > 0).all()
