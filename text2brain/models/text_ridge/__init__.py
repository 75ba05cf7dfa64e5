"""The text-ridge head: a frozen sentence encoder's embedding, read out to a map by a ridge.

`TextRidge` (the LightningModule, fitted in closed form) is imported on first use, so that
`torch_model` (what inference needs, `TextRidgeInference`) loads without Lightning.
"""

from __future__ import annotations

from typing import Any

from text2brain.models.text_ridge.torch_model import TextRidgeInference

__all__ = ["TextRidge", "TextRidgeInference"]


def __getattr__(name: str) -> Any:
    if name == "TextRidge":
        from text2brain.models.text_ridge.lightning_model import TextRidge

        return TextRidge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
