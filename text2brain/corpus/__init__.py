"""Corpora: articles with text and peak tables, from NeuroQuery or a user's own files."""

from pathlib import Path

from text2brain.brain import BrainSpace
from text2brain.corpus.base import Article, Corpus, SkipReport
from text2brain.corpus.neuroquery import load_neuroquery
from text2brain.neuroquery_files import fetch_neuroquery

__all__ = [
    "Article",
    "Corpus",
    "SkipReport",
    "fetch_neuroquery",
    "load_corpus",
    "load_neuroquery",
]


def load_corpus(spec: str, space: BrainSpace, data_dir: str | None = None) -> Corpus:
    """A corpus by name or path: "neuroquery", a .jsonl file, or a pubget extracted-data folder."""
    if spec == "neuroquery":
        return load_neuroquery(data_dir, space)
    path = Path(spec).expanduser()
    if path.suffix in (".jsonl", ".json") and path.exists():  # a folder so named is refused
        from text2brain.corpus.jsonl import load_jsonl_corpus

        return load_jsonl_corpus(path, space)
    if path.is_dir():
        from text2brain.corpus.pubget import load_pubget_corpus

        return load_pubget_corpus(path, space)
    raise ValueError(
        f"corpus {spec!r} is neither 'neuroquery', an existing .jsonl file, nor a pubget "
        "extracted-data folder"
    )
