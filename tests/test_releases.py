"""Released models by name (text2brain.releases): a folder's name or its head's, one clear
error for any other name, and load_predictor's names next to its paths; on tiny releases
(conftest's `tiny_releases`: `mnm-tiny` and `text2brain-tiny`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import text2brain.releases
from text2brain.inference import load_predictor
from text2brain.releases import (
    UnknownReleaseError,
    describe_releases,
    release_head,
    released_models,
    resolve_release,
)


def test_releases_are_the_export_folders(tiny_releases: Path) -> None:
    (tiny_releases / "not-an-export").mkdir(exist_ok=True)
    (tiny_releases / "README.md").write_text("notes")
    assert released_models() == {
        "mnm-tiny": tiny_releases / "mnm-tiny",
        "text2brain-tiny": tiny_releases / "text2brain-tiny",
    }
    assert release_head(tiny_releases / "mnm-tiny") == "mnm"
    assert describe_releases() == "mnm-tiny (mnm), text2brain-tiny (text2brain)"


@pytest.mark.parametrize(
    ("name", "folder"),
    [("mnm-tiny", "mnm-tiny"), ("mnm", "mnm-tiny"), ("text2brain", "text2brain-tiny")],
)
def test_a_release_is_named_by_its_folder_or_its_head(
    tiny_releases: Path, name: str, folder: str
) -> None:
    assert resolve_release(name) == tiny_releases / folder


def test_unknown_and_ambiguous_names_list_the_releases(tiny_releases: Path) -> None:
    listed = r"released models: mnm-tiny \(mnm\), text2brain-tiny \(text2brain\)"
    with pytest.raises(UnknownReleaseError, match="no released model is named 'clip'.*" + listed):
        resolve_release("clip")
    shutil.copytree(tiny_releases / "mnm-tiny", tiny_releases / "mnm-other")
    try:
        with pytest.raises(
            UnknownReleaseError, match=r"several .* head 'mnm' \(mnm-other, mnm-tiny"
        ):
            resolve_release("mnm")
        assert resolve_release("mnm-other") == tiny_releases / "mnm-other"
    finally:
        shutil.rmtree(tiny_releases / "mnm-other")


def test_no_releases_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text2brain.releases, "RELEASES_DIR", tmp_path / "none")
    assert released_models() == {}
    with pytest.raises(UnknownReleaseError, match="none is installed"):
        resolve_release("mnm")


def test_load_predictor_takes_names_and_paths(
    tiny_releases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = load_predictor("mnm", device="cpu")
    assert type(predictor.model).__name__ == "MNM"
    assert [a.article_id for a in predictor.related_articles("pain", k=3)] == [
        a.article_id for a in load_predictor("mnm-tiny", device="cpu").related_articles("pain", 3)
    ]
    neither = r"'clip' is neither a released model nor an existing checkpoint.*mnm-tiny \(mnm\)"
    with pytest.raises(FileNotFoundError, match=neither):
        load_predictor("clip", device="cpu")
    # A Path, or a str with a folder in it, is a path even where it looks like a name.
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_releases / "text2brain-tiny", tmp_path / "clip")
    assert type(load_predictor("clip", device="cpu").model).__name__ != "MNM"
    with pytest.raises(FileNotFoundError, match="'mnm' does not exist"):
        load_predictor(Path("mnm"), device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_predictor("./mnm", device="cpu")
