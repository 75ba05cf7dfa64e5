"""Fixtures of the `text2brain query` tests (the checkpoint they query is tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def index_lines() -> Callable[[Path], list[str]]:
    """The lines of an output folder's queries.tsv, as written."""

    def read(folder: Path) -> list[str]:
        return (folder / "queries.tsv").read_text(encoding="utf-8").removesuffix("\n").split("\n")

    return read
