"""Vocabulary terms in text: greedy longest-phrase matching, synonyms, TF-IDF (no Lightning).

Shared by the NeuroQuery- and Neurosynth-style heads, which read texts as bags of vocabulary
terms. Text is lower-cased and split into words of letters and digits (so "2-back" is
"2 back" and "long-term" is "long term"); English function words ("of", "the", ...) are
dropped unless a vocabulary phrase uses them, so "theory of mind" reads as the NeuroQuery
term "theory mind". At every position the longest vocabulary phrase that starts there is
taken, scanning left to right, and the words it covers are consumed; a word outside the
vocabulary ends any phrase. A synonym ("reaction times") counts as its term ("reaction time").

Matching runs over every text of a corpus at once: the phrase trie is walked one word level at
a time for all start positions together, and the left-to-right greedy choice is found by a
fixed-point iteration over the candidate matches (each round settles at least the next
overlapping candidate; overlaps are short, so a few rounds do).
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from text2brain.corpus.base import Article

#: Words of letters and digits, and the newline that separates the segments of a batch.
_TOKEN = re.compile(r"[^\W_]+|\n")
_BREAK = "\n"

#: English function words, dropped from texts unless a vocabulary phrase contains them.
STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be been before being
    below between both but by can could did do does doing down during each either else ever
    every few for from further had has have having he her here hers herself him himself his
    how i if in into is it its itself just me more most my myself neither no nor not now of
    off on once only onto or other our ours ourselves out over own same shall she should so
    some such than that the their theirs them themselves then there these they this those
    through thus to too under until up upon us very via vs versus was we were what when where
    whereas whether which while who whom whose why will with within would yet you your yours
    yourself yourselves
    """.split()
)

#: Article fields a training document can be made of.
DOCUMENT_FIELDS = ("title", "keywords", "abstract", "discussion", "captions")


def words_of(text: str) -> list[str]:
    """The lower-cased words of `text` (letters and digits), before stop-word removal."""
    return [w for w in _TOKEN.findall(text.lower()) if w != _BREAK]


# -- vocabulary ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    """Terms (the features, in order) and synonyms (phrase -> one of the terms)."""

    terms: tuple[str, ...]
    synonyms: Mapping[str, str]

    def __post_init__(self) -> None:
        repeated = [t for t, n in Counter(self.terms).items() if n > 1]
        if repeated:
            raise ValueError(f"vocabulary terms are repeated: {repeated[:5]}")
        empty = [t for t in self.terms if not words_of(t)]
        if empty:
            raise ValueError(f"vocabulary terms without any word: {empty[:5]}")
        known = set(self.terms)
        bad = {s: t for s, t in self.synonyms.items() if t not in known}
        if bad:
            raise ValueError(
                f"{len(bad)} synonyms map to phrases that are not vocabulary terms, e.g. "
                f"{dict(list(bad.items())[:3])}"
            )
        clashes = [s for s in self.synonyms if s in known]
        if clashes:
            raise ValueError(f"synonyms that are also terms: {clashes[:5]}")

    @classmethod
    def build(cls, vocabulary: Sequence[str], synonyms: Mapping[str, str]) -> Vocabulary:
        """From a phrase list that may include synonyms (as NeuroQuery's vocabulary.csv does)."""
        synonyms = {str(k): str(v) for k, v in synonyms.items()}
        terms = tuple(t for t in map(str, vocabulary) if t not in synonyms)
        return cls(terms, synonyms)

    @property
    def phrases(self) -> list[str]:
        """Every phrase the matcher looks for: the terms, then the synonyms."""
        return [*self.terms, *self.synonyms]

    def term_of_phrase(self) -> np.ndarray:
        """Term index of each of `phrases`."""
        index = {t: i for i, t in enumerate(self.terms)}
        return np.array([*range(len(self.terms)), *(index[t] for t in self.synonyms.values())])


def load_vocabulary(
    vocabulary: str | Sequence[str],
    synonyms: str | Mapping[str, str] | None,
    data_dir: str | os.PathLike | None = None,
) -> Vocabulary:
    """A vocabulary from "neuroquery" (its model files), a file, or a list.

    `vocabulary`: "neuroquery" (vocabulary.csv of the NeuroQuery model, 7,547 phrases), a CSV
    file (the first column; NeuroQuery's format), a text file (one phrase a line) or a list.
    `synonyms`: "neuroquery" (vocabulary.csv_voc_mapping_identity.json), a JSON file of
    {phrase: term}, a dict, or None.
    """
    from text2brain.neuroquery_files import fetch_neuroquery_file

    if isinstance(vocabulary, str):
        path = (
            fetch_neuroquery_file("vocabulary.csv", data_dir)
            if vocabulary == "neuroquery"
            else Path(vocabulary).expanduser()
        )
        phrases = _read_phrases(path)
    else:
        phrases = [str(p) for p in vocabulary]
    if isinstance(synonyms, str):
        path = (
            fetch_neuroquery_file("vocabulary.csv_voc_mapping_identity.json", data_dir)
            if synonyms == "neuroquery"
            else Path(synonyms).expanduser()
        )
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read synonyms file {str(path)!r}: {err}") from err
        if not isinstance(mapping, dict):
            raise ValueError(f"synonyms file {str(path)!r} must hold a JSON object")
    else:
        mapping = dict(synonyms or {})
    if not phrases:
        raise ValueError(f"the vocabulary {vocabulary!r} has no phrase")
    return Vocabulary.build(phrases, mapping)


def _read_phrases(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {str(path)!r} does not exist")
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            return [row[0].strip() for row in csv.reader(f) if row and row[0].strip()]
        return [line.strip() for line in f if line.strip()]


# -- phrase matching -------------------------------------------------------------------------


class PhraseMatcher:
    """Finds phrases in texts: greedy longest match, left to right, vectorised over texts.

    Args:
        phrases: the phrases to find (each becomes a tuple of words; stop words that no
            phrase uses are removed from phrases and texts alike).
    """

    def __init__(self, phrases: Sequence[str]) -> None:
        if not phrases:
            raise ValueError("a phrase matcher needs at least one phrase")
        phrase_words = [words_of(p) for p in phrases]
        used = {w for words in phrase_words for w in words}
        self.stop_words = sorted(STOP_WORDS - used)
        phrase_words = [[w for w in words if w not in self.stop_words] for words in phrase_words]
        empty = [p for p, words in zip(phrases, phrase_words, strict=True) if not words]
        if empty:
            raise ValueError(f"phrases without a content word: {empty[:5]}")
        self.words = pd.Index(sorted(used - set(self.stop_words)))
        # Word ids: known words, then the segment break, then stop words (dropped).
        self._lookup = pd.Index([*self.words, _BREAK, *self.stop_words])
        self._break_id = len(self.words)
        self.max_words = max(len(w) for w in phrase_words)

        # A trie over word ids: node 0 is the root; each edge is keyed by parent * n + word.
        n_words = len(self.words)
        children: dict[int, int] = {}
        node_phrase = [-1]
        for phrase, words in enumerate(phrase_words):
            node = 0
            for word in self.words.get_indexer(words):
                key = node * n_words + int(word)
                if key not in children:
                    children[key] = len(node_phrase)
                    node_phrase.append(-1)
                node = children[key]
            if node_phrase[node] == -1:  # a repeated phrase keeps its first index
                node_phrase[node] = phrase
        keys = np.fromiter(children.keys(), dtype=np.int64, count=len(children))
        order = np.argsort(keys)
        self._edge_keys = keys[order]
        self._edge_child = np.fromiter(children.values(), np.int64, len(children))[order]
        self._node_phrase = np.asarray(node_phrase, dtype=np.int64)
        self.n_phrases = len(phrase_words)

    def _child(self, nodes: np.ndarray, words: np.ndarray) -> np.ndarray:
        """Trie child of each (node, word), -1 where there is none."""
        keys = nodes * len(self.words) + words
        at = np.searchsorted(self._edge_keys, keys).clip(max=len(self._edge_keys) - 1)
        return np.where(self._edge_keys[at] == keys, self._edge_child[at], -1)

    def find(self, segments: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(segment, phrase) of every match in `segments`, in text order; phrases never span
        two segments."""
        text = _BREAK.join(s.replace(_BREAK, " ") for s in segments).lower()
        tokens = _TOKEN.findall(text)
        ids = self._lookup.get_indexer(tokens) if tokens else np.empty(0, np.int64)
        segment = np.cumsum(ids == self._break_id)
        content = (ids < self._break_id) | (ids == -1)  # known or unknown words, no stop word
        word, segment = ids[content], segment[content]
        n = len(word)

        best_length = np.zeros(n, dtype=np.int64)
        best_phrase = np.full(n, -1, dtype=np.int64)
        start = np.flatnonzero(word >= 0)  # phrases start at known words
        node = np.zeros(len(start), dtype=np.int64)
        for length in range(1, self.max_words + 1):
            at = start + length - 1
            inside = np.minimum(at, n - 1)
            ok = (at < n) & (segment[inside] == segment[start]) & (word[inside] >= 0)
            start, node, at = start[ok], node[ok], at[ok]
            node = self._child(node, word[at])
            alive = node >= 0
            start, node = start[alive], node[alive]
            phrase = self._node_phrase[node]
            complete = phrase >= 0
            best_length[start[complete]] = length
            best_phrase[start[complete]] = phrase[complete]
            if not len(start):
                break

        starts = np.flatnonzero(best_length)
        taken = _greedy_left_to_right(starts, starts + best_length[starts])
        chosen = starts[taken]
        return segment[chosen], best_phrase[chosen]


def _greedy_left_to_right(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which candidate spans a left-to-right scan takes: a span is taken unless a taken span
    before it (sorted `starts`) reaches past its start. Fixed point from "all taken"."""
    taken = np.ones(len(starts), dtype=bool)
    while len(starts):
        reach = np.maximum.accumulate(np.where(taken, ends, 0))
        covered = np.concatenate([[False], reach[:-1] > starts[1:]])
        if np.array_equal(~covered, taken):
            break
        taken = ~covered
    return taken


# -- documents and TF-IDF --------------------------------------------------------------------


def article_segments(article: Article, fields: Sequence[str]) -> list[str]:
    """An article's text as segments (phrases never span two): the title, each keyword, the
    abstract, each discussion sentence, each table caption, among `fields`."""
    unknown = sorted(set(fields) - set(DOCUMENT_FIELDS))
    if unknown:
        raise ValueError(f"unknown document fields {unknown}; known: {list(DOCUMENT_FIELDS)}")
    segments: list[str] = []
    for field in fields:
        if field == "title":
            segments.append(article.title)
        elif field == "keywords":
            segments.extend(article.keywords)
        elif field == "abstract":
            segments.append(article.abstract)
        elif field == "discussion":
            segments.extend(article.discussion)
        else:
            segments.extend(article.table_captions.values())
    return segments


class TermCounter:
    """Texts -> term counts over a vocabulary (synonyms counted as their term)."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self.matcher = PhraseMatcher(vocabulary.phrases)
        self._term_of_phrase = vocabulary.term_of_phrase()

    @property
    def n_terms(self) -> int:
        return len(self.vocabulary.terms)

    def count_documents(self, documents: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """Counts (n_documents, n_terms), float64; each document is a list of segments."""
        lengths = np.fromiter((len(d) for d in documents), np.int64, len(documents))
        owner = np.repeat(np.arange(len(documents)), lengths)
        segment, phrase = self.matcher.find([s for d in documents for s in d])
        counts = sp.coo_matrix(
            (np.ones(len(phrase)), (owner[segment], self._term_of_phrase[phrase])),
            shape=(len(documents), self.n_terms),
        )
        return counts.tocsr()

    def count_texts(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Counts (n_texts, n_terms) of single-segment texts (queries)."""
        return self.count_documents([[t] for t in texts])

    def terms_in(self, text: str) -> list[str]:
        """The terms found in `text`, in text order (repeats kept)."""
        _, phrase = self.matcher.find([text])
        return [self.vocabulary.terms[i] for i in self._term_of_phrase[phrase]]


def document_frequency(counts: sp.csr_matrix) -> np.ndarray:
    """Number of documents in which each term occurs."""
    return np.asarray((counts > 0).sum(axis=0)).ravel()


def inverse_document_frequency(doc_freq: np.ndarray, n_documents: int) -> np.ndarray:
    """idf = 1 - log(df / n) (NeuroQuery's formula; >= 1); terms never seen get 0."""
    doc_freq = np.asarray(doc_freq, dtype=np.float64)
    with np.errstate(divide="ignore"):
        idf = 1.0 - np.log(doc_freq / max(n_documents, 1))
    return np.where(doc_freq > 0, idf, 0.0)


def tfidf(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    """Raw counts times idf, each row scaled to unit l2 norm (rows without a term stay 0)."""
    weighted = sp.csr_matrix(counts.multiply(idf[None, :]), dtype=np.float64)
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return sp.csr_matrix(sp.diags(scale) @ weighted)


def as_torch_csr(matrix: sp.spmatrix) -> torch.Tensor:
    """A scipy sparse matrix as a float32 torch CSR tensor (its products are multi-threaded,
    scipy's are not)."""
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    with warnings.catch_warnings():  # "sparse CSR support is in beta state"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(csr.indptr.astype(np.int64)),
            torch.from_numpy(csr.indices.astype(np.int64)),
            torch.from_numpy(csr.data),
            size=csr.shape,
            check_invariants=False,
        )
