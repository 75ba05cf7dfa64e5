"""Shared test fixtures: a small synthetic brain space, random peaks, the NeuroQuery folder.

Every test runs offline and with a private cache folder (see `_offline_and_private_cache`).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from text2brain.brain import BrainSpace
from text2brain.paths import CACHE_DIR_ENV, DATA_DIR_ENV

#: Where the shared NeuroQuery copy lives relative to this repository (<repo>/../shared/...).
SHARED_NEUROQUERY = Path(__file__).resolve().parents[2] / "shared" / "data" / "neuroquery"
NEUROQUERY_MASK = "mask_img.nii.gz"


# -- isolation ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("text2brain-cache")


@pytest.fixture(autouse=True)
def _offline_and_private_cache(monkeypatch: pytest.MonkeyPatch, _session_cache_dir: Path) -> None:
    """No test touches the network or ~/.cache.

    `urllib.request.urlopen` (text2brain's only downloader) fails as it would offline, and
    $TEXT2BRAIN_CACHE_DIR points at a temporary folder shared by the test session. Tests that
    need a "download" monkeypatch `urlopen` again themselves.
    """

    def refuse(url: object, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(f"network access is disabled in tests (asked for {url})")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv(CACHE_DIR_ENV, str(_session_cache_dir))


# -- synthetic brain space and peaks -----------------------------------------------------------


def ellipsoid_space(
    shape: tuple[int, int, int] = (12, 14, 12),
    voxel_size: float = 4.0,
    origin: tuple[float, float, float] = (-24.0, -28.0, -24.0),
) -> BrainSpace:
    """A box of `voxel_size` mm voxels from `origin` mm whose brain is the inscribed ellipsoid."""
    centre = (np.asarray(shape) - 1) / 2
    half = np.asarray(shape) / 2
    ijk = np.indices(shape).reshape(3, -1).T
    mask = (((ijk - centre) / half) ** 2).sum(axis=1) <= 1.0
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = origin
    return BrainSpace(mask.reshape(shape), affine)


@pytest.fixture
def small_space() -> BrainSpace:
    """A 12x14x12 grid of 4 mm voxels from (-24, -28, -24) mm, brain = inscribed ellipsoid.

    Grid centres: x in [-24, 20], y in [-28, 24], z in [-24, 20] mm; voxel (6, 7, 6) is at
    (0, 0, 0) mm; the box corners are outside the mask.
    """
    return ellipsoid_space()


def random_coordinates(
    space: BrainSpace,
    n_articles: int = 4,
    max_tables: int = 3,
    max_peaks: int = 5,
    margin: int = 4,
    seed: int = 0,
) -> pd.DataFrame:
    """Random peaks (columns id, table_id, x, y, z in mm) for articles "a0", "a1", ...

    Each article gets 1..max_tables tables ("t0", ...) of 1..max_peaks peaks, at continuous
    positions whose nearest voxel is at least `margin` voxels from every face of the grid
    (margin 4 keeps a 9 mm FWHM kernel on a 4 mm grid clear of the grid boundary).
    """
    rng = np.random.default_rng(seed)
    low = np.full(3, margin - 0.49)
    high = np.asarray(space.shape) - 1 - margin + 0.49
    if (high < low).any():
        raise ValueError(f"margin {margin} leaves no room in a {space.shape} grid")
    rows = []
    for a in range(n_articles):
        for t in range(int(rng.integers(1, max_tables + 1))):
            for _ in range(int(rng.integers(1, max_peaks + 1))):
                voxel = rng.uniform(low, high)
                x, y, z = space.affine[:3, 3] + voxel * space.voxel_size
                rows.append((f"a{a}", f"t{t}", x, y, z))
    return pd.DataFrame(rows, columns=["id", "table_id", "x", "y", "z"])


@pytest.fixture
def make_coordinates() -> Callable[..., pd.DataFrame]:
    """`random_coordinates` (space, n_articles, max_tables, max_peaks, margin, seed)."""
    return random_coordinates


# -- shared NeuroQuery corpus ------------------------------------------------------------------


@pytest.fixture(scope="session")
def neuroquery_dir() -> Path:
    """The shared NeuroQuery folder: $TEXT2BRAIN_DATA_DIR, else <repo>/../shared/data/neuroquery."""
    candidates = []
    if os.environ.get(DATA_DIR_ENV):
        candidates.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
    candidates.append(SHARED_NEUROQUERY)
    for folder in candidates:
        if (folder / NEUROQUERY_MASK).is_file():
            return folder
    pytest.skip(f"NeuroQuery corpus not found; set {DATA_DIR_ENV}")
