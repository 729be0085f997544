"""Configuration: load ``config.yaml``, validate it against the schema, fill defaults.

The Snakefile and ``msnet validate`` call the same :func:`load_config`, so a bad value is
caught the same way from the shell and from the workflow, before any job runs.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from msnet.errors import MsnetInputError, MsnetInputErrors

SCHEMA_DIR = resources.files("msnet") / "schemas"


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    """Return a packaged JSON schema (``config``, ``studies`` or ``participants``)."""
    return yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text())


def _resolve(node: dict, root: dict) -> dict:
    """Merge a local ``$ref`` ("#/definitions/name") into the node that uses it."""
    if "$ref" not in node:
        return node
    target = root
    for part in node["$ref"].lstrip("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _fill_defaults(schema: dict, value, root: dict | None = None):
    """Recursively fill missing keys of ``value`` from the schema's ``default`` entries."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    for key, sub in schema.get("properties", {}).items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        elif isinstance(sub.get("default"), dict) and isinstance(value.get(key), dict):
            # a partial override (e.g. only mem_mb of a rule) keeps the other defaults
            value[key] = {**copy.deepcopy(sub["default"]), **value[key]}
        if key in value:
            value[key] = _fill_defaults(sub, value[key], root)
    return value


def _describe(error, source: str) -> str:
    """Turn a jsonschema error into one sentence naming the key, the value and what is allowed."""
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(schema.get("properties", {})))
        return f"{source}: {error.message} under '{key}'. Allowed keys: {allowed}."
    allowed = _allowed(schema)
    desc = schema.get("description", "")
    return (
        f"{source}: key '{key}' = {error.instance!r} is not allowed ({error.message}). "
        f"Allowed: {allowed}." + (f" Meaning: {desc}" if desc else "")
    )


def _allowed(schema: dict) -> str:
    """Summarise what a schema node accepts (type, enum, range)."""
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    parts = [str(schema.get("type", "any"))]
    for word, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                      ("exclusiveMaximum", "<")):
        if word in schema:
            parts.append(f"{sym} {schema[word]}")
    return " ".join(parts)


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate a configuration dictionary and return a copy with defaults filled.

    Parameters
    ----------
    config : dict
        The parsed configuration.
    source : str
        Name used in error messages (usually the file path).

    Returns
    -------
    dict
        The validated configuration with every default filled in.

    Raises
    ------
    MsnetInputError
        Listing every problem found (:func:`config_problems`), each naming the key, the
        value and what is allowed (:class:`~msnet.errors.MsnetInputErrors` when several).
    """
    config, problems = config_problems(config, source)
    if problems:
        raise MsnetInputErrors(problems, source)
    return config


def config_problems(config: dict, source: str = "config") -> tuple[dict | None, list]:
    """Every problem of a configuration, found in one pass.

    Parameters
    ----------
    config : dict
        The parsed configuration.
    source : str
        Name used in the messages.

    Returns
    -------
    config : dict or None
        The configuration with defaults filled; when some keys broke the schema, the one
        with those keys replaced by their defaults (so the input tables can still be checked
        in the same pass), or None when even that does not validate.
    problems : list of str
        Every schema violation (key, value, what is allowed) and every cross-key problem.
    """
    import jsonschema

    schema = load_schema("config")
    validator = jsonschema.Draft7Validator(schema)
    filled = _fill_defaults(schema, copy.deepcopy(config or {}))
    errors = sorted(validator.iter_errors(filled),
                    key=lambda e: [str(k) for k in e.absolute_path])
    problems = [_describe(e, source) for e in errors]
    if errors:
        raw = copy.deepcopy(config or {})
        for error in errors:
            _drop_bad_value(raw, error)
        filled = _fill_defaults(schema, raw) if isinstance(raw, dict) else None
        if filled is None or next(validator.iter_errors(filled), None) is not None:
            return None, problems
    try:
        problems += _cross_key_problems(filled, source)
    except (TypeError, KeyError, AttributeError):  # a key the schema let through oddly
        pass
    return filled, problems


def _drop_bad_value(raw: dict, error) -> None:
    """Remove what a schema ``error`` points at from ``raw`` (its default then fills in): the
    value at the error's key (a whole list for a bad list item) or the unknown keys."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        node = raw
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            allowed = set(_resolve(error.schema, load_schema("config")).get("properties", {}))
            for key in [k for k in node if k not in allowed]:
                del node[key]
        return
    while path and not isinstance(path[-1], str):
        path.pop()
    node = raw
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if path and isinstance(node, dict):
        node.pop(path[-1], None)


def _cross_key_problems(config: dict, source: str) -> list:
    """Checks that involve several keys at once; one message per problem."""
    problems = []
    if not str(config["results_dir"]).strip():
        problems.append(
            f"{source}: results_dir is empty; outputs would be written at the filesystem root. "
            "Set results_dir to a folder, e.g. results_dir: results."
        )
    data = config["data"]
    if data["mode"] == "fmriprep" and not data["studies_tsv"]:
        problems.append(
            f"{source}: data.mode is 'fmriprep' but data.studies_tsv is not set. "
            "Point data.studies_tsv at your studies.tsv (see README, 'Real data')."
        )
    if data["mode"] == "simulate" and data["studies_tsv"]:
        problems.append(
            f"{source}: data.studies_tsv is set ({data['studies_tsv']}) but data.mode is "
            "'simulate', which runs the synthetic demo and ignores studies_tsv. To analyse "
            "your studies set data.mode: fmriprep; to run the demo remove data.studies_tsv "
            "(or set it to null)."
        )
    problems += _literature_problems(config, source)
    clinical = config.get("clinical", {})
    extra = [v for v in clinical.get("voxelwise_variables", [])
             if v not in clinical.get("variables", [])]
    if extra:
        problems.append(
            f"{source}: clinical.voxelwise_variables {extra} are not in clinical.variables "
            f"{clinical.get('variables', [])}; a voxelwise variable must also be modelled at "
            "network level. Add them to clinical.variables or remove them from "
            "clinical.voxelwise_variables."
        )
    from msnet.qcfc import config_problems as qcfc_problems

    problems += [f"{source}: {problem}" for problem in qcfc_problems(config)]
    denoise = config.get("denoise", {})
    low, high = denoise.get("low_pass"), denoise.get("high_pass")
    if low is not None and high is not None and low <= high:
        problems.append(
            f"{source}: denoise.low_pass ({low} Hz) must be above denoise.high_pass ({high} Hz)."
        )
    return problems


def _literature_problems(config: dict, source: str) -> list:
    """Literature mode needs both tables (and no studies.tsv: it has no image data)."""
    mode, lit = config["data"]["mode"], config.get("literature") or {}
    problems = []
    if mode == "literature" and not lit.get("peaks_tsv"):
        problems.append(
            f"{source}: data.mode is 'literature' but literature.peaks_tsv is not set. Point "
            "literature.peaks_tsv and literature.studies_tsv at your peaks table and literature "
            "studies table (see README, 'Published studies only').")
    if bool(lit.get("peaks_tsv")) != bool(lit.get("studies_tsv")):
        given, missing = (("peaks_tsv", "studies_tsv") if lit.get("peaks_tsv")
                          else ("studies_tsv", "peaks_tsv"))
        problems.append(
            f"{source}: literature.{given} is set but literature.{missing} is not; the peaks "
            "need the studies' sample sizes and the studies need their peaks. Set both.")
    if mode == "literature" and config["data"]["studies_tsv"]:
        problems.append(
            f"{source}: data.studies_tsv is set ({config['data']['studies_tsv']}) but data.mode "
            "is 'literature', which uses published peaks only. To add image studies set "
            "data.mode: fmriprep and keep literature.peaks_tsv (mixed); otherwise remove "
            "data.studies_tsv.")
    return problems


def _check_cross_keys(config: dict, source: str) -> None:
    """Raise the problems of :func:`_cross_key_problems` together."""
    problems = _cross_key_problems(config, source)
    if problems:
        raise MsnetInputErrors(problems, source)


def load_config(path) -> dict:
    """Read a YAML config file, validate it and fill defaults.

    Parameters
    ----------
    path : str or Path
        The YAML file.

    Returns
    -------
    dict
        The validated configuration.
    """
    path = Path(path)
    return validate_config(read_config_file(path), source=str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (YAML leaves the
    outcome undefined; PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: overriding is fine
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # unhashable key: the base class reports it
            if key in seen:
                raise MsnetInputError(
                    f"key '{key}' is given twice in the same section (lines "
                    f"{seen[key] + 1} and {key_node.start_mark.line + 1}); YAML would silently "
                    "keep the last one. Keep one of them."
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_config_file(path) -> dict:
    """Read a YAML config file as Snakemake would, with stricter checks.

    Refuses a missing file, invalid YAML, a key given twice in one mapping, an empty file
    and a top level that is not a mapping (Snakemake refuses the last two as well).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict
        The parsed (not yet validated) configuration.
    """
    path = Path(path)
    if not path.is_file():
        raise MsnetInputError(f"Config file {path} does not exist.")
    try:
        config = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (safe loader)
    except MsnetInputError as exc:
        raise MsnetInputError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise MsnetInputError(f"{path}: not valid YAML ({exc}).") from None
    if config is None:
        raise MsnetInputError(
            f"{path}: the config file is empty. Snakemake refuses an empty config file too; "
            "start from a copy of the repository's config.yaml (keys left out take their "
            "defaults), or write {} to use every default."
        )
    if not isinstance(config, dict):
        raise MsnetInputError(f"{path}: the top level must be a mapping of keys to values.")
    return config
