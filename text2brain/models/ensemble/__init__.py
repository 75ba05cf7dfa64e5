"""The ensemble head: registered heads' maps, each normalised per map, in a weighted sum.

`Ensemble` (the LightningModule, fitted in closed form) is imported on first use, so that
`torch_model` (the maths and `EnsembleInference`, what inference needs) loads without
Lightning.
"""

from __future__ import annotations

from typing import Any

from text2brain.models.ensemble.torch_model import (
    EnsembleInference,
    average_ranks,
    normalise_maps,
    simplex_grid,
)

__all__ = ["Ensemble", "EnsembleInference", "average_ranks", "normalise_maps", "simplex_grid"]


def __getattr__(name: str) -> Any:
    if name == "Ensemble":
        from text2brain.models.ensemble.lightning_model import Ensemble

        return Ensemble
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
