"""Job logging: input errors reach the log and stderr as one message, not a traceback."""

import logging
import subprocess
import sys
from pathlib import Path


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


def test_repeated_warnings_are_collapsed_naming_every_item(caplog):
    from msnet.logs import Collapsed

    logger = logging.getLogger("msnet.test_collapse")
    with caplog.at_level(logging.WARNING, logger="msnet.test_collapse"):
        with Collapsed(logger, "metrics") as repeated:
            for metric in ("within_DMN", "within_SMN", "between_DMN_SMN"):
                repeated.add("study S04 excluded: fewer than 2 subjects in a group", metric)
            repeated.add("k=2 < min_studies=3", "within_VN")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["study S04 excluded: fewer than 2 subjects in a group (3 metrics: "
                     "within_DMN, within_SMN, between_DMN_SMN)", "within_VN: k=2 < min_studies=3"]


def test_meta_networks_logs_each_study_exclusion_once(tmp_path, caplog):
    """Ten metrics excluding the same study used to give ten identical warning lines."""
    import numpy as np
    import pandas as pd

    from msnet.meta import meta_networks

    rng = np.random.default_rng(0)
    tables = {}
    for study in ("S01", "S02", "S03", "S04"):
        rows = []
        for metric in ("within_DMN", "within_SMN", "within_VN", "within_SN"):
            g = np.nan if study == "S04" else rng.normal(0.4, 0.1)
            rows.append({"study_id": study, "metric": metric, "network_a": metric[7:],
                         "network_b": metric[7:], "kind": "within", "n_ms": 10, "n_hc": 10,
                         "g": g, "var_g": 0.2, "status": "ok" if study != "S04" else
                         "excluded", "reason": "" if study != "S04" else "fewer than 2 MS"})
        path = tmp_path / f"{study}.tsv"
        pd.DataFrame(rows).to_csv(path, sep="\t", index=False, na_rep="n/a")
        tables[study] = str(path)
    with caplog.at_level(logging.WARNING, logger="msnet.meta"):
        meta_networks(tables, None, tmp_path / "meta", {"n_permutations": 0})
    s04 = [r.getMessage() for r in caplog.records if "S04" in r.getMessage()]
    assert len(s04) == 1 and "4 metrics" in s04[0], s04


def test_progress_logs_at_most_every_interval_and_the_end(caplog):
    from msnet.logs import Progress

    logger = logging.getLogger("msnet.test_progress")
    with caplog.at_level(logging.INFO, logger="msnet.test_progress"):
        progress = Progress(logger, "permutations", 100, every=3600)
        for done in range(10, 101, 10):
            progress.update(done)
        quick = Progress(logger, "refits", 4, every=0)
        quick.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("permutations: 100/100 (100 %)") and len(lines) == 2
    assert lines[1].startswith("refits: 1/4 (25 %)")


def test_run_summary_names_report_counts_and_warnings(tmp_path):
    from msnet.io.plan import study_qc_table
    from msnet.logs import run_summary

    (tmp_path / "report.html").write_text("<html></html>")
    for study, rows in (("S01", [("MS", "True"), ("HC", "False")]),
                        ("S02", [("MS", "True"), ("HC", "True")])):
        path = Path(study_qc_table(tmp_path, study))
        path.parent.mkdir(parents=True)
        path.write_text("participant_id\tgroup\tinclude\n" + "".join(
            f"sub-{i}\t{g}\t{inc}\n" for i, (g, inc) in enumerate(rows)))
    logs = tmp_path / "logs" / "compute_subject_connectivity"
    logs.mkdir(parents=True)
    (logs / "S01_0.log").write_text("2026 WARNING msnet.connectivity: sub-1: excluded: x\n"
                                    "2026 INFO msnet.connectivity: fine\n")
    (tmp_path / "logs" / "meta_networks.log").write_text("2026 WARNING msnet.meta: y\n" * 2)
    text = run_summary(tmp_path, ["S01", "S02"])
    assert str((tmp_path / "report.html").resolve()) in text
    assert "4 in 2 studies; 3 included (2 MS, 1 HC), 1 excluded by QC (25.0 %" in text
    assert "Warnings: 3 in the job logs (meta_networks 2, compute_subject_connectivity 1)" in text
    assert f"grep -r WARNING {tmp_path / 'logs'}" in text
