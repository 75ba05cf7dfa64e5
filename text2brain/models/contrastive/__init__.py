"""Contrastive heads: CLIP (Euclidean) and MNM (Lorentz), text and brain maps in one space.

`losses` holds the plain-maths pieces (learnable scalars, logits, InfoNCE with global negatives
under DDP, entailment and intra-brain hierarchy losses); the Lorentz maths is `text2brain.lorentz`.
`torch_model` holds the encoders and the two geometries, `retrieval` the article bank's data,
maps by retrieval and recall@k, `bank` the bank's life cycle and retrieval both ways,
`hierarchy` the hierarchy measures (`val/hier/...`), `clip` and `mnm` the heads of the zoo.

The heads (LightningModules) are imported on first use, so that the plain-torch modules
(`retrieval`, `bank`: what the retrieval head's inference reads too) load without Lightning.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CLIP", "MNM"]


def __getattr__(name: str) -> Any:
    if name == "CLIP":
        from text2brain.models.contrastive.clip import CLIP

        return CLIP
    if name == "MNM":
        from text2brain.models.contrastive.mnm import MNM

        return MNM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
