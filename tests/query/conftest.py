"""Fixtures of the `text2brain query` tests (the checkpoints they query are tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from text2brain.cli import main


@pytest.fixture
def index_lines() -> Callable[[Path], list[str]]:
    """The lines of an output folder's queries.tsv, as written."""

    def read(folder: Path) -> list[str]:
        return (folder / "queries.tsv").read_text(encoding="utf-8").removesuffix("\n").split("\n")

    return read


@pytest.fixture
def query_error(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], str]:
    """query_error(argv): `text2brain <argv>` must fail with exit status 2 and one line on
    stderr, "text2brain query: error: ..." naming the problem; that line."""

    def run(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("text2brain query: error: ") and "\n" not in err, err
        return err

    return run
