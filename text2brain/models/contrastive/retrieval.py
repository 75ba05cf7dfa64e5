"""Retrieval for the contrastive heads, as plain torch: the article bank, maps and recall@k.

A contrastive head has no decoder: its map for a text is a *retrieval-based meta-analysis*,
the weighted average of the training-article maps whose embeddings lie nearest the text's
(`retrieval_weights`, `weighted_maps`). The `RetrievalBank` holds what that needs once training
is over, so a checkpoint answers queries without the corpus: the training articles' ids,
titles and keywords, their article-average maps (float16, each scaled to a largest absolute
value of 1) and their embeddings.

Size: the maps dominate, ``n_articles x n_voxels x 2`` bytes. On NeuroQuery's training split
(10,086 articles, 28,542 voxels) that is 576 MB (plus 10 MB of 256-d float32 embeddings), in
every checkpoint of a contrastive head (a whole MNM checkpoint with its optimizer state: 877 MB).

`recall_at_k` scores retrieval between paired texts and maps (row i of one modality matches
row i of the other), as NeuroConText and MNM report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from text2brain.lorentz import at_least_fp32

#: Cut-offs of the logged recall metrics (`val/recall@10_t2b`, ...).
RECALL_KS = (10, 100)
#: Floor of a map's largest absolute value when it is scaled (all-zero maps stay zero).
_TINY = 1e-12


def scale_maps(maps: Tensor) -> Tensor:
    """Each map divided by its largest absolute value: (n, n_voxels) -> the same shape.

    Why: an article-average map's scale says how many of its peaks overlap, not where the
    activation is; the brain encoder and the bank's weighted averages should see shapes only.
    """
    return maps / maps.abs().amax(dim=-1, keepdim=True).clamp_min(_TINY)


# -- the bank ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelatedArticle:
    """A training article found by retrieval, with its distance to the query."""

    article_id: str
    title: str
    keywords: tuple[str, ...]
    distance: float


@dataclass
class RetrievalBank:
    """Training articles for retrieval: ids, titles, keywords, maps and embeddings.

    `maps` (n, n_voxels) are float16 on the CPU, scaled by `scale_maps`; `embeddings` (n, d)
    float32 are those of the head's current weights (None until computed).
    """

    ids: list[str]
    titles: list[str]
    keywords: list[list[str]]
    maps: Tensor
    embeddings: Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not (len(self.titles) == len(self.keywords) == n):
            raise ValueError(
                f"the bank has {n} ids but {len(self.titles)} titles and {len(self.keywords)} "
                "keyword lists"
            )
        if self.maps.ndim != 2 or self.maps.shape[0] != n:
            raise ValueError(f"bank maps must be ({n}, n_voxels), got {tuple(self.maps.shape)}")
        if self.embeddings is not None and (
            self.embeddings.ndim != 2 or self.embeddings.shape[0] != n
        ):
            raise ValueError(
                f"bank embeddings must be ({n}, dim), got {tuple(self.embeddings.shape)}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_maps(
        cls,
        ids: Sequence[str],
        maps: np.ndarray,
        titles: Sequence[str],
        keywords: Sequence[Sequence[str]],
        chunk: int = 1024,
    ) -> RetrievalBank:
        """A bank (without embeddings) from article maps, read in chunks (e.g. memory-mapped)."""
        scaled = torch.empty(maps.shape, dtype=torch.float16)
        for start in range(0, len(maps), chunk):
            block = torch.from_numpy(np.ascontiguousarray(maps[start : start + chunk]))
            scaled[start : start + chunk] = scale_maps(block.float()).half()
        return cls(list(ids), list(titles), [list(k) for k in keywords], scaled)

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors, strings and lists: what `torch.load(weights_only=True)` reads back."""
        return {
            "ids": list(self.ids),
            "titles": list(self.titles),
            "keywords": [list(k) for k in self.keywords],
            "maps": self.maps,
            "embeddings": None if self.embeddings is None else self.embeddings.detach().cpu(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any], n_voxels: int) -> RetrievalBank:
        """The bank of a checkpoint; its maps must have the head's `n_voxels`."""
        try:
            bank = cls(
                list(state["ids"]),
                list(state["titles"]),
                [list(k) for k in state["keywords"]],
                state["maps"],
                state.get("embeddings"),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"the checkpoint's retrieval bank is malformed: {err!r}") from err
        if bank.maps.shape[1] != n_voxels:
            raise ValueError(
                f"the checkpoint's retrieval bank has maps of {bank.maps.shape[1]} voxels, the "
                f"model's brain mask {n_voxels}"
            )
        return bank

    def articles(self, indices: Tensor, distances: Tensor) -> list[list[RelatedArticle]]:
        """`RelatedArticle` rows for (n, k) bank indices and their distances."""
        return [
            [
                RelatedArticle(self.ids[i], self.titles[i], tuple(self.keywords[i]), d)
                for i, d in zip(row, dist, strict=True)
            ]
            for row, dist in zip(indices.tolist(), distances.float().tolist(), strict=True)
        ]


# -- maps from retrieval -----------------------------------------------------------------------


@at_least_fp32
def retrieval_weights(
    distance: Tensor, k: int, temperature: Tensor | float
) -> tuple[Tensor, Tensor]:
    """The `k` nearest bank entries of each query and their weights.

    `distance` (n, N) -> indices (n, k') and weights (n, k') with ``k' = min(k, N)``, the
    weights ``softmax(-distance / temperature)`` over those k' (each row sums to 1).
    """
    nearest, indices = distance.topk(min(k, distance.shape[1]), dim=1, largest=False)
    return indices, torch.softmax(-nearest / temperature, dim=1)


def weighted_maps(maps: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
    """``sum_j weights[i, j] maps[indices[i, j]]``: (N, V) bank, (n, k) -> (n, V) float32.

    Only the n x k rows needed are gathered (on the bank's device) and moved to `weights`'s.
    In fp32 even under autocast: bf16 sums would leave ties among the voxels that Dice ranks.
    """
    rows = maps[indices.to(maps.device)].to(weights.device, torch.float32)
    with torch.autocast(weights.device.type, enabled=False):
        return torch.einsum("nk,nkv->nv", weights.float(), rows)


# -- recall ------------------------------------------------------------------------------------


def matching_ranks(distance: Tensor) -> Tensor:
    """0-based rank of each row's match (the diagonal) among that row's columns.

    `distance` (n, n), row i's match is column i. A tie counts against the query (the rank is
    the number of *other* columns at most as far as the match): a collapsed model whose
    embeddings are all equal then ranks every match last, instead of first.
    """
    if distance.ndim != 2 or distance.shape[0] != distance.shape[1]:
        raise ValueError(f"expected a square distance matrix, got {tuple(distance.shape)}")
    match = distance.diagonal().unsqueeze(1)
    return (distance <= match).sum(dim=1) - 1


def recall_at_k(distance: Tensor, k: int) -> Tensor:
    """Fraction of rows whose match is among the `k` nearest columns (0-d float tensor)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return (matching_ranks(distance) < k).float().mean()


class EmbeddingCollector(Metric):
    """Paired text and brain embeddings of an evaluation epoch, gathered over DDP ranks.

    `compute` returns both (n, d) matrices in batch order; recall needs the whole set, since
    every map is a candidate for every text.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("text", default=[], dist_reduce_fx="cat")
        self.add_state("brain", default=[], dist_reduce_fx="cat")

    def update(self, text: Tensor, brain: Tensor) -> None:
        if text.shape[0] != brain.shape[0]:
            raise ValueError(f"{text.shape[0]} text but {brain.shape[0]} brain embeddings")
        self.text.append(text.detach().float())
        self.brain.append(brain.detach().float())

    def compute(self) -> tuple[Tensor, Tensor]:
        return dim_zero_cat(self.text), dim_zero_cat(self.brain)
