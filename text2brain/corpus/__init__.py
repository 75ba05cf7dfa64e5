"""Corpora: articles with text and peak tables, from NeuroQuery or a user's own files."""

from text2brain.corpus.base import Article, Corpus, SkipReport
from text2brain.corpus.neuroquery import fetch_neuroquery, load_neuroquery

__all__ = ["Article", "Corpus", "SkipReport", "fetch_neuroquery", "load_neuroquery"]
