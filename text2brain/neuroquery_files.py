"""The pinned NeuroQuery files: download, sha256 check, location.

Below the brain space and the corpus in the package's layers: `BrainSpace.neuroquery()` reads
the NeuroQuery mask and `text2brain.corpus.neuroquery` the corpus files, both through
`fetch_neuroquery_file`, so neither imports the other. The expected hashes are pinned here.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from text2brain.paths import DATA_DIR_ENV, neuroquery_data_dir

COMMIT = "4580f86267fb7c14ac1f601e298cbed898d79f2d"
URL = "https://raw.githubusercontent.com/neuroquery/neuroquery_data/{commit}/{path}"
VERSION_PREFIX = "data-neuroquery_version-1_"
VOCAB = "vocab-neuroquery156521"

#: file name -> (upstream path, sha256)
FILES: dict[str, tuple[str, str]] = {
    "LICENSE": (
        "LICENSE",
        "f2448f4467b33827570df47be6173d64bca5c8a45c1b1815793321f47571fd3d",
    ),
    f"{VERSION_PREFIX}coordinates.tsv.gz": (
        f"data/{VERSION_PREFIX}coordinates.tsv.gz",
        "b97cf50346dc8a6f78b3c02c8a19680679d7dbdf35f760a1032e46c2cad3666c",
    ),
    f"{VERSION_PREFIX}metadata.tsv.gz": (
        f"data/{VERSION_PREFIX}metadata.tsv.gz",
        "d84d2c7b2e2ca1692381419833fde043fb42d279014104c3c957feeeece140ea",
    ),
    f"{VERSION_PREFIX}{VOCAB}_source-abstract_type-count_features.npz": (
        f"data/{VERSION_PREFIX}{VOCAB}_source-abstract_type-count_features.npz",
        "1afb653a7c638377dae3ac9785e0e7ba04d62d89ecbd4c2b2dee8514365138c8",
    ),
    f"{VERSION_PREFIX}{VOCAB}_source-keywords_type-count_features.npz": (
        f"data/{VERSION_PREFIX}{VOCAB}_source-keywords_type-count_features.npz",
        "dcdef30aa83e794cde4ff04a554d76446ca1599f1c304eb45286ad201479a2e1",
    ),
    f"{VERSION_PREFIX}{VOCAB}_source-title_type-count_features.npz": (
        f"data/{VERSION_PREFIX}{VOCAB}_source-title_type-count_features.npz",
        "ce0f1aa8453531bbe9f9132ddc645648a9c59edac5583bb8f29a4255e74bdf31",
    ),
    f"{VERSION_PREFIX}{VOCAB}_vocabulary.txt": (
        f"data/{VERSION_PREFIX}{VOCAB}_vocabulary.txt",
        "54a768ac2cd266f38a3010a20fd8b10abb107677776c8bda7060c8f9a4517793",
    ),
    f"{VERSION_PREFIX}vocab-neuroquery7547_source-abstract_type-count_features.npz": (
        f"data/{VERSION_PREFIX}vocab-neuroquery7547_source-abstract_type-count_features.npz",
        "79c38b2515a316b711eef1ef1737ba57ce720d79d8506b7a08da6639418cf60a",
    ),
    f"{VERSION_PREFIX}vocab-neuroquery7547_source-keywords_type-count_features.npz": (
        f"data/{VERSION_PREFIX}vocab-neuroquery7547_source-keywords_type-count_features.npz",
        "01c51de4b0f58194725c0c160e529c1c59cd812b83e51a693924be824f0e9c1b",
    ),
    f"{VERSION_PREFIX}vocab-neuroquery7547_source-title_type-count_features.npz": (
        f"data/{VERSION_PREFIX}vocab-neuroquery7547_source-title_type-count_features.npz",
        "c8243762f0f4c705c7ec60246c25e36785f0ea555dc914f85ede08a623afec74",
    ),
    f"{VERSION_PREFIX}vocab-neuroquery7547_vocabulary.txt": (
        f"data/{VERSION_PREFIX}vocab-neuroquery7547_vocabulary.txt",
        "ae4a13380451797735d3df142fb8b4b3792056fbf79471454aa40e12bec7717b",
    ),
    "mask_img.nii.gz": (
        "neuroquery_model/mask_img.nii.gz",
        "22ef7e6b2d18f3c3c42a21c6c0fdb631608e0b1d98277aeee14a518a1c76a526",
    ),
    "vocabulary.csv": (
        "neuroquery_model/vocabulary.csv",
        "6123146c5fdc6839d2021b7421c6a35c82b594cf57193716ceb776e2255bb4b8",
    ),
    "vocabulary.csv_voc_mapping_identity.json": (
        "neuroquery_model/vocabulary.csv_voc_mapping_identity.json",
        "2a91deb4fe4cacca9d9803f08ba5579655b5130e85bb26a9d8bee0f742fbfa2a",
    ),
}

_VERIFIED: set[tuple[Path, float, int]] = set()


class CorpusFileError(RuntimeError):
    """A corpus file is missing, cannot be downloaded or fails its checksum."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_neuroquery_file(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of a verified NeuroQuery file, downloading it into the data dir if absent."""
    if name not in FILES:
        raise KeyError(f"{name!r} is not a NeuroQuery file; known: {sorted(FILES)}")
    upstream, expected = FILES[name]
    folder = neuroquery_data_dir(data_dir)
    if folder.exists() and not folder.is_dir():
        raise CorpusFileError(
            f"the NeuroQuery data folder {str(folder)!r} is a file, not a folder: pass the "
            f"folder that holds the NeuroQuery files (--data-dir, data_dir or {DATA_DIR_ENV})"
        )
    path = folder / name
    url = URL.format(commit=COMMIT, path=upstream)
    if not path.exists():
        _download(url, path, expected)
    stat = path.stat()
    key = (path.resolve(), stat.st_mtime, stat.st_size)
    if key not in _VERIFIED:
        actual = sha256_of(path)
        if actual != expected:
            raise CorpusFileError(
                f"NeuroQuery file {path} is corrupt (sha256 {actual}, expected {expected}). "
                f"Delete it so text2brain downloads it again, or replace it with {url}"
            )
        _VERIFIED.add(key)
    return path


def fetch_neuroquery(data_dir: str | os.PathLike | None = None) -> Path:
    """Make sure every pinned NeuroQuery file is present and verified; return the folder."""
    for name in FILES:
        fetch_neuroquery_file(name, data_dir)
    return neuroquery_data_dir(data_dir)


def _download(url: str, path: Path, expected: str) -> None:
    """Download to a hidden temporary file, verify, then move into place; never leave a part."""
    tmp: Path | None = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False
            ) as file:
                tmp = Path(file.name)
                with urllib.request.urlopen(url, timeout=60) as response:
                    shutil.copyfileobj(response, file)
        except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
            raise CorpusFileError(
                f"NeuroQuery file {path.name} is missing from {path.parent} and could not be "
                f"downloaded from {url} ({err!r}). Offline? Copy the NeuroQuery files into a "
                f"folder and point {DATA_DIR_ENV} (or the data module's data_dir) at it."
            ) from err
        actual = sha256_of(tmp)
        if actual != expected:
            raise CorpusFileError(
                f"download of {url} has sha256 {actual}, expected {expected}; try again later"
            )
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
