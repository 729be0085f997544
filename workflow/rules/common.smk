"""Paths and helpers shared by all rules (no science here)."""

from pathlib import Path

import msnet

R = config["results_dir"]
NETWORKS = list(msnet.ANALYSIS_NETWORKS)
STUDIES = list(PLAN.studies["study_id"])
SIMULATE = config["data"]["mode"] == "simulate"
ALL_TARGETS = []


def resources_for(rule_name, key):
    """Resource (threads, mem_mb, runtime) of a rule from config `resources`."""
    return config["resources"][rule_name][key]
