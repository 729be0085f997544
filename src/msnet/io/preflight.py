"""Preflight: check every subject's fMRIPrep files from their headers before any job starts.

``msnet validate`` and the Snakefile's plan (:func:`msnet.io.plan.build_plan`, real data only:
the demo's simulated files do not exist before the run) call :func:`check_subjects`, which
checks, per subject and without reading voxel data:

- each BOLD run (the ICA-AROMA output for ``denoise.strategy: ica_aroma``): NIfTI, 4-D with
  at least two volumes, a usable affine, not truncated (:func:`~msnet.io.fmriprep.check_complete`),
  its JSON sidecar parses and its ``RepetitionTime`` agrees with the header
  (:func:`~msnet.io.fmriprep.read_tr`);
- each brain mask and lesion mask: readable, on the BOLD grid (shape and affine), not truncated;
- each confounds table: its header line and row count against the BOLD's volumes, fMRIPrep's
  columns, the JSON sidecar, and every column the denoising strategy selects
  (:func:`~msnet.io.fmriprep.read_confounds_header`,
  :func:`~msnet.denoise.check_confounds_columns`);
- the runs of one subject (``multi_run: concatenate``): one grid, one TR.

These are the functions the subject job runs on the same files (one place for each check);
what needs voxel or table values (an empty mask, NaN in the data, ``n/a`` in a confounds column)
is checked by the job, which records or reports it.

Every problem found is returned, one line per file, so the caller raises them together
(:class:`~msnet.errors.MsnetInputErrors`).

Speed: the work is opening files and decompressing a few hundred bytes of gzip, so the
subjects are checked by a thread pool. Measured on the demo's 189 subjects (2 shared cores):
see ``README.md`` ("Real data"). Cache: the Snakefile parses the workflow again for every
``snakemake`` call (``-n``, ``--unlock``, the resumed run); with ``cache`` the subjects whose
files (path, size, mtime) and checks (denoise options, this code) are unchanged since they last
passed are not read again. Jobs that Snakemake starts in their own process (SLURM jobs re-parse
the Snakefile) skip the preflight altogether: the main process has checked, and the job checks
its own files again as it reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from msnet.errors import MsnetInputError

DEFAULT_WORKERS = 8
"""Threads of the preflight (file I/O and zlib release the GIL)."""


def check_subject(files, lesion_mask=None, denoise_options=None) -> list[str]:
    """Check one subject's files from their headers.

    Parameters
    ----------
    files : msnet.io.fmriprep.SubjectFiles
        The subject's runs (as found by :func:`~msnet.io.fmriprep.find_subject_files`, with or
        without reading headers).
    lesion_mask : str or Path, optional
        The subject's lesion mask.
    denoise_options : dict, optional
        The ``denoise`` section of the config (the strategy decides the confounds columns
        needed, and for ``ica_aroma`` which BOLD is read).

    Returns
    -------
    list of str
        One line per problem (file, what is wrong, the fix); empty when all is well.
    """
    from msnet.denoise import bold_for_strategy, check_confounds_columns, resolve_options
    from msnet.io.fmriprep import (
        check_complete,
        common_tr,
        open_bold,
        open_lesion_mask,
        open_mask,
        read_confounds_header,
        read_tr,
    )

    opts = resolve_options(denoise_options)
    problems, trs, grid = [], [], None

    def attempt(check, *args):
        try:
            return check(*args)
        except MsnetInputError as exc:
            problems.append(" ".join(str(exc).split()))
            return None

    for run in files.runs:
        path = attempt(bold_for_strategy, run, opts)
        img = attempt(open_bold, path) if path is not None else None
        if img is not None:
            attempt(check_complete, path, img)
            tr = attempt(read_tr, run, img.header if Path(path) == Path(run.bold) else None)
            if tr is not None:
                trs.append(tr)
            if grid is None:
                grid = (path, img.shape[:3], img.affine)
            elif not _same_grid(img, grid):
                problems.append(f"{path} is not on the grid of {grid[0]}: the runs of "
                                f"{files.participant_id} cannot be concatenated. Set "
                                "data.multi_run: first, or drop the odd run.")
            mask = attempt(open_mask, run.mask, img.shape[:3], img.affine, path)
            if mask is not None:
                attempt(check_complete, run.mask, mask)
        header = attempt(read_confounds_header, run.confounds,
                         img.shape[3] if img is not None else None)
        if header is not None:
            attempt(check_confounds_columns, header[0], header[1], opts, run.confounds)
    if len(trs) == len(files.runs) > 1:
        attempt(common_tr, files.participant_id, files.runs, trs)
    if lesion_mask is not None and grid is not None:
        lesion = attempt(open_lesion_mask, str(lesion_mask), grid[1], grid[2])
        if lesion is not None:
            attempt(check_complete, lesion_mask, lesion)
    return problems


def _same_grid(img, grid) -> bool:
    import numpy as np

    return img.shape[:3] == grid[1] and np.allclose(img.affine, grid[2], atol=1e-3)


def check_subjects(subjects, denoise_options=None, cache=None,
                   workers: int | None = None) -> list[str]:
    """Check many subjects' files in parallel (see the module docstring).

    Parameters
    ----------
    subjects : iterable of (SubjectFiles, lesion_mask or None)
        The subjects.
    denoise_options : dict, optional
        The config's ``denoise`` section.
    cache : str or Path, optional
        JSON file remembering the subjects that passed (keyed by every checked file's path,
        size and mtime, the options and this code); those are not read again. Written
        atomically; a cache that cannot be read or written is ignored.
    workers : int, optional
        Threads (default :data:`DEFAULT_WORKERS`).

    Returns
    -------
    list of str
        Every problem, one line each, in the order of ``subjects``.
    """
    subjects = list(subjects)
    workers = workers or DEFAULT_WORKERS
    salt = _salt(denoise_options)
    keys = [_subject_key(files, lesion, salt) for files, lesion in subjects]
    passed = _read_cache(cache, salt) if cache else set()
    todo = [i for i, key in enumerate(keys) if key not in passed]

    def one(i):
        files, lesion = subjects[i]
        try:
            return check_subject(files, lesion, denoise_options)
        except MsnetInputError:
            raise
        except Exception as exc:  # a file no check foresaw: name it, keep checking the others
            return [f"{files.participant_id}: its files ({files.runs[0].bold.parent}) could not "
                    f"be checked ({type(exc).__name__}: {exc}). Check them by hand (re-copy "
                    "from the fMRIPrep output), and please report this file to the msnet "
                    "maintainers."]

    results = dict.fromkeys(range(len(subjects)), [])
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
            results.update(zip(todo, pool.map(one, todo)))
    if cache:
        _write_cache(cache, salt, [k for i, k in enumerate(keys) if not results[i]])
    return [line for i in range(len(subjects)) for line in results[i]]


# ------------------------------------------------------------------------ cache


def _salt(denoise_options) -> str:
    """The checks' identity: msnet's version, the code that checks, the denoise options."""
    import msnet
    from msnet import denoise
    from msnet.io import fmriprep

    digest = hashlib.sha1(msnet.__version__.encode())
    for module in (__file__, fmriprep.__file__, denoise.__file__):
        digest.update(Path(module).read_bytes())
    digest.update(json.dumps(denoise_options or {}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _stat(path) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return [str(path), None, None]
    return [str(path), st.st_size, st.st_mtime_ns]


def _subject_key(files, lesion, salt: str) -> str:
    stats = []
    for run in files.runs:
        bold = Path(run.bold)
        aroma = bold.with_name(bold.name.replace("_desc-preproc_bold", "_desc-smoothAROMAnonaggr_bold"))
        sidecar = bold.with_name(bold.name.split(".nii")[0] + ".json")
        confounds = Path(run.confounds)
        for path in (bold, aroma, sidecar, run.mask, confounds, confounds.with_suffix(".json")):
            stats.append(_stat(path))
    if lesion is not None:
        stats.append(_stat(lesion))
    return hashlib.sha1(json.dumps([salt, stats]).encode()).hexdigest()


def _read_cache(path, salt: str) -> set:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(data, dict) or data.get("salt") != salt:
        return set()
    return set(data.get("passed", []))


def _write_cache(path, salt: str, passed) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump({"salt": salt, "passed": sorted(passed)}, handle)
        os.replace(tmp, path)
    except OSError:  # a read-only folder: the cache only saves time
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass
