"""Paths and helpers shared by all rules (no science here)."""

from pathlib import Path

import msnet

R = config["results_dir"]
NETWORKS = list(msnet.ANALYSIS_NETWORKS)
STUDIES = list(PLAN.studies["study_id"])
# Lookups built once: input functions run thousands of times at 2,410 subjects.
STUDY_ROWS = PLAN.studies.set_index("study_id", drop=False).to_dict("index")
SUBJECT_ROWS = {(r["study_id"], r["label"]): r for r in PLAN.subjects.to_dict("records")}
SIMULATE = config["data"]["mode"] == "simulate"
ALL_TARGETS = []


def resources_for(rule_name, key):
    """Resource (threads, mem_mb, runtime) of a rule from config `resources`."""
    return config["resources"][rule_name][key]
