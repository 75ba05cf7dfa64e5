"""`BrainEncoder`: a brain volume -> an embedding vector, the mirror of Text2Brain's decoder.

The contrastive heads (CLIP, MNM) embed maps with it into the space of their text embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from text2brain.models import blocks


class BrainEncoder(nn.Module):
    """Brain volume ``(batch, *grid_shape)`` -> embedding ``(batch, out_dim)``.

    The mirror of `Text2BrainDecoder`: it reads the same box (``output_crop`` at
    ``output_offset``, so voxels the decoder never writes are ignored), halves it with each
    strided conv block (kernel 4, stride 2, padding 1: side ``n`` -> ``n // 2``; 40x48x40 ->
    20x24x20 -> 10x12x10 -> 5x6x5 with the defaults), flattens, and projects with a Linear.

    Args:
        out_dim: size of the output embedding.
        grid_shape: shape of the input volumes.
        channels: output channels of the conv blocks.
        norm, activation: as for `Text2BrainDecoder` (`NORMS`, `ACTIVATIONS`).
        output_offset, output_crop: the box read from the grid (``None`` crop = whole grid,
            ``None`` offset = centred).
        dropout: before the final Linear.
    """

    def __init__(
        self,
        out_dim: int,
        grid_shape: Sequence[int] = blocks.GRID_SHAPE,
        channels: Sequence[int] = (8, 16, 32),
        norm: str = "batch",
        activation: str = "hardtanh",
        output_offset: Sequence[int] | None = blocks.OUTPUT_OFFSET,
        output_crop: Sequence[int] | None = blocks.OUTPUT_CROP,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.out_dim = blocks.positive_int(out_dim, "out_dim")
        self.grid_shape = blocks.shape3(grid_shape, "grid_shape")
        self.channels = blocks.channel_list(channels, "channels")
        self.output_crop = (
            self.grid_shape if output_crop is None else blocks.shape3(output_crop, "output_crop")
        )
        self.output_offset = blocks.placement(self.grid_shape, self.output_crop, output_offset)
        blocks.make_norm(norm, 1)  # fail early, with the list of choices
        blocks.make_activation(activation)

        stages: list[nn.Module] = []
        previous, side = 1, self.output_crop
        for c in self.channels:
            if min(side) < 2:
                raise ValueError(
                    f"{len(self.channels)} stride-2 blocks shrink the {list(self.output_crop)} "
                    f"box below one voxel; use fewer channels entries or a larger crop"
                )
            stages.append(
                nn.Sequential(
                    nn.Conv3d(previous, c, kernel_size=4, stride=2, padding=1),
                    blocks.make_norm(norm, c),
                    blocks.make_activation(activation),
                )
            )
            previous, side = c, tuple(n // 2 for n in side)
        self.blocks = nn.Sequential(*stages)
        self.feature_shape: tuple[int, ...] = (previous, *side)
        self.head = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(blocks.dropout_rate(dropout)),
            nn.Linear(math.prod(self.feature_shape), out_dim),
        )

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """Embedding ``(batch, out_dim)`` of volumes ``(batch, *grid_shape)``."""
        if volume.dim() != 4 or tuple(volume.shape[1:]) != self.grid_shape:
            raise ValueError(
                f"expected volumes of shape (batch, {', '.join(map(str, self.grid_shape))}), "
                f"got {tuple(volume.shape)}"
            )
        (o0, o1, o2), (c0, c1, c2) = self.output_offset, self.output_crop
        x = volume[:, o0 : o0 + c0, o1 : o1 + c1, o2 : o2 + c2].unsqueeze(1)
        return self.head(self.blocks(x))
