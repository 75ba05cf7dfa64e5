"""3-D CNNs between an embedding vector and a brain volume on the 4 mm MNI grid (46x55x46).

`Text2BrainDecoder` follows Text2Brain (Ngo et al. 2021): dropout -> Linear -> dropout -> ReLU,
reshape to a ``seed_channels x 4x5x4`` seed, three transposed-conv blocks (4x5x4 -> 9x11x9 ->
19x23x19 -> 39x47x39), a 3x3x3 conv to one channel (41x49x41), a crop to 40x48x40, and placement
in the 46x55x46 grid at offset (3, 3, 0), i.e. ``grid[3:-3, 3:-4, :-6]``. Outside that box the
output is exactly zero.

It works on full grids (text2brain.models.brain_encoder.BrainEncoder is its mirror image); to
get the masked vectors used elsewhere in text2brain, index the flattened volume with the
brain's flat in-mask indices: ``volume.flatten(1)[:, flat_mask_idx]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from text2brain.models.blocks import (
    GRID_SHAPE,
    OUTPUT_CROP,
    OUTPUT_OFFSET,
    channel_list,
    dropout_rate,
    make_activation,
    make_norm,
    placement,
    positive_int,
    shape3,
)


class Text2BrainDecoder(nn.Module):
    """Embedding ``(batch, in_dim)`` -> brain volume ``(batch, *grid_shape)``.

    Args:
        in_dim: size of the input embedding (the text encoder's ``dim``).
        grid_shape: the full output grid.
        seed_shape, seed_channels: the small volume the Linear projection is reshaped into.
        channels: output channels of the transposed-conv blocks; each block maps a side ``n``
            to ``2n + 1``, the final 3x3x3 conv (padding 2) adds 2.
        dropout: on the embedding and on the projection, as in Text2Brain (0.5 in its training
            script; the released checkpoint used 0.55).
        norm: one of `NORMS`, after every transposed conv.
        activation: one of `ACTIVATIONS`, after every norm (Text2Brain: Hardtanh(-6, 6)).
        output_crop: size of the box kept from the decoded volume (centred crop, the extra
            voxel dropped at the front: 41 -> 40 keeps 1..40, like Text2Brain); ``None`` keeps
            the whole decoded volume.
        output_offset: where that box starts in the grid; ``None`` centres it.
        output_norm_act: also apply norm + activation to the one-channel output, as the original
            code did (BatchNorm3d(1) then Hardtanh); off by default so the output is an
            unconstrained linear map suited to z-score regression.
    """

    def __init__(
        self,
        in_dim: int,
        grid_shape: Sequence[int] = GRID_SHAPE,
        seed_shape: Sequence[int] = (4, 5, 4),
        seed_channels: int = 64,
        channels: Sequence[int] = (32, 16, 8),
        dropout: float = 0.5,
        norm: str = "batch",
        activation: str = "hardtanh",
        output_crop: Sequence[int] | None = OUTPUT_CROP,
        output_offset: Sequence[int] | None = OUTPUT_OFFSET,
        output_norm_act: bool = False,
    ) -> None:
        super().__init__()
        self.in_dim = positive_int(in_dim, "in_dim")
        seed_channels = positive_int(seed_channels, "seed_channels")
        self.grid_shape = shape3(grid_shape, "grid_shape")
        self.seed_shape = shape3(seed_shape, "seed_shape")
        self.seed_channels = seed_channels
        self.channels = channel_list(channels, "channels")
        make_norm(norm, 1)  # fail early, with the list of choices
        make_activation(activation)

        self.project = nn.Sequential(
            nn.Dropout(dropout_rate(dropout)),
            nn.Linear(in_dim, seed_channels * math.prod(self.seed_shape)),
            nn.Dropout(dropout),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        previous = seed_channels
        for c in self.channels:
            blocks.append(
                nn.Sequential(
                    nn.ConvTranspose3d(
                        previous, c, kernel_size=4, stride=2, padding=1, output_padding=1
                    ),
                    make_norm(norm, c),
                    make_activation(activation),
                )
            )
            previous = c
        self.blocks = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Conv3d(previous, 1, kernel_size=3, padding=2)]
        if output_norm_act:
            head += [make_norm(norm, 1), make_activation(activation)]
        self.head = nn.Sequential(*head)

        side = self.seed_shape
        for _ in self.channels:
            side = tuple(2 * n + 1 for n in side)
        self.decoded_shape: tuple[int, int, int] = tuple(n + 2 for n in side)  # type: ignore[assignment]
        crop = self.decoded_shape if output_crop is None else shape3(output_crop, "output_crop")
        if any(c > d for c, d in zip(crop, self.decoded_shape, strict=True)):
            raise ValueError(
                f"output_crop {list(crop)} is larger than the decoded volume "
                f"{list(self.decoded_shape)} (seed_shape {list(self.seed_shape)}, "
                f"{len(self.channels)} upsampling blocks)"
            )
        self.output_crop = crop
        self._crop_start = tuple(
            (d - c + 1) // 2 for d, c in zip(self.decoded_shape, crop, strict=True)
        )
        self.output_offset = placement(self.grid_shape, crop, output_offset)
        # F.pad lists (before, after) per axis, last axis first.
        self._pad: list[int] = []
        for o, c, g in zip(self.output_offset, crop, self.grid_shape, strict=True):
            self._pad = [o, g - o - c, *self._pad]

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Volume ``(batch, *grid_shape)``; the decoded box placed in an otherwise zero grid."""
        if embedding.dim() != 2 or embedding.shape[1] != self.in_dim:
            raise ValueError(
                f"expected embeddings of shape (batch, {self.in_dim}), got {tuple(embedding.shape)}"
            )
        x = self.project(embedding).view(-1, self.seed_channels, *self.seed_shape)
        x = self.head(self.blocks(x))[:, 0]
        (s0, s1, s2), (c0, c1, c2) = self._crop_start, self.output_crop
        x = x[:, s0 : s0 + c0, s1 : s1 + c1, s2 : s2 + c2]
        return F.pad(x, self._pad)
