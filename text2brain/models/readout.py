"""`RidgeReadout`: text embeddings -> maps by a reduced-rank ridge, fitted in closed form.

Why a mixin: the Text2Brain head adds it to its decoder's output (and fits it before any
step), and the text-ridge head (text2brain.models.text_ridge) is nothing else. Both keep the
same buffers (`mean_map`, `readout_in`, `readout_out`, `readout_bias`), so the fit, the maths
and the checkpoint layout are written once. The solver is text2brain.models.ridge.

The mixin needs from its head: `encode_texts` (text2brain.models.text_head.TextEncoderHead)
and `normalise_target` (the head's target scale and transform).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from text2brain.models.ridge import RidgeFit


class RidgeReadout:
    """A rank-limited linear map from a text embedding (batch, dim) to maps (batch, n_voxels),
    over the training-mean map; mixed into a `TextEncoderHead`."""

    mean_map: Tensor  # (n_voxels,)
    readout_in: Tensor  # (dim, rank)
    readout_out: Tensor  # (rank, n_voxels)
    readout_bias: Tensor  # (n_voxels,)

    def build_readout(self, dim: int, n_voxels: int, rank: int | None) -> None:
        """Zero buffers of a readout of `rank` directions (None: `dim`, the full rank)."""
        rank = min(rank or dim, dim)
        self.register_buffer("readout_in", torch.zeros(dim, rank))
        self.register_buffer("readout_out", torch.zeros(rank, n_voxels))
        self.register_buffer("readout_bias", torch.zeros(n_voxels))

    def readout_maps(self, embedding: Tensor) -> Tensor:
        """(batch, n_voxels) float32: the readout of (batch, dim) embeddings, without the mean."""
        return (embedding.float() @ self.readout_in) @ self.readout_out + self.readout_bias

    @torch.no_grad()
    def training_targets(self, maps: np.ndarray, residual: bool) -> Tensor:
        """The head's targets (n, n_voxels) float32 of raw article maps: normalised and
        transformed by the head (`normalise_target`), in place block by block, since `maps`
        is already an in-memory copy (1.2 GB on NeuroQuery). With `residual`, their mean
        (summed in float64 in the same pass, as `training_mean_map` does) becomes `mean_map`
        and is taken off them, so the maps are not read and normalised a second time."""
        targets = torch.from_numpy(np.asarray(maps, np.float32))
        total = torch.zeros(targets.shape[1], dtype=torch.float64)
        for block in targets.split(1024):
            block.copy_(self.normalise_target(block))
            if residual:
                total += block.sum(0, dtype=torch.float64)
        if residual:
            self.mean_map.copy_((total / len(targets)).float())
            targets -= self.mean_map.cpu()
        return targets

    @torch.no_grad()
    def readout_inputs(self, datamodule: Any, sources: Sequence[str]) -> tuple[Tensor, np.ndarray]:
        """(embeddings (n, dim), rows (n,)) of the training split's texts of `sources`, text i
        paired with row ``rows[i]`` of the split's article maps (`article_texts`)."""
        texts, rows = datamodule.article_texts("train", sources)
        return self.encode_texts_cached(datamodule, texts).cpu(), rows

    @torch.no_grad()
    def fit_readout_from(
        self, embeddings: Tensor, rows: np.ndarray, targets: Tensor, alphas: Sequence[float]
    ) -> RidgeFit:
        """Fit the readout of `embeddings` to their articles' rows of `targets` (the head's
        targets, minus the mean map if it predicts over it), the penalty chosen among the
        relative `alphas` by leave-one-out; its buffers take the fit."""
        # Imported here: the Lightning-free inference class shares this mixin, and loading a
        # model to predict must not import Lightning or the solver (a 1-2 s import).
        from lightning.pytorch.utilities import rank_zero_info

        from text2brain.models.ridge import fit_ridge

        fit = fit_ridge(embeddings, targets, alphas, **self._readout_options(rows))
        self.use_readout(fit)
        rank_zero_info(
            f"ridge readout fitted on {len(embeddings):,} training texts (alpha {fit.alpha:.3g}, "
            f"rank {self.readout_in.shape[1]})"
        )
        return fit

    def fit_readout_path(
        self, embeddings: Tensor, rows: np.ndarray, targets: Tensor, alphas: Sequence[float]
    ) -> list[RidgeFit]:
        """The readout's fit at every one of the relative `alphas` (text2brain.models.ridge's
        `fit_ridge_path`: the costly products once for all), for a choice by another score;
        `use_readout` puts one into the buffers."""
        from text2brain.models.ridge import fit_ridge_path

        return fit_ridge_path(embeddings, targets, alphas, **self._readout_options(rows))

    def _readout_options(self, rows: np.ndarray) -> dict[str, Any]:
        """`fit_ridge`'s options for the readout: relative penalties, the readout's rank."""
        return {
            "relative": True,
            "loo_voxels": 4096,
            "rank": self.readout_in.shape[1],
            "dtype": torch.float64,
            "target_rows": rows,
        }

    def use_readout(self, fit: RidgeFit) -> None:
        """Copy a fit into the readout's buffers."""
        weight_in, weight_out = fit.factored()
        self.readout_in.copy_(weight_in)
        self.readout_out.copy_(weight_out)
        self.readout_bias.copy_(fit.intercept)
