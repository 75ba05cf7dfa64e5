"""Corpus-mean baseline: the mean training article map, whatever the text."""

from text2brain.models.corpus_mean.lightning_model import CorpusMean

__all__ = ["CorpusMean"]
