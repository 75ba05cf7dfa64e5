"""Fixtures of the `text2brain compare` tests."""

from __future__ import annotations

import numpy as np
import pytest

from text2brain.compare.scoring import ModelScores
from text2brain.metrics import DICE_THRESHOLDS


@pytest.fixture
def better_and_worse() -> tuple[ModelScores, ModelScores]:
    """Two models' scores on 5 articles: the better one answers every text; the worse one,
    0.1 lower at every threshold, knows no term of article 2, which scores 0 (no answer)."""
    curves = np.tile(np.linspace(0.1, 0.3, len(DICE_THRESHOLDS)), (5, 1))
    better = ModelScores("a", "a.ckpt", curves + 0.1, np.zeros(5), np.ones(5, bool), None)
    known = np.array([True, True, False, True, True])
    worse = ModelScores("b", "b.ckpt", curves, np.zeros(5), known, "zero")
    return better, worse
