"""Monotone transforms of the training targets, for heads scored by a rank metric.

Why: Dice-AUC only asks which voxels rank in a map's top 5-30%, while a squared error on
max-normalised maps is dominated by the few highest peaks. A monotone transform that lifts the
shoulders of the peaks (a power below 1, a log) leaves every map's ranking, and so the metric of
a perfect prediction, unchanged, but makes the regression fit the part of the map the metric
reads. On NeuroQuery's validation titles a ridge readout of MiniLM embeddings scored 0.0690
Dice-AUC on max-normalised maps and about 0.0745 on their 0.1 power. Predictions are then on
the transformed scale (rank the same as on the original one). No Lightning here.

A transform is named by one YAML-friendly string: "none", "sqrt", "power:P" (sign(x) |x|^P,
0 < P <= 1) or "log1p:C" (sign(x) log1p(C |x|) / log1p(C), C > 0), so maps in [-1, 1] stay in
[-1, 1].

The map scalings live here too, one of each: `scale_maps` (largest absolute value 1, what
every head's targets and the retrieval banks start from) and `encoder_input` (what the
contrastive heads' brain encoder reads: max-scaled, or scaled to a fixed total activation).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TRANSFORMS = ("none", "sqrt", "power:P", "log1p:C")
#: How the contrastive heads' brain encoder may scale its input maps (`encoder_input`).
MAP_SCALES = ("max", "mass")
#: Total absolute activation of a map scaled by "mass" (so a map's values are percentages).
MASS_TOTAL = 100.0
#: Floor of the divisor when a map is scaled (all-zero maps stay zero).
_TINY = 1e-12


def scale_maps(maps: Tensor) -> Tensor:
    """Each map divided by its largest absolute value: (n, n_voxels) -> the same shape.

    Why: an article-average map's scale says how many of its peaks overlap, not where the
    activation is; the heads' targets, the brain encoder and the retrieval banks see shapes.
    """
    return maps / maps.abs().amax(dim=-1, keepdim=True).clamp_min(_TINY)


def scaled_targets(maps: Tensor, spec: str) -> Tensor:
    """Maps (n, n_voxels) max-scaled (`scale_maps`), then through the transform `spec`."""
    return transform_targets(scale_maps(maps), spec)


def encoder_input(maps: Tensor, scale: str) -> Tensor:
    """Maps (n, n_voxels) as the brain encoder reads them, by `scale` (one of `MAP_SCALES`).

    "max" is `scale_maps` (shape only). "mass" divides each map by its total absolute
    activation and multiplies by `MASS_TOTAL`: an article-average map spreads its activation
    over more voxels than one of its tables, so its values are lower, and how concentrated a
    map is (how specific) stays visible to the encoder.
    """
    if scale == "max":
        return scale_maps(maps)
    if scale == "mass":
        return maps * (MASS_TOTAL / maps.abs().sum(dim=-1, keepdim=True).clamp_min(_TINY))
    raise ValueError(f"input_scale must be one of {MAP_SCALES}, got {scale!r}")


def parse_transform(spec: str) -> tuple[str, float]:
    """("none" | "power" | "log1p", its parameter) of a transform name; a clear error if bad."""
    if not isinstance(spec, str):
        raise ValueError(f"target_transform must be a string such as 'power:0.25', got {spec!r}")
    name, _, value = spec.strip().partition(":")
    if name in ("none", "sqrt") and not value:
        return ("none", 1.0) if name == "none" else ("power", 0.5)
    if name in ("power", "log1p") and value:
        try:
            parameter = float(value)
        except ValueError:
            parameter = math.nan
        if name == "power" and 0 < parameter <= 1:
            return name, parameter
        if name == "log1p" and 0 < parameter < math.inf:
            return name, parameter
    raise ValueError(
        f"target_transform {spec!r} is not one of {TRANSFORMS} (power: 0 < P <= 1; log1p: C > 0)"
    )


def transform_targets(maps: Tensor, spec: str) -> Tensor:
    """`maps` (any shape) through the transform `spec`, elementwise and sign-preserving."""
    name, parameter = parse_transform(spec)
    if name == "none":
        return maps
    magnitude = maps.abs()
    if name == "power":
        magnitude = magnitude.pow(parameter)
    else:
        magnitude = torch.log1p(parameter * magnitude) / math.log1p(parameter)
    return torch.sign(maps) * magnitude
