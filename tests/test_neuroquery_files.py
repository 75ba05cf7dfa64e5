"""The pinned NeuroQuery files (text2brain.neuroquery_files), offline: missing, corrupt and
unknown files, verified downloads that leave nothing behind when they fail, the data folder's
defaults, and the tests' own isolation from the network and the user's cache."""

from __future__ import annotations

import hashlib
import http.client
import io
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from text2brain import neuroquery_files
from text2brain.neuroquery_files import COMMIT, FILES, URL, CorpusFileError, fetch_neuroquery_file
from text2brain.paths import CACHE_DIR_ENV, DATA_DIR_ENV

# -- NeuroQuery files, offline -------------------------------------------------------------------


def _url(name: str) -> str:
    return URL.format(commit=COMMIT, path=FILES[name][0])


def test_fetch_missing_file_offline(tmp_path: Path) -> None:
    name = "mask_img.nii.gz"
    with pytest.raises(CorpusFileError) as error:
        fetch_neuroquery_file(name, tmp_path)
    message = str(error.value)
    assert name in message
    assert DATA_DIR_ENV in message
    assert _url(name) in message
    assert COMMIT in message
    assert isinstance(error.value.__cause__, urllib.error.URLError)
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


def test_a_data_dir_that_is_a_file_says_so(tmp_path: Path) -> None:
    """It used to say that a NeuroQuery file is missing and could not be downloaded."""
    regular = tmp_path / "notes.txt"
    regular.write_text("not a folder\n")
    with pytest.raises(CorpusFileError, match=r"notes.txt' is a file, not a folder"):
        fetch_neuroquery_file("mask_img.nii.gz", regular)


def test_fetch_corrupt_file(tmp_path: Path) -> None:
    name = "vocabulary.csv"
    (tmp_path / name).write_bytes(b"not the NeuroQuery vocabulary")
    with pytest.raises(CorpusFileError, match="corrupt") as error:
        fetch_neuroquery_file(name, tmp_path)
    message = str(error.value)
    assert FILES[name][1] in message  # the expected sha256
    assert hashlib.sha256(b"not the NeuroQuery vocabulary").hexdigest() in message
    assert str(tmp_path / name) in message
    assert (tmp_path / name).exists()  # a user's file is reported, not deleted


def test_fetch_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="not a NeuroQuery file"):
        fetch_neuroquery_file("nope.txt", tmp_path)


class FakeServer:
    """Stands in for urllib.request.urlopen: serves `content` and records what was asked."""

    def __init__(self, content: bytes | Exception) -> None:
        self.content = content
        self.requests: list[tuple[str, object]] = []

    def __call__(self, url: str, timeout: object = None) -> io.BytesIO:
        self.requests.append((url, timeout))
        if isinstance(self.content, Exception):
            raise self.content
        return io.BytesIO(self.content)


@pytest.fixture
def fake_file(monkeypatch: pytest.MonkeyPatch) -> tuple[str, bytes]:
    """A made-up NeuroQuery file entry whose pinned sha256 is that of known content."""
    name, content = "fake-test-file.txt", b"pinned content\n" * 100
    monkeypatch.setitem(
        FILES, name, ("data/fake-test-file.txt", hashlib.sha256(content).hexdigest())
    )
    return name, content


def test_download_is_verified_and_moved_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_file: tuple[str, bytes]
) -> None:
    name, content = fake_file
    server = FakeServer(content)
    monkeypatch.setattr(urllib.request, "urlopen", server)
    folder = tmp_path / "not" / "yet" / "there"
    path = fetch_neuroquery_file(name, folder)
    assert path == folder / name
    assert path.read_bytes() == content
    assert [p.name for p in folder.iterdir()] == [name]
    assert server.requests == [(URL.format(commit=COMMIT, path="data/fake-test-file.txt"), 60)]
    # present and verified: no second download
    assert fetch_neuroquery_file(name, folder) == path
    assert len(server.requests) == 1
    # modified afterwards: verified again, and found corrupt
    path.write_bytes(b"tampered")
    with pytest.raises(CorpusFileError, match="corrupt"):
        fetch_neuroquery_file(name, folder)
    assert len(server.requests) == 1


def test_download_with_wrong_content_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_file: tuple[str, bytes]
) -> None:
    name, content = fake_file
    monkeypatch.setattr(urllib.request, "urlopen", FakeServer(content[:-1]))
    with pytest.raises(CorpusFileError, match="sha256") as error:
        fetch_neuroquery_file(name, tmp_path)
    assert FILES[name][1] in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_download_connection_error_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_file: tuple[str, bytes]
) -> None:
    name, _ = fake_file
    monkeypatch.setattr(urllib.request, "urlopen", FakeServer(ConnectionResetError("reset")))
    with pytest.raises(CorpusFileError, match="reset"):
        fetch_neuroquery_file(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_truncated_download_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_file: tuple[str, bytes]
) -> None:
    name, _ = fake_file

    class Truncated(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:
            raise http.client.IncompleteRead(b"partial")

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Truncated())
    try:
        with pytest.raises(CorpusFileError):
            fetch_neuroquery_file(name, tmp_path)
    finally:
        assert list(tmp_path.iterdir()) == []


def test_data_dir_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_file: tuple[str, bytes]
) -> None:
    name, content = fake_file
    monkeypatch.setattr(urllib.request, "urlopen", FakeServer(content))
    # $TEXT2BRAIN_DATA_DIR when set
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    assert fetch_neuroquery_file(name) == tmp_path / "data" / name
    # else <cache>/neuroquery
    monkeypatch.delenv(DATA_DIR_ENV)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    assert fetch_neuroquery_file(name) == tmp_path / "cache" / "neuroquery" / name


def test_tests_are_offline_with_a_private_cache(tmp_path: Path) -> None:
    """The conftest guard: no real download, no writes to the user's cache."""
    with pytest.raises(urllib.error.URLError, match="disabled"):
        urllib.request.urlopen("https://example.org")
    from text2brain.paths import cache_dir

    assert Path.home() / ".cache" not in cache_dir().parents
    assert neuroquery_files.urllib.request.urlopen is urllib.request.urlopen
