"""Where text2brain reads corpora from and writes derived files (maps, splits) to.

Corpus files and derived files are kept apart on purpose: a data folder may be read-only (a
shared copy of NeuroQuery), while rendered maps and splits need a writable cache.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "TEXT2BRAIN_DATA_DIR"
CACHE_DIR_ENV = "TEXT2BRAIN_CACHE_DIR"


def cache_dir() -> Path:
    """Writable cache: $TEXT2BRAIN_CACHE_DIR, else $XDG_CACHE_HOME/text2brain, else ~/.cache."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "text2brain"


def neuroquery_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """NeuroQuery files: the argument, else $TEXT2BRAIN_DATA_DIR, else <cache>/neuroquery."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return cache_dir() / "neuroquery"
