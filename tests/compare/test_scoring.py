"""text2brain.compare.scoring: confidence intervals, and failures that score 0."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from text2brain.compare.scoring import ModelScores, mean_ci


def test_mean_ci_is_the_t_interval() -> None:
    values = np.array([0.05, 0.07, 0.06, 0.08, 0.04])
    mean, low, high = mean_ci(values)
    expected = scipy.stats.t.interval(0.95, 4, loc=values.mean(), scale=scipy.stats.sem(values))
    assert (low, high) == pytest.approx(expected) and mean == pytest.approx(values.mean())


def test_no_answer_scores_0(better_and_worse: tuple[ModelScores, ModelScores]) -> None:
    better, worse = better_and_worse
    assert worse.dice_auc[2] == 0 and worse.dice_auc[0] > 0  # no answer scores 0
    assert worse.failure_rule == "scored 0" and better.failure_rule == "-"
