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
from msnet.io.plan import build_plan, subject_chunks
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
    config = load_config(REPO / "config.yaml")
    plan = build_plan(config)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M))
    chunks = subject_chunks(plan.subjects, config["resources"]["subjects_per_job"])
    subject_jobs = {k for k in counts if k.startswith("compute_subject_connectivity_")}
    assert subject_jobs == {f"compute_subject_connectivity_{c}" for c, _ in chunks}
    assert sum(len(rows) for _, rows in chunks) == len(plan.subjects)
    assert len(chunks) < len(plan.subjects) / 5  # start-up amortised over several subjects
    assert int(counts["summarise_study_qc"]) == 25
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
def test_tiny_workflow_runs_end_to_end(tiny_workflow):
    """Three small studies through every stage, ending with a complete report."""
    proc = tiny_workflow["proc"]  # conftest: snakemake --cores 2 on TINY_CONFIG
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = tiny_workflow["results"]
    html = (results / "report.html").read_text()
    for section_id, _ in SECTIONS:
        assert f'id="{section_id}"' in html, section_id
    images = re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', html)  # figures: SVG
    assert len(images) >= 10
    assert all(b"<svg" in base64.b64decode(img)[:2000] for img in images)
    assert "http://" not in html.replace("http://www.w3.org", "")
    assert len(list((results / "subjects").glob("study-*/sub-*/*_qc.json"))) == 18
    assert (results / "meta" / "meta_desc-networks_stats.tsv").stat().st_size > 0
    assert (results / "report_desc-published_comparison.tsv").stat().st_size > 0
