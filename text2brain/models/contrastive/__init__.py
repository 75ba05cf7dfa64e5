"""Contrastive heads: CLIP (Euclidean) and MNM (Lorentz), text and brain maps in one space.

`losses` holds the plain-maths pieces (learnable scalars, logits, InfoNCE with global negatives
under DDP, entailment and intra-brain hierarchy losses); the Lorentz maths is `text2brain.lorentz`.
"""
