"""The retrieval functions of the contrastive heads (`text2brain.models.contrastive.retrieval`):
top-k weights, and recall@k against a brute-force count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from text2brain.models.contrastive.retrieval import (
    hits_at_k,
    matching_ranks,
    recall_at_k,
    retrieval_hits,
    retrieval_weights,
)


def test_retrieval_weights_top_k_and_temperature() -> None:
    distance = torch.tensor([[3.0, 0.0, 1.0, 2.0]])
    indices, weights = retrieval_weights(distance, k=2, temperature=0.5)
    assert indices.tolist() == [[1, 2]]
    torch.testing.assert_close(weights, torch.softmax(torch.tensor([[0.0, -2.0]]), dim=1))
    assert retrieval_weights(distance, k=10, temperature=1.0)[0].shape == (1, 4)


# -- recall@k ----------------------------------------------------------------------------------
def brute_force_recall(distance: np.ndarray, k: int) -> float:
    """Row i's match counts as found if fewer than k other columns are at most as far."""
    hits = 0
    for i, row in enumerate(distance):
        others = [row[j] for j in range(len(row)) if j != i]
        hits += sum(d <= row[i] for d in others) < k
    return hits / len(distance)


@pytest.mark.parametrize("seed", range(3))
def test_recall_matches_a_brute_force_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    distance = rng.integers(0, 6, size=(40, 40)).astype(np.float32)  # many ties
    for k in (1, 5, 10, 100):
        expected = brute_force_recall(distance, k)
        assert recall_at_k(torch.from_numpy(distance), k).item() == pytest.approx(expected)
        assert recall_at_k(torch.from_numpy(distance.T.copy()), k).item() == pytest.approx(
            brute_force_recall(distance.T, k)
        )


def test_recall_counts_ties_against_the_query() -> None:
    assert matching_ranks(torch.zeros(4, 4)).tolist() == [3, 3, 3, 3]
    assert recall_at_k(torch.zeros(4, 4), 3).item() == 0.0
    assert recall_at_k(torch.zeros(4, 4), 4).item() == 1.0
    with pytest.raises(ValueError, match="square"):
        matching_ranks(torch.zeros(3, 4))


def test_per_query_hits_both_ways() -> None:
    # Rows (texts): text 0 ties with map 2 (counted against it: rank 1), text 1's map is the
    # farthest of its row (rank 2), text 2's is second (rank 1). Columns (maps): map 1 finds
    # text 1 first; map 0 ties with text 2, map 2 is second.
    distance = torch.tensor([[0.0, 5.0, 0.0], [0.5, 4.0, 3.0], [0.0, 5.0, 1.0]])
    assert hits_at_k(distance, 1).tolist() == [False, False, False]
    assert hits_at_k(distance, 2).tolist() == [True, False, True]
    hits = retrieval_hits(distance, ks=(1, 2))
    assert list(hits) == ["recall@1_t2b", "recall@2_t2b", "recall@1_b2t", "recall@2_b2t"]
    assert hits["recall@1_b2t"].tolist() == [False, True, False]
    for name, hit in hits.items():
        matrix = distance if name.endswith("t2b") else distance.T
        k = int(name[len("recall@") : name.index("_")])
        assert hit.float().mean() == recall_at_k(matrix, k)
    with pytest.raises(ValueError, match="k must be >= 1"):
        hits_at_k(distance, 0)
