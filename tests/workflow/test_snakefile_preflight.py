"""The Snakefile runs the preflight: broken real-data files stop `snakemake` before any job,
all of them listed together; a valid dataset's checks are cached in .snakemake/."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np

from conftest import REPO, snakemake_workdir

sys.path.insert(0, str(REPO / "tests" / "unit"))
from test_preflight import func_of, write_study  # noqa: E402


def test_snakemake_lists_every_broken_file_before_any_job(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    studies = write_study(data, n_subjects=4, studies=2)
    workdir = tmp_path / "work"
    command = snakemake_workdir(workdir, {"results_dir": str(workdir / "results"),
                                          "data": {"mode": "fmriprep",
                                                   "studies_tsv": str(studies)}})
    ok = subprocess.run([*command, "-n"], cwd=workdir, capture_output=True, text=True,
                        timeout=900)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    cache = json.loads((workdir / ".snakemake" / "msnet" / "preflight_passed.json").read_text())
    assert len(cache["passed"]) == 8

    broken = []
    func, _ = func_of(data, 0, s=0)
    bold = next(func.glob("*_bold.nii.gz"))
    bold.write_bytes(bold.read_bytes()[:-200])
    broken.append(bold)
    func, _ = func_of(data, 3, s=0)
    sidecar = next(func.glob("*_bold.json"))
    sidecar.write_text('{"RepetitionTime": 3}')
    broken.append(sidecar)
    func, _ = func_of(data, 1, s=1)
    mask = next(func.glob("*_mask.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((6, 7, 6), np.uint8), np.diag([3.0, 3, 3, 1])), mask)
    broken.append(mask)
    proc = subprocess.run([*command, "--cores", "2"], cwd=workdir, capture_output=True,
                          text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "3 input problems" in output and "Traceback" not in output
    for path in broken:
        assert sum(str(path) in line for line in output.splitlines()) == 1, (path, output[-4000:])
    assert not (workdir / "results").exists()  # no job ran
