"""The package list in pyproject.toml (explicit, because checkpoints/ is mapped into it)."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_subpackage() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "text2brain").rglob("__init__.py")
    }
    mapped = set(config["package-dir"])
    assert set(config["packages"]) == found | mapped, (
        "pyproject.toml's [tool.setuptools] packages must list every text2brain subpackage"
    )
    assert config["package-dir"]["text2brain.checkpoints"] == "checkpoints"
    assert (ROOT / "checkpoints" / "__init__.py").is_file()
