"""Logging set-up shared by the Snakemake adapters and the command line: subject-named log
lines (:func:`subject_context`), repeated warnings collapsed (:class:`Collapsed`), progress of
long loops (:class:`Progress`) and the summary printed at the end of a run
(:func:`run_summary`)."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(subject)s%(message)s"

_SUBJECT = contextvars.ContextVar("msnet_subject", default=None)


class _SubjectFilter(logging.Filter):
    """Prefix each record with the subject being processed, unless it already names it."""

    def filter(self, record: logging.LogRecord) -> bool:
        subject = _SUBJECT.get()
        record.subject = (f"{subject}: " if subject and subject not in record.getMessage()
                          else "")
        return True


@contextlib.contextmanager
def subject_context(participant_id: str):
    """Name ``participant_id`` in every log line written inside the ``with`` block.

    A subject-stage job processes several subjects; every warning (an exclusion, an empty
    sphere) must say whose it is.
    """
    token = _SUBJECT.set(participant_id)
    try:
        yield
    finally:
        _SUBJECT.reset(token)


def log_to_file(path, level=logging.INFO) -> None:
    """Send msnet's log records (and warnings) to ``path``; warnings and errors also to stderr.

    Parameters
    ----------
    path : str or Path
        Log file (the rule's ``log:``); parent folders are created.
    level : int
        Logging level.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    handlers = [logging.FileHandler(path, mode="w"), console]
    for handler in handlers:
        handler.addFilter(_SubjectFilter())
    logging.basicConfig(level=level, format=FORMAT, handlers=handlers, force=True)
    logging.captureWarnings(True)
    sys.excepthook = _report_input_errors


def _report_input_errors(exc_type, exc, tb) -> None:
    """Show a user-fixable input error as its message alone; anything else in full.

    An :class:`~msnet.errors.MsnetInputError` already names the file, row and fix, so the
    job's log and stderr get that message instead of a traceback through msnet's internals.
    """
    from msnet.errors import MsnetInputError

    if issubclass(exc_type, MsnetInputError):
        logging.getLogger("msnet").error("%s", exc)
        return
    sys.__excepthook__(exc_type, exc, tb)


class Collapsed:
    """Repeated warnings collected and logged once each, naming every item they concern.

    A meta-analysis of ten metrics would otherwise log "study S03 excluded: ..." ten times;
    :meth:`add` collects (message, item) pairs and :meth:`flush` logs each distinct message
    once: ``study S03 excluded: ... (10 metrics: within_DMN, within_SMN, ...)``.
    """

    def __init__(self, logger: logging.Logger, items: str = "metrics", show: int = 6):
        self.logger, self.items, self.show = logger, items, show
        self.groups: dict = {}

    def add(self, message: str, item) -> None:
        """Remember ``message`` (a warning) for ``item`` (e.g. a metric name)."""
        self.groups.setdefault(str(message), []).append(str(item))

    def flush(self) -> None:
        """Log every collected message once, at WARNING level, and forget them."""
        for message, items in self.groups.items():
            items = list(dict.fromkeys(items))
            shown = ", ".join(items[:self.show]) + (", ..." if len(items) > self.show else "")
            if len(items) == 1:
                self.logger.warning("%s: %s", items[0], message)
            else:
                self.logger.warning("%s (%d %s: %s)", message, len(items), self.items, shown)
        self.groups = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.flush()
        return False


class Progress:
    """Progress of a long loop in the job's log: at most one INFO line per ``every`` seconds,
    plus the last one (``permutations: 1200/5000 (24 %), 31 s``).

    Use ``progress.update(done)`` inside the loop; a loop that finishes within ``every``
    seconds logs only its final line.
    """

    def __init__(self, logger: logging.Logger, what: str, total: int, every: float = 15.0):
        import time

        self.logger, self.what, self.total, self.every = logger, what, int(total), every
        self._clock = time.monotonic
        self.start = self.last = self._clock()

    def update(self, done: int) -> None:
        """Log ``done`` of ``total`` when ``every`` seconds have passed or the loop is done."""
        now = self._clock()
        if done >= self.total or now - self.last >= self.every:
            self.last = now
            self.logger.info("%s: %d/%d (%.0f %%), %.0f s", self.what, done, self.total,
                             100.0 * done / max(self.total, 1), now - self.start)


def run_summary(results_dir, studies=None, report=None) -> str:
    """The few lines printed at the end of a successful run (Snakefile ``onsuccess:``): the
    report's path, subjects included and excluded by QC, and how many warnings the jobs
    logged and where to read them.

    Parameters
    ----------
    results_dir : path
        ``config["results_dir"]``.
    studies : list of str, optional
        Study ids (default: every ``subjects/study-*`` folder).
    report : path, optional
        The HTML report (default ``results_dir/report.html``).

    Returns
    -------
    str
    """
    from msnet.io.plan import study_qc_table

    root = Path(results_dir)
    report = Path(report or root / "report.html")
    lines = ["msnet: run complete."]
    lines.append(f"  Report: {report.resolve()}" if report.exists()
                 else f"  Report: not written ({report} is missing)")
    if studies is None:
        studies = sorted(p.name.removeprefix("study-") for p in (root / "subjects").glob("study-*")
                         if p.is_dir())
    n_sub = n_inc = n_ms = n_hc = 0
    excluded_by_study = {}
    for study in studies:
        path = Path(study_qc_table(root, study))
        if not path.exists():
            continue
        with path.open() as handle:
            header = handle.readline().rstrip("\n").split("\t")
            for line in handle:
                row = dict(zip(header, line.rstrip("\n").split("\t")))
                n_sub += 1
                if row.get("include", "").lower() in ("true", "1"):
                    n_inc += 1
                    n_ms += row.get("group") == "MS"
                    n_hc += row.get("group") == "HC"
                else:
                    excluded_by_study[study] = excluded_by_study.get(study, 0) + 1
    if n_sub:
        n_exc = n_sub - n_inc
        lines.append(f"  Subjects: {n_sub} in {len(studies)} studies; {n_inc} included "
                     f"({n_ms} MS, {n_hc} HC), {n_exc} excluded by QC ({100 * n_exc / n_sub:.1f} "
                     "%; reasons in the report's 'Dataset & QC overview' section)")
    logs = root / "logs"
    counts = {}
    for log in sorted(logs.rglob("*.log")) if logs.is_dir() else []:
        with log.open(errors="replace") as handle:
            n = sum(" WARNING " in line for line in handle)
        if n:
            rule = log.relative_to(logs).parts[0].removesuffix(".log")
            counts[rule] = counts.get(rule, 0) + n
    if counts:
        detail = ", ".join(f"{rule} {n}" for rule, n in
                           sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        lines.append(f"  Warnings: {sum(counts.values())} in the job logs ({detail}); read them "
                     f"with: grep -r WARNING {logs}")
    else:
        lines.append("  Warnings: none in the job logs.")
    return "\n".join(lines)
