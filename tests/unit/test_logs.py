"""Job logging: input errors reach the log and stderr as one message, not a traceback."""

import subprocess
import sys


def test_input_error_in_a_job_is_reported_without_traceback(tmp_path):
    log = tmp_path / "job.log"
    script = (
        "from msnet.logs import log_to_file\n"
        "from msnet.errors import MsnetInputError\n"
        f"log_to_file({str(log)!r})\n"
        "raise MsnetInputError('participants.tsv, row 3: edss = 12 is not allowed')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "edss = 12 is not allowed" in proc.stderr and "Traceback" not in proc.stderr
    assert "edss = 12 is not allowed" in log.read_text()


def test_other_errors_keep_their_traceback(tmp_path):
    script = (
        "from msnet.logs import log_to_file\n"
        f"log_to_file({str(tmp_path / 'job.log')!r})\n"
        "raise RuntimeError('bug')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_log_lines_name_the_subject_being_processed(tmp_path):
    log = tmp_path / "job.log"
    script = (
        "import logging\n"
        "from msnet.logs import log_to_file, subject_context\n"
        f"log_to_file({str(log)!r})\n"
        "log = logging.getLogger('msnet.connectivity')\n"
        "with subject_context('sub-01'):\n"
        "    log.warning('excluded: dual regression ill-conditioned')\n"
        "    log.warning('sub-01: done')\n"
        "log.warning('outside any subject')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    assert lines[0].endswith("msnet.connectivity: sub-01: excluded: dual regression ill-conditioned")
    assert lines[1].endswith("msnet.connectivity: sub-01: done")  # not named twice
    assert lines[2].endswith("msnet.connectivity: outside any subject")
    assert "sub-01: excluded" in proc.stderr
