"""The retrieval head: the nearest training articles' maps, by title embedding.

`Retrieval` (the LightningModule, fitted in closed form) is imported on first use, so that
`torch_model` (what inference needs, `RetrievalInference`) loads without Lightning.
"""

from __future__ import annotations

from typing import Any

from text2brain.models.retrieval.torch_model import RetrievalInference

__all__ = ["Retrieval", "RetrievalInference"]


def __getattr__(name: str) -> Any:
    if name == "Retrieval":
        from text2brain.models.retrieval.lightning_model import Retrieval

        return Retrieval
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
