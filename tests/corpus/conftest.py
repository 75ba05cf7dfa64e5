"""Fixtures of the corpus loaders' tests: a small box-shaped brain space and a warning check."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from text2brain.brain import BrainSpace


@pytest.fixture
def space() -> BrainSpace:
    """A 10x12x10 grid of 4 mm voxels from (-20, -24, -20) mm; the outer voxel layer is not brain.

    Grid: x in [-20, 16], y in [-24, 20], z in [-20, 16] mm; brain: one voxel further in.
    (It stands in for tests/conftest.py's `space` in these tests.)
    """
    mask = np.zeros((10, 12, 10), dtype=bool)
    mask[1:-1, 1:-1, 1:-1] = True
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-20.0, -24.0, -20.0]
    return BrainSpace(mask, affine)


@pytest.fixture
def single_warning() -> Callable[[pytest.WarningsRecorder], str]:
    """single_warning(record): the message of the one warning `record` caught (asserted)."""

    def message(record: pytest.WarningsRecorder) -> str:
        messages = [str(w.message) for w in record]
        assert len(messages) == 1, messages
        return messages[0]

    return message
