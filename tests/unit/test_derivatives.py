"""msnet.derivatives: dataset description, config hash, column dictionaries, map sidecars."""

import json

import pandas as pd
import pytest
import yaml

from msnet import __version__
from msnet.config import validate_config
from msnet.derivatives import (ATLAS_COLUMNS, COLUMNS, config_hash, dataset_description,
                               describe_derivatives, entities, map_sidecar, sidecar_path,
                               write_table)


def test_config_hash_changes_with_any_setting_and_not_with_key_order():
    config = validate_config({})
    changed = validate_config({"meta": {"alpha": 0.01}})
    assert config_hash(config) != config_hash(changed)
    assert config_hash(config) == config_hash(dict(reversed(list(config.items()))))
    # the folder is not a setting: the same settings elsewhere give the same files
    assert config_hash(config) == config_hash({**config, "results_dir": "/elsewhere"})


def test_dataset_description_is_a_bids_derivative_with_version_and_config_hash(tmp_path):
    config = validate_config({"results_dir": str(tmp_path)})
    out = {"description": tmp_path / "dataset_description.json",
           "config": tmp_path / "code" / "config.yaml",
           "atlas": tmp_path / "atlas" / "atlas-Seitzman300_dseg.tsv"}
    describe_derivatives(config, out)
    desc = json.loads(out["description"].read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"].startswith("1.")
    assert desc["Name"]
    (generated,) = desc["GeneratedBy"]
    assert generated["Name"] == "msnet" and generated["Version"] == __version__
    # the snapshot is the resolved config, and its hash is the one recorded
    snapshot = yaml.safe_load(out["config"].read_text())
    assert snapshot == config
    assert generated["ConfigHash"] == f"sha256:{config_hash(snapshot)}"
    atlas = pd.read_csv(out["atlas"], sep="\t")
    assert list(atlas["index"]) == list(range(1, 301)) and atlas["name"].iloc[0] == "ROI001"
    side = json.loads(sidecar_path(out["atlas"]).read_text())
    assert set(atlas.columns) <= set(side) and set(ATLAS_COLUMNS) == set(atlas.columns)


def test_real_data_names_its_source_datasets(tmp_path):
    desc = dataset_description(validate_config({}), [str(tmp_path / "fmriprep")])
    assert desc["SourceDatasets"] == [{"URL": (tmp_path / "fmriprep").as_uri()}]


def test_table_sidecar_describes_every_column(tmp_path):
    path = tmp_path / "study-S01_desc-MSvsHC_networks.tsv"
    write_table(pd.DataFrame({"metric": ["within_DMN"], "g": [0.3], "group": ["MS"]}), path)
    side = json.loads(sidecar_path(path).read_text())
    assert side["g"]["Units"] == "Hedges g" and set(side["group"]["Levels"]) == {"MS", "HC"}
    assert all(set(v) <= {"Description", "Units", "Levels"} and v["Description"]
               for v in COLUMNS.values())


@pytest.mark.parametrize("name, units, correction", [
    ("pooled_network-DMN_stat-logpfwe_map.nii.gz", "signed -log10(p)", "family-wise"),
    ("meta_network-SN_stat-fdrq_map.nii.gz", "q", "false discovery"),
    ("study-S01_network-VN_stat-g_map.nii.gz", "Hedges g", None),
])
def test_map_sidecar_states_statistic_units_contrast_and_correction(name, units, correction):
    side = map_sidecar(name)
    assert side["Units"] == units and side["Contrast"] == "MS - HC"
    assert side["Network"] == name.split("network-")[1].split("_")[0]
    if correction:
        assert side["MultipleComparisonCorrection"].startswith(correction)


def test_entity_values_must_be_alphanumeric():
    assert entities("meta_network-DMN_mod-age_stat-logpperm_map.nii.gz") == {
        "network": "DMN", "mod": "age", "stat": "logpperm"}
    with pytest.raises(ValueError, match="'fwe' is not a key-value entity"):
        entities("meta_network-DMN_stat-logp_fwe_map.nii.gz")
