"""Neurosynth-style baseline: chi-square association of query terms with voxel activation.

`association` holds the maths (no Lightning); `lightning_model` the zoo head.
"""

from text2brain.models.neurosynth.lightning_model import Neurosynth

__all__ = ["Neurosynth"]
