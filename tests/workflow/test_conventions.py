"""Snakemake's own conventions: `snakemake --lint` and `snakefmt --check` find nothing."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(name):
    return shutil.which(name) or str(BIN / name)


def test_snakemake_lint_is_clean(tmp_path):
    proc = subprocess.run([_tool("snakemake"), "--lint", "--config", f"results_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Lints for" not in output, output[-5000:]


def test_snakefmt_would_change_nothing():
    proc = subprocess.run([_tool("snakefmt"), "--check", "--diff", "Snakefile", "workflow/rules"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
