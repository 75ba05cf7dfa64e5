"""Layers and argument checks shared by the 3-D CNNs (Text2Brain's decoder, the brain encoder).

The NeuroQuery / Text2Brain 4 mm MNI grid is 46x55x46; Text2Brain predicts the box
``grid[3:-3, 3:-4, :-6]`` (40x48x40 at offset 3, 3, 0) and is exactly zero outside it.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def shape3(value: Sequence[int], name: str, minimum: int = 1) -> tuple[int, int, int]:
    """Validate a 3-vector of ints (lists from YAML welcome)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"{name} must be 3 integers, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value):
        raise ValueError(f"{name} must be 3 integers >= {minimum}, got {list(value)}")
    return (int(value[0]), int(value[1]), int(value[2]))


def channel_list(value: Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty list of ints, got {value!r}")
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in value):
        raise ValueError(f"{name} must be positive ints, got {list(value)}")
    return tuple(int(c) for c in value)


def positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def dropout_rate(value: float) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {value}")
    return float(value)


def placement(
    grid_shape: tuple[int, int, int],
    crop: tuple[int, int, int],
    offset: Sequence[int] | None,
) -> tuple[int, int, int]:
    """Where the ``crop`` box starts in the grid (``None`` = centred); must fit inside."""
    if offset is None:
        start = tuple(max(0, (g - c) // 2) for g, c in zip(grid_shape, crop, strict=True))
    else:
        start = shape3(offset, "output_offset", minimum=0)
    for axis, (o, c, g) in enumerate(zip(start, crop, grid_shape, strict=True)):
        if c > g or o + c > g:
            raise ValueError(
                f"a {list(crop)} volume at output_offset {list(start)} does not fit in the "
                f"{list(grid_shape)} grid (axis {axis}: {o} + {c} > {g})"
            )
    return start  # type: ignore[return-value]
