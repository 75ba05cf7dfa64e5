"""Retrieval for the contrastive heads, as plain torch: the article bank, maps and recall@k.

A contrastive head has no decoder: its map for a text is a *retrieval-based meta-analysis*,
the weighted average of the training-article maps whose embeddings lie nearest the text's
(`retrieval_weights`, `RetrievalBank.weighted_maps`). The `RetrievalBank` holds what that
needs once training is over, so a checkpoint answers queries without the corpus: the training
articles' ids, titles and keywords, their embeddings (float16) and what rebuilds their maps.

The maps are not stored: a `PeakMaps` keeps each article's peak coordinates (float32 mm), its
peak weight (1 / its number of tables: the article-average map) and the FWHM and brain space
they were rendered with, and the fast renderer (text2brain.brain.Renderer) rebuilds the maps a
query needs, each scaled to a largest absolute value of 1 (`scale_maps`): 20 maps in 2-7 ms
on one CPU core. On NeuroQuery's training split (10,086 articles, 354,037 peaks) a bank
takes about 12 MB (4.2 MB of peaks, 5.2 MB of 256-d float16 embeddings, the rest titles and
keywords) where the dense maps took 576 MB. Checkpoints written before kept the dense maps
(`DenseMaps`, float16); they still load, and save again as they are.

`recall_at_k` scores retrieval between paired texts and maps (row i of one modality matches
row i of the other), as NeuroConText and MNM report it; `hits_at_k` and `retrieval_hits` give
the per-query hits it averages (what `text2brain compare` puts confidence intervals on).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from text2brain.brain import BrainSpace, Renderer
from text2brain.lorentz import at_least_fp32
from text2brain.models.targets import scale_maps

#: Cut-offs of the logged recall metrics (`val/recall@10_t2b`, ...).
RECALL_KS = (10, 100)
#: Version of the bank's checkpoint entry: 1 (no "format" key) stored dense maps.
BANK_FORMAT = 2
_FLOAT16_MAX = float(torch.finfo(torch.float16).max)


def _rows(indices: Sequence[int] | Tensor | np.ndarray) -> np.ndarray:
    """Row indices as a 1-D int64 array."""
    if isinstance(indices, Tensor):
        indices = indices.detach().cpu().numpy()
    return np.asarray(indices, dtype=np.int64).reshape(-1)


# -- the bank's maps ---------------------------------------------------------------------------


class PeakMaps:
    """Article-average maps rebuilt from peaks on demand, as the data module renders them.

    Args:
        xyz: (P, 3) peak coordinates in mm, the peaks of article i being
            ``xyz[offsets[i]:offsets[i + 1]]`` (stored float32).
        offsets: (n + 1,) int64, non-decreasing, from 0 to P.
        weights: (n,) each article's peak weight (1 / its number of tables, so that the map is
            the mean of its table maps).
        space: the grid and mask the maps are rendered on.
        fwhm: the Gaussian kernel's full width at half maximum, mm.
    """

    def __init__(
        self, xyz: Tensor, offsets: Tensor, weights: Tensor, space: BrainSpace, fwhm: float
    ) -> None:
        xyz = torch.as_tensor(xyz, dtype=torch.float32)
        offsets = torch.as_tensor(offsets, dtype=torch.int64)
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f"bank peaks must be (n_peaks, 3), got {tuple(xyz.shape)}")
        n = len(weights)
        if offsets.shape != (n + 1,):
            raise ValueError(f"bank peak offsets must be ({n + 1},), got {tuple(offsets.shape)}")
        if n and (
            int(offsets[0]) != 0 or int(offsets[-1]) != len(xyz) or (offsets.diff() < 0).any()
        ):
            raise ValueError("bank peak offsets must rise from 0 to the number of peaks")
        if not (fwhm > 0):
            raise ValueError(f"the bank's fwhm must be > 0, got {fwhm}")
        self.xyz, self.offsets, self.weights = xyz, offsets, weights
        self.space, self.fwhm = space, float(fwhm)
        self._renderer: Renderer | None = None

    def __len__(self) -> int:
        return len(self.weights)

    @property
    def n_voxels(self) -> int:
        return self.space.n_voxels

    def render(self, indices: Sequence[int] | Tensor | np.ndarray) -> Tensor:
        """Scaled maps (m, n_voxels) float32 of bank rows `indices` (m,)."""
        rows = _rows(indices)
        if self._renderer is None:
            self._renderer = Renderer(self.space, self.fwhm)
        peaks, counts = self._peak_rows(rows)
        group = np.repeat(np.arange(len(rows)), counts)
        weights = np.repeat(self.weights.numpy()[rows], counts)
        maps = self._renderer(group, self.xyz.numpy()[peaks], weights, len(rows))
        return scale_maps(torch.from_numpy(maps))

    def _peak_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(peak indices, peaks per row) of bank rows `rows`: each row's peaks in turn."""
        offsets = self.offsets.numpy()
        starts, counts = offsets[rows], offsets[rows + 1] - offsets[rows]
        # Each run of peak indices starts at its article's offset.
        run_start = np.repeat(starts - np.cumsum(counts) + counts, counts)
        return run_start + np.arange(int(counts.sum())), counts

    def subset(self, rows: Sequence[int] | Tensor | np.ndarray) -> PeakMaps:
        """The maps of bank rows `rows` (m,), in that order, as a bank of their own."""
        rows = _rows(rows)
        peaks, counts = self._peak_rows(rows)
        new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return PeakMaps(
            self.xyz[torch.from_numpy(peaks)],
            torch.from_numpy(new_offsets),
            self.weights[torch.from_numpy(rows)],
            self.space,
            self.fwhm,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "xyz": self.xyz,
            "offsets": self.offsets,
            "weights": self.weights,
            "fwhm": self.fwhm,
            "space": self.space.to_dict(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> PeakMaps:
        return cls(
            state["xyz"],
            state["offsets"],
            state["weights"],
            BrainSpace.from_dict(state["space"]),
            state["fwhm"],
        )


class DenseMaps:
    """The maps themselves, (n, n_voxels) float16, already scaled: the banks of format 1."""

    def __init__(self, maps: Tensor) -> None:
        if maps.ndim != 2:
            raise ValueError(f"bank maps must be (n, n_voxels), got {tuple(maps.shape)}")
        self.maps = maps

    def __len__(self) -> int:
        return len(self.maps)

    @property
    def n_voxels(self) -> int:
        return int(self.maps.shape[1])

    def render(self, indices: Sequence[int] | Tensor | np.ndarray) -> Tensor:
        """Maps (m, n_voxels) float32 of bank rows `indices` (m,)."""
        return self.maps[torch.from_numpy(_rows(indices))].float()

    def to_dict(self) -> dict[str, Any]:
        return {"maps": self.maps}


BankMaps = PeakMaps | DenseMaps


# -- the bank ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelatedArticle:
    """A training article found by retrieval, with its distance to the query."""

    article_id: str
    title: str
    keywords: tuple[str, ...]
    distance: float


def compact_embeddings(embeddings: Tensor) -> Tensor:
    """Embeddings (n, d) on the CPU as float16, or float32 where float16 cannot hold them."""
    embeddings = embeddings.detach().cpu()
    if embeddings.numel() and float(embeddings.abs().max()) >= _FLOAT16_MAX:
        return embeddings.float()
    return embeddings.half()


@dataclass
class RetrievalBank:
    """Training articles for retrieval: ids, titles, keywords, maps and embeddings.

    `maps` rebuilds the articles' scaled maps (`PeakMaps`, or `DenseMaps` from an old
    checkpoint); `embeddings` (n, d), float16 on the CPU (`compact_embeddings`), are those of
    the head's weights when they were computed (None: not computed, or left out of a
    checkpoint because the weights had changed since).
    """

    ids: list[str]
    titles: list[str]
    keywords: list[list[str]]
    maps: BankMaps
    embeddings: Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not (len(self.titles) == len(self.keywords) == len(self.maps) == n):
            raise ValueError(
                f"the bank has {n} ids but {len(self.titles)} titles, {len(self.keywords)} "
                f"keyword lists and {len(self.maps)} maps"
            )
        if self.embeddings is not None and (
            self.embeddings.ndim != 2 or self.embeddings.shape[0] != n
        ):
            raise ValueError(
                f"bank embeddings must be ({n}, dim), got {tuple(self.embeddings.shape)}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_peaks(
        cls,
        ids: Sequence[str],
        peaks: tuple[np.ndarray, np.ndarray, np.ndarray],
        titles: Sequence[str],
        keywords: Sequence[Sequence[str]],
        space: BrainSpace,
        fwhm: float,
    ) -> RetrievalBank:
        """A bank (without embeddings) from the articles' (xyz, offsets, weights) peaks."""
        xyz, offsets, weights = (torch.from_numpy(np.ascontiguousarray(a)) for a in peaks)
        maps = PeakMaps(xyz, offsets, weights, space, fwhm)
        return cls(list(ids), list(titles), [list(k) for k in keywords], maps)

    @classmethod
    def from_maps(
        cls,
        ids: Sequence[str],
        maps: np.ndarray,
        titles: Sequence[str],
        keywords: Sequence[Sequence[str]],
        chunk: int = 1024,
    ) -> RetrievalBank:
        """A dense bank (without embeddings) from article maps, read in chunks (e.g.
        memory-mapped): the format-1 bank, for corpora without peaks."""
        scaled = torch.empty(maps.shape, dtype=torch.float16)
        for start in range(0, len(maps), chunk):
            block = torch.from_numpy(np.ascontiguousarray(maps[start : start + chunk]))
            scaled[start : start + chunk] = scale_maps(block.float()).half()
        return cls(list(ids), list(titles), [list(k) for k in keywords], DenseMaps(scaled))

    def render(self, indices: Sequence[int] | Tensor | np.ndarray) -> Tensor:
        """Scaled maps (m, n_voxels) float32 of bank rows `indices` (m,)."""
        return self.maps.render(indices)

    def subset(self, rows: Sequence[int] | Tensor | np.ndarray) -> RetrievalBank:
        """The bank of rows `rows` (m,), in that order (peaks only: a bank of dense maps
        or with embeddings is not cut)."""
        if not isinstance(self.maps, PeakMaps) or self.embeddings is not None:
            raise ValueError("only a bank of peaks without embeddings can be cut")
        rows = _rows(rows)
        return RetrievalBank(
            [self.ids[i] for i in rows],
            [self.titles[i] for i in rows],
            [list(self.keywords[i]) for i in rows],
            self.maps.subset(rows),
        )

    def weighted_maps(
        self,
        indices: Tensor,
        weights: Tensor,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """``sum_j weights[i, j] map[indices[i, j]]``: (n, k), (n, k) -> (n, n_voxels) float32.

        Each distinct row is rebuilt once, then passed through `transform` if given (the
        retrieval head's target transform); the result is on `weights`' device.
        """
        unique, inverse = torch.unique(indices.cpu(), return_inverse=True)
        maps = self.render(unique)
        return weighted_maps(maps if transform is None else transform(maps), inverse, weights)

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors, strings and lists: what `torch.load(weights_only=True)` reads back.

        `embeddings` is None when the caller leaves them out (stale: see RetrievalBankMixin).
        """
        state = {
            "format": BANK_FORMAT,
            "ids": list(self.ids),
            "titles": list(self.titles),
            "keywords": [list(k) for k in self.keywords],
            "embeddings": None if self.embeddings is None else compact_embeddings(self.embeddings),
        }
        if isinstance(self.maps, PeakMaps):
            state["peaks"] = self.maps.to_dict()
        else:  # an old bank saves as it came
            state.update(self.maps.to_dict())
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any], space: BrainSpace) -> RetrievalBank:
        """The bank of a checkpoint (dense maps or peaks); it must be on the head's `space`."""
        try:
            if "peaks" in state:
                maps: BankMaps = PeakMaps.from_dict(state["peaks"])
            else:
                maps = DenseMaps(state["maps"])
            embeddings = state.get("embeddings")
            bank = cls(
                list(state["ids"]),
                list(state["titles"]),
                [list(k) for k in state["keywords"]],
                maps,
                None if embeddings is None else compact_embeddings(embeddings),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ValueError(f"the checkpoint's retrieval bank is malformed: {err!r}") from err
        if bank.maps.n_voxels != space.n_voxels:
            raise ValueError(
                f"the checkpoint's retrieval bank has maps of {bank.maps.n_voxels} voxels, the "
                f"model's brain mask {space.n_voxels}"
            )
        if isinstance(maps, PeakMaps) and maps.space.to_dict() != space.to_dict():
            raise ValueError(
                "the checkpoint's retrieval bank was rendered on another grid or mask than the "
                "model's"
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

    A sparse (n, N) weight matrix times the bank (on the bank's device, then moved to
    `weights`'s): n k V multiply-adds without the (n, k, V) gather of the rows, which at 256
    queries x 200 neighbours x 28,542 voxels is 5.8 GB and 8x slower on a CPU. In fp32 even
    under autocast: bf16 sums would leave ties among the voxels that Dice ranks.
    """
    n, k = indices.shape
    if n * k == 0:
        return torch.zeros(n, maps.shape[1], device=weights.device)
    rows = torch.arange(n, device=maps.device).repeat_interleave(k)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_coo_tensor(
            torch.stack([rows, indices.to(maps.device).flatten()]),
            weights.detach().to(maps.device, torch.float32).flatten(),
            (n, maps.shape[0]),
        ).to_sparse_csr()
        with torch.autocast(maps.device.type, enabled=False):
            return (matrix @ maps.float()).to(weights.device)


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


def hits_at_k(distance: Tensor, k: int) -> Tensor:
    """Whether each row's match is among the `k` nearest columns: (n, n) -> (n,) bool.

    Per query, so that a comparison can give recall a confidence interval and pair two heads'
    queries in a test; `recall_at_k` is their mean.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return matching_ranks(distance) < k


def recall_at_k(distance: Tensor, k: int) -> Tensor:
    """Fraction of rows whose match is among the `k` nearest columns (0-d float tensor)."""
    return hits_at_k(distance, k).float().mean()


def retrieval_hits(distance: Tensor, ks: Sequence[int] = RECALL_KS) -> dict[str, Tensor]:
    """Per-query hits both ways: ``recall@{k}_t2b`` (rows of `distance`, texts x maps, as
    queries) and ``recall@{k}_b2t`` (its columns) -> (n,) bool, the names the heads log."""
    return {
        f"recall@{k}_{way}": hits_at_k(matrix, k)
        for way, matrix in (("t2b", distance), ("b2t", distance.transpose(0, 1)))
        for k in ks
    }
