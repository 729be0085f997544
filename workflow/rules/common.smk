"""Paths and helpers shared by all rules (no science here)."""

import msnet
from msnet.resources import rule_resource, workload

R = config["results_dir"]
NETWORKS = list(msnet.ANALYSIS_NETWORKS)
STUDIES = list(PLAN.studies["study_id"])
# Built once: rule definitions and input functions look studies up thousands of times.
STUDY_ROWS = PLAN.studies.set_index("study_id", drop=False).to_dict("index")
SIMULATE = config["data"]["mode"] == "simulate"
WORKLOAD = workload(config, PLAN)
ALL_TARGETS = []


def resources_for(rule_name, key, n_subjects=None):
    """A rule's threads, mem_mb or runtime (config `resources`, else estimated)."""
    return rule_resource(config, rule_name, key, WORKLOAD, n_subjects)
