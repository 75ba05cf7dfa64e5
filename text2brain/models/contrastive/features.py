"""Cached features for the contrastive heads: a closed-form basis of the maps, MLP towers, and
the tables a feature-trained epoch draws its batches from. Plain torch and numpy, no Lightning.

Why (MNM's official code, ../shared REFERENCE §6b): contrastive learning lives on negatives,
and the paper trains at batch 4096 for 200 epochs. That is affordable on a CPU only when a
training step sees two small MLPs over fixed inputs: the frozen text encoder's vectors (cached
once, text2brain.models.embedding_cache) and each map's coefficients in a basis fitted once in
closed form on the training maps (`MapBasis`, a PCA of the transformed maps; the official code
uses DiFuMo-512 atlas coefficients, which do not install offline). Rendering a map and
projecting it gives the same coefficients as the cached row, so evaluation, retrieval and
user maps go through the same `MapBasis`.

`FeatureTables` holds one epoch's material: per training article its texts' vectors, its map's
coefficients and breadth, and its tables' coefficients and breadths (the intra-brain
hierarchy); `FeatureBatches` draws a batch from it for a set of article rows (one text per
article, up to N of its tables), vectorised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from text2brain.models.targets import parse_transform, scaled_targets

#: A voxel counts towards a map's breadth when it reaches this fraction of the map's maximum.
BREADTH_FRACTION = 0.05
#: Maps per chunk when maps are transformed and projected.
CHUNK = 2048


def map_breadth(maps: Tensor) -> Tensor:
    """Breadth of each map (n, n_voxels) -> (n,) float: how many voxels reach
    `BREADTH_FRACTION` of its maximum (an article average covers more than one table)."""
    top = maps.amax(dim=1, keepdim=True).clamp_min(1e-12)
    return (maps >= BREADTH_FRACTION * top).sum(dim=1).float()


class MapBasis(nn.Module):
    """Coefficients of maps in a PCA basis of the training maps, each component standardised.

    Maps are max-scaled and passed through `transform` (text2brain.models.targets) first, the
    scale the retrieval maps are scored on. Buffers: `mean` (n_voxels,), `components`
    (n_components, n_voxels) orthonormal rows, `scale` (n_components,) the training
    coefficients' standard deviations; all zero / one until `fit`.

    Args:
        n_voxels: mask voxels of a map.
        n_components: basis size.
        transform: the monotone map transform before projection ("power:0.1", "none", ...).
    """

    def __init__(self, n_voxels: int, n_components: int = 256, transform: str = "power:0.1"):
        super().__init__()
        if isinstance(n_components, bool) or not isinstance(n_components, int):
            raise ValueError(f"n_components must be an int, got {n_components!r}")
        if not 1 <= n_components <= n_voxels:
            raise ValueError(f"n_components must be in [1, {n_voxels}], got {n_components}")
        parse_transform(transform)  # a bad name fails here, not at fit
        self.transform = transform
        self.register_buffer("mean", torch.zeros(n_voxels))
        self.register_buffer("components", torch.zeros(n_components, n_voxels))
        self.register_buffer("scale", torch.ones(n_components))
        self.register_buffer("explained", torch.zeros(()))

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    @property
    def fitted(self) -> bool:
        return bool(self.components.abs().sum() > 0)

    @torch.no_grad()
    def fit(self, maps: np.ndarray | Tensor, seed: int = 0) -> None:
        """Fit from training maps (n, n_voxels), raw or memory-mapped: a randomised SVD of the
        centred transformed maps (4 power iterations), seeded so a refit is identical."""
        n = len(maps)
        if n <= self.n_components:
            raise ValueError(
                f"a basis of {self.n_components} components needs more than that many training "
                f"maps, got {n}"
            )
        x = torch.cat(
            [
                scaled_targets(
                    torch.as_tensor(np.asarray(maps[s : s + CHUNK]), dtype=torch.float32),
                    self.transform,
                )
                for s in range(0, n, CHUNK)
            ]
        )
        mean = x.mean(dim=0)
        x -= mean
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, _, v = torch.svd_lowrank(x, q=min(self.n_components + 16, min(x.shape)), niter=4)
        components = v[:, : self.n_components].T.contiguous()
        coefficients = x @ components.T
        self.mean.copy_(mean)
        self.components.copy_(components)
        self.scale.copy_(coefficients.std(dim=0).clamp_min(1e-6))
        total = x.pow(2).sum()
        self.explained.fill_(float(coefficients.pow(2).sum() / total.clamp_min(1e-12)))

    def forward(self, maps: Tensor) -> Tensor:
        """Standardised coefficients (n, n_components) of raw masked maps (n, n_voxels)."""
        x = scaled_targets(maps.float(), self.transform) - self.mean
        return (x @ self.components.T) / self.scale


class ProjectionTower(nn.Module):
    """A residual MLP tower, after MNM's projection heads: in -> width, `blocks` residual
    blocks ``LayerNorm(x + Dropout(GELU(Linear(x))))``, then Linear -> out (and a LayerNorm
    with `output_norm`, as MNM's towers end; without it, how far a point lies from the origin
    is free to differ between inputs, which the intra-brain hierarchy needs).

    Shapes: (n, in_dim) -> (n, out_dim).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int = 512,
        blocks: int = 1,
        dropout: float = 0.6,
        output_norm: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
            raise ValueError(f"blocks must be an int >= 0, got {blocks!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        self.input = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout))
            for _ in range(blocks)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(blocks))
        self.output = nn.Linear(width, out_dim)
        # As CLIP's projections: features of norm about sqrt(out_dim) at initialisation.
        nn.init.normal_(self.output.weight, std=width**-0.5)
        nn.init.zeros_(self.output.bias)
        self.output_norm = nn.LayerNorm(out_dim) if output_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.input(x.float())
        for block, norm in zip(self.blocks, self.norms, strict=True):
            x = norm(x + block(x))
        return self.output_norm(self.output(x))


class BasisBrainEncoder(nn.Module):
    """A map's embedding features: its `MapBasis` coefficients through a `ProjectionTower`.

    Shapes: maps (n, n_voxels) -> (n, out_dim); `from_coefficients` (n, n_components) ->
    (n, out_dim), what feature-trained steps call with cached coefficients.
    """

    def __init__(self, basis: MapBasis, tower: ProjectionTower) -> None:
        super().__init__()
        self.basis = basis
        self.tower = tower

    def forward(self, maps: Tensor) -> Tensor:
        return self.tower(self.basis(maps))

    def from_coefficients(self, coefficients: Tensor) -> Tensor:
        return self.tower(coefficients)


@dataclass
class FeatureTables:
    """What feature-trained epochs read, per training article (rows 0..A-1 of the split).

    Attributes:
        text: (T, text_dim) float32 vectors of the articles' texts, grouped by article.
        text_start: (A + 1,) int64: article a's texts are rows text_start[a]:text_start[a+1].
        article: (A, n_components) float32 coefficients of the article-average maps.
        article_breadth: (A,) float32 (`map_breadth`).
        table: (B, n_components) float32 coefficients of the table maps of articles with two
            tables or more (a single table is its article's map), grouped by article.
        table_start: (A + 1,) int64, as `text_start`.
        table_breadth: (B,) float32.
    """

    text: Tensor
    text_start: np.ndarray
    article: Tensor
    article_breadth: Tensor
    table: Tensor
    table_start: np.ndarray
    table_breadth: Tensor

    def __post_init__(self) -> None:
        a = len(self.article)
        if len(self.text_start) != a + 1 or len(self.table_start) != a + 1:
            raise ValueError("text_start and table_start must have one entry per article, plus 1")
        if self.text_start[-1] != len(self.text) or self.table_start[-1] != len(self.table):
            raise ValueError("text_start / table_start do not end at the tables' lengths")

    def trainable(self) -> np.ndarray:
        """Rows of the articles that have at least one text (what an epoch draws from)."""
        return np.flatnonzero(np.diff(self.text_start) > 0)


class FeatureBatches:
    """Batches of cached features for article rows: one random text of each article, its map,
    and up to `hierarchy_tables` of its tables (drawn without replacement).

    A batch is a dict: `text_features` (n, text_dim), `brain_features` (n + H, n_components):
    the n article maps then the H table maps, `breadth` (n + H,), and `hierarchy_parent` /
    `hierarchy_child` (long, one entry per article -> table pair, rows of `brain_features`).
    Used as a DataLoader's collate function over article rows, so Lightning's distributed
    sampler splits an epoch's articles between ranks.
    """

    def __init__(self, tables: FeatureTables, hierarchy_tables: int = 0) -> None:
        self.tables = tables
        self.hierarchy_tables = hierarchy_tables

    def __call__(self, rows: list[int]) -> dict[str, Tensor]:
        t = self.tables
        rows = np.asarray(rows, dtype=np.int64)
        # A seed from torch's generator, so `seed_everything` makes the draws reproducible.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        start, count = t.text_start[rows], np.diff(t.text_start)[rows]
        text_rows = start + np.floor(rng.random(len(rows)) * count).astype(np.int64)
        brain = [t.article[rows]]
        breadth = [t.article_breadth[rows]]
        parent, child = [], []
        if self.hierarchy_tables:
            n_tables = np.diff(t.table_start)[rows]
            has = np.flatnonzero(n_tables >= 2)
            # A random order of each article's tables (random keys, sorted within article).
            owner = np.repeat(has, n_tables[has])
            local = np.concatenate([np.arange(k) for k in n_tables[has]]) if len(has) else owner
            order = np.lexsort((rng.random(len(owner)), owner))
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order)) - np.repeat(
                np.concatenate([[0], np.cumsum(n_tables[has])[:-1]]), n_tables[has]
            )
            keep = rank < self.hierarchy_tables
            picked = t.table_start[rows[owner[keep]]] + local[keep]
            brain.append(t.table[picked])
            breadth.append(t.table_breadth[picked])
            parent = owner[keep]
            child = len(rows) + np.arange(int(keep.sum()))
        return {
            "text_features": t.text[text_rows],
            "brain_features": torch.cat(brain),
            "breadth": torch.cat(breadth),
            "hierarchy_parent": torch.as_tensor(np.asarray(parent, dtype=np.int64)),
            "hierarchy_child": torch.as_tensor(np.asarray(child, dtype=np.int64)),
        }


def group_rows(rows: np.ndarray, n: int) -> np.ndarray:
    """CSR offsets (n + 1,) of owner rows (m,), sorted: owner a holds items
    ``offsets[a]:offsets[a + 1]``."""
    if len(rows) and np.any(np.diff(rows) < 0):
        raise ValueError("rows must be sorted by owner")
    return np.searchsorted(rows, np.arange(n + 1)).astype(np.int64)


@torch.no_grad()
def project_maps(
    maps: np.ndarray | Callable[[int, int], np.ndarray], n: int, basis: MapBasis
) -> tuple[Tensor, Tensor]:
    """(coefficients (n, components), breadths (n,)) of n maps, `CHUNK` at a time: `maps` is an
    array (memory-mapped is fine) or a function ``(start, end) -> rows`` (rendered on demand)."""
    coefficients, breadth = [], []
    for start in range(0, n, CHUNK):
        end = min(n, start + CHUNK)
        rows = maps(start, end) if callable(maps) else maps[start:end]
        block = torch.as_tensor(np.asarray(rows), dtype=torch.float32)
        coefficients.append(basis(block))
        breadth.append(map_breadth(block))
    if not coefficients:
        return torch.zeros(0, basis.n_components), torch.zeros(0)
    return torch.cat(coefficients), torch.cat(breadth)
