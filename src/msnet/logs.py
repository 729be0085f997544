"""Logging set-up shared by the Snakemake adapters and the command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
