"""Repository housekeeping: licence, citation metadata, dependency declarations, profiles."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_license_file_matches_pyproject():
    assert PYPROJECT["license"] == {"text": "MIT"}
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text
    assert re.search(r"Copyright \(c\) \d{4} msnet developers", text)


def test_citation_cff_is_valid_cff_1_2_0():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    # required keys of the CFF 1.2.0 schema, and the types it allows
    assert cff["cff-version"] == "1.2.0"
    assert isinstance(cff["message"], str) and cff["message"].strip()
    assert isinstance(cff["title"], str) and cff["title"].strip()
    assert isinstance(cff["authors"], list) and cff["authors"]
    for author in cff["authors"]:  # a person (family-names) or an entity (name)
        assert author.get("name") or author.get("family-names"), author
    assert cff["authors"] == [{"name": "msnet developers"}]
    assert cff.get("type", "software") in ("software", "dataset")
    assert str(cff["version"]) == PYPROJECT["version"]
    assert cff["license"] == PYPROJECT["license"]["text"]
    known = {"abstract", "authors", "cff-version", "commit", "contact", "date-released", "doi",
             "identifiers", "keywords", "license", "license-url", "message", "preferred-citation",
             "references", "repository", "repository-artifact", "repository-code", "title",
             "type", "url", "version"}
    assert set(cff) <= known, set(cff) - known  # the schema allows no other keys


def test_every_dependency_says_why_and_pymare_is_test_only():
    text = (REPO / "pyproject.toml").read_text()
    block = text[text.index("dependencies = ["):text.index("]", text.index("dependencies = ["))]
    lines = block.splitlines()[1:]
    for k, line in enumerate(lines):
        if line.strip().startswith('"'):  # a requirement: a comment on its line or just above
            assert "#" in line or lines[k - 1].strip().startswith("#"), line
    names = [re.split(r"[<>=!~ ]", d)[0].lower() for d in PYPROJECT["dependencies"]]
    assert "pymare" not in names  # msnet imports PyMARE only in tests and benchmarks
    assert any(d.startswith("pymare") for d in PYPROJECT["optional-dependencies"]["test"])
    imported = [p for p in (REPO / "src").rglob("*.py")
                if re.search(r"^\s*(import|from) pymare", p.read_text(), flags=re.M)]
    assert not imported


def test_every_profile_is_one_snakemake_loads_or_the_readme_names():
    """A profile folder Snakemake never loads misleads: Snakemake 9 loads a workflow profile
    from ``profiles/default`` next to the Snakefile or the working directory by itself, any
    other only when named with ``--profile``/``--workflow-profile``."""
    readme = (REPO / "README.md").read_text()
    for profile in (REPO / "workflow" / "profiles").iterdir():
        assert f"--profile workflow/profiles/{profile.name}" in readme, profile
