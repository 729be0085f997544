"""Real Snakemake runs: the dry run of the demo and a tiny end-to-end run."""

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from msnet.config import load_config
from msnet.io.plan import build_plan
from msnet.report import SECTIONS

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))


def _snakemake(*args, cwd=REPO, timeout=1500):
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_plans_every_subject_of_the_demo():
    """`snakemake -n` knows all studies and subjects without running the simulation."""
    proc = _snakemake("-n", "--config", "results_dir=/nonexistent-msnet-dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = build_plan(load_config(REPO / "config.yaml"))
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M))
    assert int(counts["compute_subject_connectivity"]) == len(plan.subjects)
    assert int(counts["simulate_study"]) == 25
    assert int(counts["compare_groups_study"]) == 25
    assert int(counts["build_report"]) == 1


def test_bad_config_stops_before_any_job_with_one_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"simulate": {"tr": -1}}))
    proc = _snakemake("-n", "--configfile", str(bad))
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr  # snakemake prints workflow errors on stdout
    assert "simulate.tr" in output and "-1" in output
    assert "Traceback" not in output


@pytest.mark.workflow
@pytest.mark.slow
def test_tiny_workflow_runs_end_to_end(tmp_path):
    """Three small studies through every stage, ending with a complete report."""
    config = {
        "results_dir": str(tmp_path / "results"),
        "simulate": {"n_studies": 3, "min_per_group": 3, "resolution_mm": 8},
        "group": {"n_permutations": 50},
        "clinical": {"n_permutations": 50},
        "meta": {"n_permutations": 50},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = _snakemake("--cores", "2", "--configfile", str(path))
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = tmp_path / "results"
    html = (results / "report.html").read_text()
    for section_id, _ in SECTIONS:
        assert f'id="{section_id}"' in html, section_id
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 10
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "http://" not in html.replace("http://www.w3.org", "")
    assert len(list((results / "subjects").glob("study-*/sub-*/*_qc.json"))) == 18
    assert (results / "meta" / "meta_desc-networks_stats.tsv").stat().st_size > 0
    assert (results / "report_desc-published_comparison.tsv").stat().st_size > 0
