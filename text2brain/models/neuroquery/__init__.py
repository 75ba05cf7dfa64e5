"""NeuroQuery-style baseline: TF-IDF of vocabulary terms, ridge to every voxel, smoothing.

`ridge` and `smoothing` hold the maths (no Lightning); `lightning_model` the zoo head.
"""

from text2brain.models.neuroquery.lightning_model import NeuroQuery

__all__ = ["NeuroQuery"]
