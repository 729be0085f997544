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
