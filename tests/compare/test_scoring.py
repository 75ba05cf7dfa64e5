"""text2brain.compare.scoring: confidence intervals, the paired test of hits, failures that
score 0, and the contrastive heads' retrieval hits and hierarchy values."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch

from text2brain.compare.scoring import (
    ModelScores,
    estimate_ci,
    hierarchy_scores,
    mcnemar_p,
    mean_ci,
    retrieval_scores,
    wilson_ci,
)
from text2brain.inference import Predictor
from text2brain.models.contrastive.retrieval import RECALL_KS, recall_at_k


def test_mean_ci_is_the_t_interval() -> None:
    values = np.array([0.05, 0.07, 0.06, 0.08, 0.04])
    mean, low, high = mean_ci(values)
    expected = scipy.stats.t.interval(0.95, 4, loc=values.mean(), scale=scipy.stats.sem(values))
    assert (low, high) == pytest.approx(expected) and mean == pytest.approx(values.mean())


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # With z = 1.959964 (z^2 = 3.841459) and n = 10: 0/10 -> [0, z^2 / (n + z^2)],
        # 10/10 -> [n / (n + z^2), 1], 5/10 -> 1/2 -+ z sqrt(n/4 + z^2/4) / (n + z^2).
        (0, (0.0, 0.0, 0.277533)),
        (10, (1.0, 0.722467, 1.0)),
        (5, (0.5, 0.236593, 0.763407)),
    ],
)
def test_wilson_interval_by_hand(k: int, expected: tuple[float, float, float]) -> None:
    hits = np.arange(10) < k
    assert wilson_ci(hits) == pytest.approx(expected, abs=1e-6)
    assert estimate_ci(hits) == wilson_ci(hits)  # bool hits: Wilson


def test_estimate_ci_of_values_is_the_t_interval_and_of_nothing_nan() -> None:
    values = np.array([1.0, 2.0, 4.0])
    assert estimate_ci(values) == mean_ci(values)
    assert all(math.isnan(v) for v in wilson_ci(np.zeros(0, dtype=bool)))


def test_mcnemar_exact() -> None:
    # 5 queries only the best finds, 1 only the other: 2 P(X <= 1), X ~ Bin(6, 1/2) = 14/64.
    best = np.array([True] * 6 + [False] * 4)
    other = np.array([True, False, False, False, False, False, True, False, False, False])
    assert mcnemar_p(best, other) == pytest.approx(14 / 64)
    assert mcnemar_p(other, best) == pytest.approx(14 / 64)
    assert mcnemar_p(best, best) == 1.0  # no discordant query
    with pytest.raises(ValueError, match="one shape"):
        mcnemar_p(best, best[:3])


def test_no_answer_scores_0(better_and_worse: tuple[ModelScores, ModelScores]) -> None:
    better, worse = better_and_worse
    assert worse.dice_auc[2] == 0 and worse.dice_auc[0] > 0  # no answer scores 0
    assert worse.failure_rule == "scored 0" and better.failure_rule == "-"


# -- the contrastive heads ---------------------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["clip", "mnm"])
def test_retrieval_hits_are_the_heads_recall(
    contrastive_runs: dict[str, dict[str, Any]],
    contrastive_predictors: dict[str, Predictor],
    name: str,
) -> None:
    """On the training articles (64: recall@10 is not trivially 1), the hits' means are the
    head's `recall_at_k` of its own embeddings and distance."""
    predictor, data = contrastive_predictors[name], contrastive_runs[name]["data"]
    ids, maps = data.article_maps("train")
    corpus = data.corpus
    texts = [corpus.articles[corpus.index_of(i)].title for i in ids]
    hits = retrieval_scores(predictor, texts, maps)
    assert list(hits) == [f"recall@{k}_{way}" for way in ("t2b", "b2t") for k in RECALL_KS]
    model = predictor.model
    with torch.inference_mode():
        text = model._embed_texts(texts)
        brain = model.embed_map_chunks(len(maps), lambda s, e: torch.from_numpy(maps[s:e]))
        distance = model.net.geometry.cross_distance(text, brain)
        few = model.paired_retrieval_hits(texts, maps, ks=(1, 5))
    for way, matrix in (("t2b", distance), ("b2t", distance.T)):
        for k in RECALL_KS:
            hit = hits[f"recall@{k}_{way}"]
            assert hit.dtype == bool and hit.shape == (len(ids),)
            assert hit.mean() == pytest.approx(recall_at_k(matrix, k).item())
        for k in (1, 5):
            assert few[f"recall@{k}_{way}"].float().mean() == pytest.approx(
                recall_at_k(matrix, k).item()
            )
    assert 0 < hits["recall@10_t2b"].mean() < 1


@pytest.mark.usefixtures("one_thread")
def test_hierarchy_values_average_to_the_heads_measures(
    contrastive_runs: dict[str, dict[str, Any]], contrastive_predictors: dict[str, Predictor]
) -> None:
    predictor, data = contrastive_predictors["mnm"], contrastive_runs["mnm"]["data"]
    values = hierarchy_scores(predictor, data)
    with torch.inference_mode():
        measures = predictor.model.hierarchy_measures(data.hierarchy_sample("test", 500))
    assert set(values) == set(measures)
    for name, items in values.items():
        assert items.dtype == (bool if "dist0" not in name else np.float32)
        assert items.mean() == pytest.approx(measures[name].item(), rel=1e-5)


def test_heads_without_an_embedding_space_have_neither(tiny_predictor: Predictor) -> None:
    assert retrieval_scores(tiny_predictor, ["a"], np.zeros((1, 3), np.float32)) == {}
    assert hierarchy_scores(tiny_predictor, None) == {}
