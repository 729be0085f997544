"""The SLURM profile on a real SLURM cluster, run exactly as README.md says.

The tiny config goes through ``workflow/profiles/slurm`` with the README's command (plus
``--configfile``), from the repository folder. Checked: every job that is not a local rule
went through sbatch, group jobs included, and their number is what the DAG, the profile's
groups and the Snakefile's ``localrules`` give; SLURM accounting (``sacct``) shows every one
COMPLETED under the account passed on the command line; every result file equals, byte for
byte, the local ``snakemake --cores 2`` run of the same config (``tiny_workflow``), except
``logs/`` and ``benchmarks/`` (timings and log lines differ from run to run). Both runs write
to the same absolute path (the QC files name their BOLD file by its path), so nothing else
needs excluding.

Needs a reachable cluster with accounting: CI starts a single-node one from Debian's packages
with ``.ci/slurm_cluster.sh start`` (account ``msnet_ci``). Elsewhere the test is skipped when
``sinfo`` fails, unless ``MSNET_REQUIRE_SLURM=1`` (set by ``.ci/run`` once its cluster is up),
which turns the skip into a failure. ``MSNET_TEST_SLURM_ACCOUNT`` and
``MSNET_TEST_SLURM_PARTITION`` select another account or partition (defaults: ``msnet_ci``,
the cluster's default partition).
"""

import math
import os
import re
import shutil
import signal
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SNAKEMAKE

pytestmark = [pytest.mark.slurm, pytest.mark.workflow, pytest.mark.slow]

PROFILE = "workflow/profiles/slurm"  # relative to the repository folder, as in the README
EXCLUDED = ("logs", "benchmarks")
# Pending reasons that never resolve by waiting: the job asks for more than any node has,
# or for an account/partition it may not use. The run is stopped instead of hanging.
HOPELESS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "InvalidAccount",
            "InvalidQOS", "AssocGrpCpuLimit", "BadConstraints", "ReqNodeNotAvail")


def _cmd(*args, timeout=60):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")  # session: set up (and skip) before tiny_workflow's run
def cluster():
    """Account, partition and node size of the reachable cluster (or skip)."""
    why = None
    if shutil.which("sinfo") is None:
        why = "no SLURM client (sinfo not found)"
    else:
        try:
            proc = _cmd("sinfo", "-h", "-o", "%P", timeout=90)
        except subprocess.TimeoutExpired:
            why = "no SLURM cluster reachable (sinfo did not answer within 90 s)"
        else:
            if proc.returncode != 0:
                why = f"no SLURM cluster reachable (sinfo: {proc.stderr.strip()[:300]})"
    if why is None:
        try:
            import snakemake_executor_plugin_slurm  # noqa: F401
        except ImportError:
            why = 'snakemake-executor-plugin-slurm not installed (pip install -e ".[test]")'
    if why is not None:
        if os.environ.get("MSNET_REQUIRE_SLURM") == "1":
            pytest.fail(f"MSNET_REQUIRE_SLURM=1 but {why}")
        pytest.skip(f"{why}; start one as root with `.ci/slurm_cluster.sh start`")
    partitions = proc.stdout.split()
    default = next((p.rstrip("*") for p in partitions if p.endswith("*")), None)
    partition = os.environ.get("MSNET_TEST_SLURM_PARTITION") or default or partitions[0]
    nodes = _cmd("sinfo", "-h", "-N", "-p", partition, "-o", "%c|%m").stdout.split()
    return {
        "account": os.environ.get("MSNET_TEST_SLURM_ACCOUNT", "msnet_ci"),
        "partition": partition,
        "max_cpus": max(int(n.split("|")[0]) for n in nodes),
        "max_mem_mb": max(int(n.split("|")[1].rstrip("+")) for n in nodes),
    }


FAST_STATUS_CHECKS = ("--slurm-init-seconds-before-status-checks", "5",
                      "--seconds-between-status-checks", "5")
"""Status polling for seconds-long test jobs (not for production: see the README)."""


def readme_command(cluster, *extra):
    """The README's command (section "SLURM clusters") and `extra` arguments."""
    return [SNAKEMAKE, "--profile", PROFILE, "--default-resources",
            f"slurm_account={cluster['account']}", f"slurm_partition={cluster['partition']}",
            *extra]


def _run_id(log_text):
    found = re.search(r"SLURM run ID: (\S+)", log_text)
    return found.group(1) if found else None


def _hopeless_jobs(run_id):
    proc = _cmd("squeue", "-h", "--name", run_id, "-t", "PD", "-o", "%i|%r")
    rows = [line.split("|", 1) for line in proc.stdout.split()]
    return [(job, reason) for job, reason in rows if reason in HOPELESS]


def _stop(proc, run_id):
    """SIGINT (Snakemake then cancels its SLURM jobs); kill if it does not end; scancel."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if run_id:
        _cmd("scancel", "--name", run_id)


def run_watched(command, log_path: Path, timeout=1800) -> tuple:
    """Run `command` from the repository folder; stop it (and fail) when a job can never
    start or the timeout passes. Returns (return code, log text)."""
    run_id = None
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            time.sleep(5)
            run_id = run_id or _run_id(log_path.read_text())
            hopeless = _hopeless_jobs(run_id) if run_id else []
            if hopeless or time.monotonic() > deadline:
                _stop(proc, run_id)
                text = log_path.read_text()
                pytest.fail(f"SLURM jobs that can never start: {hopeless} (the profile asks "
                            f"for more than the node has)\n{text[-3000:]}" if hopeless else
                            f"no result within {timeout} s\n{text[-3000:]}")
    return proc.returncode, log_path.read_text()


def job_stats(log_text) -> dict:
    """Snakemake's "Job stats" table: rule -> number of jobs."""
    table = log_text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M)}


def local_rules() -> set:
    """Rule names of the workflow's `localrules:` directives (the Snakefile and its included
    rule files), on one line (`localrules: a, b`) or one name per indented line below
    (snakefmt's layout)."""
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    text = "\n".join(f.read_text() for f in files)
    names = set()
    directive = r"^([ \t]*)localrules:[ \t]*(.*)\n((?:\1[ \t]+\w+[ \t]*,?[ \t]*\n)*)"
    for found in re.finditer(directive, text, flags=re.M):
        names |= set(re.findall(r"\w+", found.group(2) + " " + found.group(3)))
    return names


def sacct_jobs(run_id, since) -> dict:
    """The run's SLURM jobs as accounting has them: job id -> fields."""
    fields = ["JobIDRaw", "State", "ExitCode", "Account", "Partition", "ReqCPUS", "ReqMem",
              "Elapsed", "Comment"]
    proc = _cmd("sacct", "-X", "-P", "-n", "--name", run_id, "--starttime", since,
                "--format=" + ",".join(fields))
    assert proc.returncode == 0, proc.stderr
    return {row[0]: dict(zip(fields, row)) for row in
            (line.split("|") for line in proc.stdout.splitlines() if line.strip())}


def _mem_mb(req_mem: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)([KMGT]?)[nc]?", req_mem).groups()
    return float(value) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2, "": 1}[unit]


def _result_files(results: Path) -> dict:
    return {p.relative_to(results).as_posix(): p for p in sorted(results.rglob("*"))
            if p.is_file() and p.relative_to(results).parts[0] not in EXCLUDED}


def test_tiny_config_through_the_slurm_profile_equals_the_local_run(cluster, tiny_workflow):
    local = tiny_workflow["proc"]
    assert local.returncode == 0, local.stderr[-5000:]
    workdir, results = tiny_workflow["workdir"], tiny_workflow["results"]
    local_results = workdir / "results_local"
    slurm_results = workdir / "results_slurm"
    since = (datetime.now() - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%S")
    started = time.monotonic()
    # The SLURM run writes where the local run wrote (same config file, same paths); the
    # local results are moved aside meanwhile and put back for the other tests.
    results.rename(local_results)
    try:
        # The plugin's first status check comes 40 s after a submission (its default, kind
        # to a busy controller); the tiny config's jobs last seconds, so the test checks
        # after 5 s and the run takes a few minutes instead of about nine.
        code, log = run_watched(readme_command(cluster, "--configfile",
                                               str(workdir / "tiny.yaml"),
                                               *FAST_STATUS_CHECKS),
                                workdir / "slurm_run.log")
    finally:
        if results.exists():
            results.rename(slurm_results)
        local_results.rename(results)
    minutes = (time.monotonic() - started) / 60
    assert code == 0, log[-5000:]
    print(f"SLURM run of the tiny config: {minutes:.1f} min")

    # Which jobs had to go through sbatch: every non-local job, a group's members packed
    # group-components to a job.
    stats = job_stats(log)
    profile = yaml.safe_load((REPO / PROFILE / "config.yaml").read_text())
    groups, components = profile.get("groups", {}), profile.get("group-components", {})
    local = local_rules()
    assert "all" in local
    assert set(local) - {"all"} <= set(stats), local  # the localrules exist and ran
    expected = {f"rule_{rule}": n for rule, n in stats.items()
                if rule not in local and rule not in groups}
    for group in set(groups.values()):
        members = sum(stats.get(rule, 0) for rule, g in groups.items() if g == group)
        if members:
            expected[f"group_{group}"] = math.ceil(members / components.get(group, 1))

    # What Snakemake submitted: "... submitted with SLURM jobid N (log: .../slurm_logs/
    # <rule_X or group_G_...>/...)"; what ran locally: "localrule X:".
    submitted = dict(re.findall(
        r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/((?:rule|group)_[^/]+)/", log))
    ran_locally = set(re.findall(r"^\s*localrule (\w+):", log, flags=re.M))
    assert ran_locally == local & set(stats), ran_locally
    kinds = {}
    for job_id, kind in submitted.items():
        key = kind if kind in expected else next(
            (k for k in expected if kind.startswith(k + "_")), kind)
        kinds[key] = kinds.get(key, 0) + 1
    assert kinds == expected, (kinds, expected)

    # What SLURM accounting says about them.
    jobs = sacct_jobs(_run_id(log), since)
    print(f"sacct: {len(jobs)} jobs of run {_run_id(log)}")
    for job in jobs.values():
        print("  " + " ".join(f"{k}={v}" for k, v in job.items()))
    assert set(jobs) == set(submitted), (sorted(jobs), sorted(submitted))
    assert len(jobs) == sum(expected.values())
    not_completed = {i: (j["State"], j["ExitCode"]) for i, j in jobs.items()
                     if j["State"] != "COMPLETED" or j["ExitCode"] != "0:0"}
    assert not not_completed, not_completed
    assert {j["Account"] for j in jobs.values()} == {cluster["account"]}
    assert {j["Partition"] for j in jobs.values()} == {cluster["partition"]}
    for job_id, job in jobs.items():
        assert int(job["ReqCPUS"]) <= min(int(profile["cores"]), cluster["max_cpus"]), job
        assert _mem_mb(job["ReqMem"]) <= cluster["max_mem_mb"], job
        if job["Comment"]:  # the cluster stores job comments: the plugin's rule/group name
            kind = submitted[job_id]
            assert job["Comment"].startswith("rule_" + kind.split("_", 1)[1]), (job, kind)
    group_jobs = [i for i, kind in submitted.items() if kind.startswith("group_")]
    assert len(group_jobs) == sum(n for k, n in expected.items() if k.startswith("group_"))
    assert group_jobs, "no group job went through sbatch"

    # The results: byte for byte those of the local run.
    ours, theirs = _result_files(slurm_results), _result_files(results)
    assert sorted(ours) == sorted(theirs)
    differ = [name for name in ours if ours[name].read_bytes() != theirs[name].read_bytes()]
    assert not differ, differ
    print(f"{len(ours)} result files byte-identical to the local run")

