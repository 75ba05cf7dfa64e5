"""3-D CNNs between an embedding vector and a brain volume on the 4 mm MNI grid (46x55x46).

`Text2BrainDecoder` follows Text2Brain (Ngo et al. 2021): dropout -> Linear -> dropout -> ReLU,
reshape to a ``seed_channels x 4x5x4`` seed, three transposed-conv blocks (4x5x4 -> 9x11x9 ->
19x23x19 -> 39x47x39), a 3x3x3 conv to one channel (41x49x41), a crop to 40x48x40, and placement
in the 46x55x46 grid at offset (3, 3, 0), i.e. ``grid[3:-3, 3:-4, :-6]``. Outside that box the
output is exactly zero.

`BrainEncoder` runs the mirror image (crop the same box, strided convs, Linear) to embed a
volume, e.g. for contrastive text/brain heads.

Both work on full grids; to get the masked vectors used elsewhere in text2brain, index the
flattened volume with the brain's flat in-mask indices: ``volume.flatten(1)[:, flat_mask_idx]``
(and scatter back the same way to build an encoder input).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "instance", "group", "none")
ACTIVATIONS = ("hardtanh", "relu", "gelu", "leaky_relu")
#: The NeuroQuery / Text2Brain 4 mm MNI grid.
GRID_SHAPE = (46, 55, 46)
#: The box Text2Brain predicts inside that grid: ``grid[3:-3, 3:-4, :-6]``.
OUTPUT_CROP = (40, 48, 40)
OUTPUT_OFFSET = (3, 3, 0)


def make_norm(name: str, channels: int) -> nn.Module:
    """A 3-D normalisation layer by name (one of `NORMS`).

    ``"group"`` uses the largest divisor of ``channels`` up to 8 as the number of groups, so any
    channel count works; ``"instance"`` has a learnable affine like batch norm.
    """
    if name == "batch":
        return nn.BatchNorm3d(channels)
    if name == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if name == "group":
        groups = max(g for g in range(1, min(8, channels) + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {name!r}; choose one of {list(NORMS)}")


def make_activation(name: str) -> nn.Module:
    """An activation by name (one of `ACTIVATIONS`); ``"hardtanh"`` is Text2Brain's [-6, 6]."""
    if name == "hardtanh":
        return nn.Hardtanh(-6.0, 6.0)
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    raise ValueError(f"unknown activation {name!r}; choose one of {list(ACTIVATIONS)}")


def _shape3(value: Sequence[int], name: str, minimum: int = 1) -> tuple[int, int, int]:
    """Validate a 3-vector of ints (lists from YAML welcome)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"{name} must be 3 integers, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value):
        raise ValueError(f"{name} must be 3 integers >= {minimum}, got {list(value)}")
    return (int(value[0]), int(value[1]), int(value[2]))


def _channels(value: Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty list of ints, got {value!r}")
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in value):
        raise ValueError(f"{name} must be positive ints, got {list(value)}")
    return tuple(int(c) for c in value)


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _dropout(value: float) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {value}")
    return float(value)


def _placement(
    grid_shape: tuple[int, int, int],
    crop: tuple[int, int, int],
    offset: Sequence[int] | None,
) -> tuple[int, int, int]:
    """Where the ``crop`` box starts in the grid (``None`` = centred); must fit inside."""
    if offset is None:
        start = tuple(max(0, (g - c) // 2) for g, c in zip(grid_shape, crop, strict=True))
    else:
        start = _shape3(offset, "output_offset", minimum=0)
    for axis, (o, c, g) in enumerate(zip(start, crop, grid_shape, strict=True)):
        if c > g or o + c > g:
            raise ValueError(
                f"a {list(crop)} volume at output_offset {list(start)} does not fit in the "
                f"{list(grid_shape)} grid (axis {axis}: {o} + {c} > {g})"
            )
    return start  # type: ignore[return-value]


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
        self.in_dim = _positive_int(in_dim, "in_dim")
        seed_channels = _positive_int(seed_channels, "seed_channels")
        self.grid_shape = _shape3(grid_shape, "grid_shape")
        self.seed_shape = _shape3(seed_shape, "seed_shape")
        self.seed_channels = seed_channels
        self.channels = _channels(channels, "channels")
        make_norm(norm, 1)  # fail early, with the list of choices
        make_activation(activation)

        self.project = nn.Sequential(
            nn.Dropout(_dropout(dropout)),
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
        crop = self.decoded_shape if output_crop is None else _shape3(output_crop, "output_crop")
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
        self.output_offset = _placement(self.grid_shape, crop, output_offset)
        # F.pad lists (before, after) per axis, last axis first.
        self._pad: list[int] = []
        for o, c, g in zip(self.output_offset, crop, self.grid_shape, strict=True):
            self._pad = [o, g - o - c, *self._pad]

    def region(self) -> tuple[slice, slice, slice]:
        """The grid box the decoder writes; everything else is exactly zero."""
        return tuple(
            slice(o, o + c) for o, c in zip(self.output_offset, self.output_crop, strict=True)
        )  # type: ignore[return-value]

    def region_mask(self) -> torch.Tensor:
        """Boolean ``grid_shape`` tensor of `region` (check a brain mask fits inside it)."""
        mask = torch.zeros(self.grid_shape, dtype=torch.bool)
        mask[self.region()] = True
        return mask

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
        grid_shape: Sequence[int] = GRID_SHAPE,
        channels: Sequence[int] = (8, 16, 32),
        norm: str = "batch",
        activation: str = "hardtanh",
        output_offset: Sequence[int] | None = OUTPUT_OFFSET,
        output_crop: Sequence[int] | None = OUTPUT_CROP,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.out_dim = _positive_int(out_dim, "out_dim")
        self.grid_shape = _shape3(grid_shape, "grid_shape")
        self.channels = _channels(channels, "channels")
        self.output_crop = (
            self.grid_shape if output_crop is None else _shape3(output_crop, "output_crop")
        )
        self.output_offset = _placement(self.grid_shape, self.output_crop, output_offset)
        make_norm(norm, 1)  # fail early, with the list of choices
        make_activation(activation)

        blocks: list[nn.Module] = []
        previous, side = 1, self.output_crop
        for c in self.channels:
            if min(side) < 2:
                raise ValueError(
                    f"{len(self.channels)} stride-2 blocks shrink the {list(self.output_crop)} "
                    f"box below one voxel; use fewer channels entries or a larger crop"
                )
            blocks.append(
                nn.Sequential(
                    nn.Conv3d(previous, c, kernel_size=4, stride=2, padding=1),
                    make_norm(norm, c),
                    make_activation(activation),
                )
            )
            previous, side = c, tuple(n // 2 for n in side)
        self.blocks = nn.Sequential(*blocks)
        self.feature_shape: tuple[int, ...] = (previous, *side)
        self.head = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(_dropout(dropout)),
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
