"""Contrastive heads: CLIP (Euclidean) and MNM (Lorentz), text and brain maps in one space.

`losses` holds the plain-maths pieces (learnable scalars, logits, InfoNCE with global negatives
under DDP, entailment and intra-brain hierarchy losses); the Lorentz maths is `text2brain.lorentz`.
`torch_model` holds the encoders and the two geometries, `retrieval` the article bank, maps by
retrieval and recall@k, `lightning_model` the heads of the zoo.
"""

from text2brain.models.contrastive.lightning_model import CLIP, MNM, ContrastiveHead
from text2brain.models.contrastive.torch_model import (
    ContrastiveNet,
    CosineGeometry,
    LorentzGeometry,
)

__all__ = ["CLIP", "MNM", "ContrastiveHead", "ContrastiveNet", "CosineGeometry", "LorentzGeometry"]
