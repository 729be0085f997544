"""The tiny workflow run's results folder as a BIDS-derivatives dataset (msnet.derivatives):
dataset_description.json with the config hash, every entity value alphanumeric, every table
column described, every map with units. Reuses the shared tiny run (conftest.tiny_workflow)."""

import json
import subprocess

import pandas as pd
import pytest
import yaml

from msnet.derivatives import ATLAS_FILE, ATLAS_URI, config_hash, entities, sidecar_path

pytestmark = [pytest.mark.workflow, pytest.mark.slow]
BOOKKEEPING = ("logs", "benchmarks")  # Snakemake's own files


def _outputs(results, pattern):
    return [p for p in sorted(results.rglob(pattern))
            if p.relative_to(results).parts[0] not in BOOKKEEPING]


@pytest.fixture(scope="module")
def results(tiny_workflow):
    assert tiny_workflow["proc"].returncode == 0, tiny_workflow["proc"].stderr[-3000:]
    return tiny_workflow["results"]


def test_dataset_description_records_version_and_the_config_hash(results):
    desc = json.loads((results / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"]
    (generated,) = desc["GeneratedBy"]
    assert generated["Name"] == "msnet" and generated["Version"]
    snapshot = yaml.safe_load((results / "code" / "config.yaml").read_text())
    assert snapshot["results_dir"] == str(results) and snapshot["meta"]["n_permutations"] == 50
    assert generated["ConfigHash"] == f"sha256:{config_hash(snapshot)}"


def test_a_changed_config_rewrites_the_description(tiny_workflow, tmp_path):
    """The config hash is a param of the rule, so Snakemake re-runs it when the config changes."""
    workdir = tiny_workflow["workdir"]
    changed = yaml.safe_load((workdir / "tiny.yaml").read_text())
    changed["report"] = {"radius_mm": 11.0}
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    base = tiny_workflow["command"]
    proc = subprocess.run([*base[:-1], str(tmp_path / "changed.yaml"), "-n"], cwd=workdir,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "describe_derivatives" in proc.stdout
    same = subprocess.run([*base, "-n"], cwd=workdir, capture_output=True, text=True,
                          timeout=600)
    assert "describe_derivatives" not in same.stdout, same.stdout[-2000:]


def test_every_entity_value_of_every_output_is_alphanumeric(results):
    names = [p for p in _outputs(results, "*") if p.is_file()]
    assert len(names) > 300
    bad = []
    for path in names:
        try:
            entities(path)
        except ValueError as exc:
            bad.append(str(exc))
    assert not bad, bad[:10]


def test_every_column_of_every_table_is_described(results):
    atlas = pd.read_csv(results / ATLAS_FILE, sep="\t")
    atlas_names = set(atlas["name"])
    undescribed = {}
    tables = [p for p in _outputs(results, "*.tsv") if p.relative_to(results).parts[0] != "simulated"]
    assert len(tables) > 60
    for tsv in tables:
        side_path = sidecar_path(tsv)
        assert side_path.exists(), f"{tsv} has no JSON sidecar"
        side = json.loads(side_path.read_text())
        columns = pd.read_csv(tsv, sep="\t", nrows=0).columns
        for col in columns:
            entry = side.get(col)
            by_atlas = side.get("Atlas") == ATLAS_URI and col in atlas_names
            if not by_atlas and not (isinstance(entry, dict) and entry.get("Description")
                                     and not entry["Description"].startswith("n/a")):
                undescribed.setdefault(col, tsv.name)
    assert not undescribed, f"add these to msnet.derivatives.COLUMNS: {undescribed}"


def test_every_map_has_a_sidecar_with_units_and_subject_sidecars_reference_the_atlas(results):
    maps = [p for p in _outputs(results, "*.nii.gz")
            if p.relative_to(results).parts[0] != "simulated"]
    assert len(maps) > 100
    for path in maps:
        side = json.loads(sidecar_path(path).read_text())
        assert side.get("Units"), path
        assert side.get("Description"), path
        # BIDS derivatives: every image in a template space names it (the run's space)
        assert entities(path).get("space") == "MNI152NLin2009cAsym", path
        assert side["CoordinateSystem"] == "MNI152NLin2009cAsym (mm)", path
    for side_path in _outputs(results, "*_atlas-Seitzman300_relmat.json"):
        side = json.loads(side_path.read_text())
        assert side["Atlas"] == ATLAS_URI and "ROI001" not in side
        assert side_path.stat().st_size < 6000  # no 300-ROI atlas repeated per subject
