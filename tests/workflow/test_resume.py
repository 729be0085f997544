"""Recovery: a Snakemake run killed mid-way (SIGKILL to its whole process group, as an
out-of-memory killer, a cluster's time limit or a power cut would) and resumed with the
README's sequence ends with exactly the files of an uninterrupted run."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import TINY_CONFIG, snakemake_workdir

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

EXCLUDED = ("logs", "benchmarks")  # timings and log lines differ from run to run


def _result_files(results: Path) -> dict:
    return {p.relative_to(results).as_posix(): p for p in sorted(results.rglob("*"))
            if p.is_file() and p.relative_to(results).parts[0] not in EXCLUDED}


def _content(path: Path, results: Path) -> bytes:
    """A file's bytes, with its run's results folder written as ``{results_dir}`` (the QC
    files record the input paths, which lie under the two runs' different folders)."""
    return path.read_bytes().replace(str(results).encode(), b"{results_dir}")


def _kill_when_subjects_appear(command, workdir: Path, results: Path, timeout=1800) -> int:
    """Start the run in its own process group; SIGKILL the group once some subject outputs
    exist (the run is then mid-way: other subjects and every later stage still to do)."""
    with open(workdir / "killed_run.log", "w") as log:
        proc = subprocess.Popen([*command, "--cores", "2"], cwd=workdir, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if any((results / "subjects").glob("study-*/sub-*/*_qc.json")):
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None and time.monotonic() >= deadline:
                os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def test_killed_run_resumes_to_the_same_results(tiny_workflow, tmp_path):
    reference = tiny_workflow["proc"]
    assert reference.returncode == 0, reference.stderr[-5000:]
    workdir, results = tmp_path / "work", tmp_path / "work" / "results"
    command = snakemake_workdir(workdir, {**TINY_CONFIG, "results_dir": str(results)})

    code = _kill_when_subjects_appear(command, workdir, results)
    assert code == -signal.SIGKILL, (workdir / "killed_run.log").read_text()[-3000:]
    assert not (results / "report.html").exists()  # killed mid-way, not at the end

    # What a killed run leaves, hence the README's two steps: the interrupted jobs' outputs
    # marked incomplete (a plain rerun refuses them) and its lock (so --rerun-incomplete
    # alone is refused too, until --unlock).
    plain = subprocess.run([*command, "--cores", "2"], cwd=workdir, capture_output=True,
                           text=True, timeout=600)
    assert plain.returncode != 0 and "--rerun-incomplete" in plain.stdout + plain.stderr
    locked = subprocess.run([*command, "--cores", "2", "--rerun-incomplete"], cwd=workdir,
                            capture_output=True, text=True, timeout=600)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    unlock = subprocess.run([*command, "--unlock"], cwd=workdir, capture_output=True,
                            text=True, timeout=600)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    resumed = subprocess.run([*command, "--cores", "2", "--rerun-incomplete"], cwd=workdir,
                             capture_output=True, text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stderr[-5000:]

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Resuming after a crash or kill", 1)[1].split("\n## ", 1)[0]
    assert "snakemake --unlock" in section and "--rerun-incomplete" in section  # as tested here

    ours, theirs = _result_files(results), _result_files(tiny_workflow["results"])
    assert sorted(ours) == sorted(theirs)
    differ = [name for name in ours if _content(ours[name], results)
              != _content(theirs[name], tiny_workflow["results"])]
    assert not differ, differ
