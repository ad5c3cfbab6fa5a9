"""The install maps the top-level folders into the ``damselfly`` namespace: every package
must be listed in pyproject.toml, or the wheel (and the Docker image) silently lacks it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_installed_under_damselfly() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {d: "damselfly." + d for d in setuptools["package-dir"].values()}
    found = {
        folders[init.parent.relative_to(ROOT).parts[0]]
        + "".join("." + part for part in init.parent.relative_to(ROOT).parts[1:])
        for top in folders for init in (ROOT / top).rglob("__init__.py")}
    assert found == set(setuptools["packages"])


def test_mypy_reads_the_namespace_through_links_to_the_folders() -> None:
    for folder in ("events", "services", "projections", "dashboards"):
        link = ROOT / ".typecheck" / "damselfly" / folder
        assert link.is_symlink() and link.resolve() == ROOT / folder
