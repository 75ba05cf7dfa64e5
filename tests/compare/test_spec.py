"""text2brain.compare.spec: a bad comparison file is named, with what is wrong in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from text2brain.compare.spec import PAPER_QUERIES, load_spec


def test_bad_comparison_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "compare.yaml"
    path.write_text("models: {}\n")
    with pytest.raises(ValueError, match="non-empty 'models'"):
        load_spec(path)
    path.write_text("models: {a: a.ckpt}\nmodel: x\n")
    with pytest.raises(ValueError, match=r"unknown keys \['model'\]"):
        load_spec(path)
    path.write_text("models: {a: {args: [x]}}\n")
    with pytest.raises(ValueError, match="model 'a' needs a config or checkpoint"):
        load_spec(path)
    path.write_text("models: {a: a.ckpt}\nqueries: ['']\n")
    with pytest.raises(ValueError, match="queries"):
        load_spec(path)


def test_a_comparison_file_is_read_with_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "compare.yaml"
    path.write_text("models: {a: a.ckpt, b: {config: b.yaml, args: [--seed_everything, 1]}}\n")
    spec = load_spec(path)
    assert spec["out_dir"] == Path("runs/compare") and spec["data"] == {}
    assert spec["queries"] == list(PAPER_QUERIES)
    assert spec["models"] == {
        "a": {"source": "a.ckpt", "args": []},
        "b": {"source": "b.yaml", "args": ["--seed_everything", "1"]},
    }
