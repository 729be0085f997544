"""Logging set-up shared by the Snakemake adapters and the command line."""

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
