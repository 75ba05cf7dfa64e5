"""Contrastive heads: CLIP (Euclidean) and MNM (Lorentz), text and brain maps in one space.

`losses` holds the plain-maths pieces (learnable scalars, logits, InfoNCE with global negatives
under DDP, entailment and intra-brain hierarchy losses); the Lorentz maths is `text2brain.lorentz`.
`torch_model` holds the encoders and the two geometries, `retrieval` the article bank's data,
maps by retrieval and recall@k, `bank` the bank's life cycle and retrieval both ways,
`hierarchy` the hierarchy measures (`val/hier/...`), `clip` and `mnm` the heads of the zoo.
"""

from text2brain.models.contrastive.clip import CLIP
from text2brain.models.contrastive.mnm import MNM

__all__ = ["CLIP", "MNM"]
