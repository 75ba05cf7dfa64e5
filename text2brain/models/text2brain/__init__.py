"""The Text2Brain regression head (Ngo et al., MICCAI 2021).

`Text2Brain` (the LightningModule) is imported on first use, so that `torch_model` (what
inference needs) loads without Lightning.
"""

from __future__ import annotations

from typing import Any

from text2brain.models.text2brain.torch_model import Text2BrainInference, Text2BrainNet

__all__ = ["Text2Brain", "Text2BrainInference", "Text2BrainNet"]


def __getattr__(name: str) -> Any:
    if name == "Text2Brain":
        from text2brain.models.text2brain.lightning_model import Text2Brain

        return Text2Brain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
