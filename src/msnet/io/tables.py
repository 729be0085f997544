"""Read and validate ``studies.tsv`` and BIDS ``participants.tsv`` tables.

Every problem of a table is reported, all together (one
:class:`~msnet.errors.MsnetInputErrors`, one line per problem), each naming the file, the row
(data rows numbered from 1, the header not counted), the column, the bad value and what is
allowed. The column rules live in the packaged JSON schemas
(``msnet/schemas/{participants,studies}.schema.yaml``), the same files the workflow exposes
under ``workflow/schemas/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from msnet.config import load_schema
from msnet.errors import MsnetInputError, MsnetInputErrors

NA_VALUES = ["n/a", "N/A", "NA", "nan", "NaN", ""]
CLINICAL_COLUMNS = ("disease_duration", "edss", "t2lv", "phenotype")


def read_tsv(path, what: str) -> pd.DataFrame:
    """Read a BIDS-style TSV (``n/a`` = missing) with a clear error if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise MsnetInputError(f"{what} {path} does not exist. Check the path (relative paths "
                              "are resolved from the folder of the table that names them).")
    try:
        table = pd.read_csv(path, sep="\t", na_values=NA_VALUES, keep_default_na=False,
                            dtype=str)
    except pd.errors.EmptyDataError:
        raise MsnetInputError(
            f"{what} {path} is empty ({path.stat().st_size} bytes, no header row). It needs a "
            "tab-separated header row and one row per entry; see README ('Real data')."
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MsnetInputError(
            f"{what} {path} is not a readable tab-separated table: {exc}"
        ) from None
    table.columns = [str(c).strip() for c in table.columns]
    if len(table.columns) == 1:
        header = table.columns[0]
        for sep, name in ((",", "comma"), (";", "semicolon")):
            if sep in header:
                raise MsnetInputError(
                    f"{what} {path}: this file is {name}-separated (header {header!r}); msnet "
                    "reads tab-separated tables (BIDS .tsv). Save it with tabs between the "
                    f"columns (e.g. pandas: read_csv(sep='{sep}').to_csv(sep='\\t', "
                    "index=False))."
                )
    if table.empty:
        raise MsnetInputError(
            f"{what} {path} has a header ({', '.join(table.columns)}) but no rows. Add one "
            "row per entry."
        )
    return table


def _coerce(table: pd.DataFrame, schema: dict, path: Path, problems: list) -> pd.DataFrame:
    """Convert numeric columns declared in the schema; every non-number found is added to
    ``problems`` (and becomes NaN, so the other checks still run)."""
    for col, spec in schema["properties"].items():
        if col not in table.columns or spec.get("type") != "number":
            continue
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna() & table[col].notna()
        for row in np.flatnonzero(bad.to_numpy()):
            table.attrs.setdefault("not_numbers", set()).add((int(row), col))
            problems.append(
                f"{path}, row {row + 1} ({_row_id(table, row)}): column '{col}' = "
                f"{table[col].iloc[row]!r} is not a number. Use a number or n/a."
            )
        table[col] = values.astype(float)
    return table


def _row_id(table: pd.DataFrame, row: int) -> str:
    for key in ("participant_id", "study_id"):
        if key in table.columns:
            return f"{key} {table[key].iloc[row]}"
    return "no id"


def _validate_rows(table: pd.DataFrame, schema: dict, path: Path, problems: list) -> bool:
    """Validate each row against the JSON schema, adding every bad cell to ``problems``.

    Returns False when required columns are missing (then no row is checked).
    """
    import jsonschema

    missing = [c for c in schema.get("required", []) if c not in table.columns]
    if missing:
        problems.append(
            f"{path}: required column(s) {', '.join(missing)} missing. "
            f"Required: {', '.join(schema['required'])}; found: {', '.join(table.columns)}."
        )
        return False
    validator = jsonschema.Draft7Validator(schema)
    for row, record in enumerate(table.to_dict("records")):
        clean = {k: v for k, v in record.items() if not (isinstance(v, float) and np.isnan(v))
                 and v is not None}
        reported = table.attrs.get("not_numbers", set())  # by _coerce: not empty cells
        empty = [col for col in schema.get("required", [])
                 if col not in clean and (row, col) not in reported]
        for col in empty:
            problems.append(
                f"{path}, row {row + 1} ({_row_id(table, row)}): required column '{col}' "
                "is empty. Fill it in."
            )
        for error in sorted(validator.iter_errors(clean), key=lambda e: [str(k) for k in e.path]):
            col = error.path[0] if error.path else "?"
            if not error.path and error.validator == "required":
                continue  # an empty required cell, reported above
            spec = schema["properties"].get(col, {})
            problems.append(
                f"{path}, row {row + 1} ({_row_id(table, row)}): column '{col}' = "
                f"{error.instance!r} is not allowed ({error.message}). "
                f"{spec.get('description', '')}"
            )
    return True


def _raise(problems: list, path) -> None:
    if problems:
        raise MsnetInputErrors(problems, str(path))


def read_checked(path: Path, schema_name: str, label: str) -> tuple[pd.DataFrame, dict, list]:
    """Read a TSV, convert its columns to the schema's types and check every row.

    Returns the table, its schema and the list of problems found so far (cells that could not
    be converted); stops with every problem at once when a row breaks the schema.
    """
    schema = load_schema(schema_name)
    problems = []
    table = _coerce(read_tsv(path, label), schema, path, problems)
    if not _validate_rows(table, schema, path, problems):
        _raise(problems, path)
    return table, schema, problems


def duplicate_rows(table: pd.DataFrame, column: str, path: Path, advice: str) -> list[str]:
    """The problem message for values of ``column`` that occur more than once (or none)."""
    dup = table[column].duplicated(keep=False)
    if not dup.any():
        return []
    ids = sorted(set(table.loc[dup, column]))
    rows = [int(i) + 1 for i in np.flatnonzero(dup.to_numpy())]
    return [f"{path}: duplicate {column} {', '.join(ids)} (rows {rows}). {advice}"]


def read_participants(path, study_id: str | None = None) -> pd.DataFrame:
    """Read and validate a BIDS ``participants.tsv``.

    Checks the schema (ids, group MS|HC, age, sex M|F, EDSS 0-10 in 0.5 steps, ...), that ids
    are unique, that clinical values are only given for MS, and that the study has at least
    one participant of each group.

    Parameters
    ----------
    path : str or Path
        The table.
    study_id : str, optional
        Used in error messages.

    Returns
    -------
    pandas.DataFrame
        Numeric columns converted to float; ``n/a`` as NaN.
    """
    path = Path(path)
    table, schema, problems = read_checked(path, "participants", "participants table")
    problems += duplicate_rows(table, "participant_id", path, "Each participant must appear once.")
    for col in CLINICAL_COLUMNS:
        if col in table.columns:
            hc_with = (table["group"] == "HC") & table[col].notna()
            for row in np.flatnonzero(hc_with.to_numpy()):
                problems.append(
                    f"{path}, row {row + 1} ({_row_id(table, row)}): '{col}' is given for a "
                    "healthy control. Clinical variables are for MS only; write n/a."
                )
    label = f"study {study_id} ({path})" if study_id else str(path)
    for group, name in (("HC", "healthy control"), ("MS", "MS")):
        if not (table["group"] == group).any():
            problems.append(
                f"{label}: no {name} participants (group {group}). Every study needs both MS "
                "and HC participants for the MS-vs-HC comparison; remove the study from "
                "studies.tsv or fix the group column."
            )
    _raise(problems, path)
    return table


def read_studies(path) -> pd.DataFrame:
    """Read and validate ``studies.tsv``; resolve relative paths from its folder.

    Returns
    -------
    pandas.DataFrame
        One row per study with absolute ``fmriprep_dir`` and ``participants_tsv`` and the
        ``task``/``space`` defaults filled.
    """
    path = Path(path)
    schema = load_schema("studies")
    table = read_tsv(path, "studies table")
    problems = []
    if not _validate_rows(table, schema, path, problems):
        _raise(problems, path)
    dup = table["study_id"].duplicated(keep=False)
    if dup.any():
        problems.append(f"{path}: duplicate study_id "
                        f"{', '.join(sorted(set(table.loc[dup, 'study_id'])))}.")
    if problems:  # rows with a bad cell: the paths below may not even be strings
        _raise(problems, path)
    for col in ("task", "space"):
        default = schema["properties"][col]["default"]
        table[col] = table[col].fillna(default) if col in table else default
    if "site" not in table:
        table["site"] = table["study_id"]
    table["site"] = table["site"].fillna(table["study_id"])
    for col in ("fmriprep_dir", "participants_tsv"):
        table[col] = [str((path.parent / p).resolve()) for p in table[col]]
    for row, fdir in enumerate(table["fmriprep_dir"]):
        if not Path(fdir).is_dir():
            problems.append(
                f"{path}, row {row + 1} (study_id {table['study_id'].iloc[row]}): fmriprep_dir "
                f"{fdir} is not a folder. Point it at the study's fMRIPrep derivatives."
            )
    _raise(problems, path)
    return table
