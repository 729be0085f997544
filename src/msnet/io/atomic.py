"""Atomic output writing: every file appears complete or not at all.

Each writer creates a temporary file next to the destination and renames it into place
(``os.replace`` is atomic on POSIX within one file system), so a job that dies half-way
never leaves a truncated TSV, JSON or NIfTI behind for Snakemake or a user to pick up.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block succeeds.

    Parameters
    ----------
    path : str or Path
        Final destination. Parent directories are created.

    Yields
    ------
    Path
        Temporary path with the same suffixes as ``path`` (so writers that infer the format
        from the extension, such as nibabel, behave the same).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_tsv(df, path, **kwargs):
    """Write a DataFrame as a tab-separated file with header, atomically (``n/a`` for NaN)."""
    kwargs.setdefault("index", False)
    kwargs.setdefault("na_rep", "n/a")
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", **kwargs)


def write_json(obj, path):
    """Write a JSON-serialisable object (sorted keys, indented), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_to_builtin) + "\n")


def write_text(text, path):
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_nifti(img, path):
    """Save a nibabel image atomically (gzip without a timestamp, so bytes are reproducible)."""
    with atomic_path(path) as tmp:
        img.to_filename(tmp)


def _to_builtin(value):
    """Convert numpy scalars/arrays and paths for ``json.dumps``."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serialisable")


def check_writable(folders, what: str = "output folder") -> None:
    """Check that outputs can be written into each folder, before any work is done.

    Creates each folder (with its parents) and creates and removes a probe file in it, so the
    check is what the writers will meet (permissions, read-only mounts, a file in the way,
    quotas), whoever runs it (``os.access`` says yes to root on a read-only mount).

    Parameters
    ----------
    folders : iterable of str or Path
    what : str
        Word used in the message.

    Raises
    ------
    MsnetInputError
        Naming the folder, the system's reason and the fix.
    """
    from msnet.errors import MsnetInputError

    for folder in dict.fromkeys(Path(f) for f in folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".msnet-write-test.", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise MsnetInputError(
                f"Cannot write into the {what} {folder} ({exc.strerror or exc}). Make it "
                "writable, or set results_dir in the config to a folder you can write to. "
                "Checked before any work started; nothing was computed."
            ) from None


def nearest_existing(path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent folder."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
