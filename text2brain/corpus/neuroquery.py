"""The NeuroQuery corpus (13,459 articles, BSD-3), from its pinned files (neuroquery_files).

Full texts are not public: titles come from the metadata, author keywords and abstracts are
rebuilt from the per-article term-count matrices of the 156,521-term vocabulary. The abstract
is therefore a bag of vocabulary terms (most frequent first), not prose, and NeuroQuery has no
table captions (only labels such as "Table 2").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from text2brain.brain import BrainSpace
from text2brain.corpus.base import Article, Corpus
from text2brain.neuroquery_files import (
    VERSION_PREFIX,
    VOCAB,
    CorpusFileError,
    fetch_neuroquery_file,
)


def load_neuroquery(
    data_dir: str | os.PathLike | None = None, space: BrainSpace | None = None
) -> Corpus:
    """The NeuroQuery corpus on `space` (default: its own 4 mm grid and mask)."""
    file = partial(fetch_neuroquery_file, data_dir=data_dir)
    space = space if space is not None else BrainSpace.from_nifti(file("mask_img.nii.gz"))
    metadata = pd.read_csv(file(f"{VERSION_PREFIX}metadata.tsv.gz"), sep="\t")
    vocabulary = np.array(
        file(f"{VERSION_PREFIX}{VOCAB}_vocabulary.txt").read_text("utf-8").split("\n")
    )
    keywords = _load_counts(file, "keywords", len(metadata))
    abstracts = _load_counts(file, "abstract", len(metadata))

    articles = []
    for row, (pmid, title) in enumerate(zip(metadata["id"], metadata["title"], strict=True)):
        kw = vocabulary[keywords.indices[keywords.indptr[row] : keywords.indptr[row + 1]]]
        terms = _terms_by_count(abstracts, row, vocabulary)
        articles.append(
            Article(
                id=str(pmid),
                title=title if isinstance(title, str) else "",
                keywords=tuple(kw.tolist()),
                abstract=" ".join(terms),
                abstract_is_bag_of_terms=True,
            )
        )
    coordinates = pd.read_csv(
        file(f"{VERSION_PREFIX}coordinates.tsv.gz"),
        sep="\t",
        usecols=["id", "table_id", "x", "y", "z"],
        dtype={"id": str, "table_id": str},
    )
    return Corpus.build("neuroquery", articles, coordinates, space)


def _load_counts(file: Callable[[str], Path], source: str, n_articles: int) -> sp.csr_matrix:
    counts = sp.load_npz(
        file(f"{VERSION_PREFIX}{VOCAB}_source-{source}_type-count_features.npz")
    ).tocsr()
    if counts.shape[0] != n_articles:
        raise CorpusFileError(
            f"NeuroQuery {source} counts have {counts.shape[0]} rows but the metadata has "
            f"{n_articles} articles; the files come from different versions"
        )
    return counts


def _terms_by_count(counts: sp.csr_matrix, row: int, vocabulary: np.ndarray) -> list[str]:
    """An article's terms, most frequent first (ties alphabetical), for a bag-of-terms text."""
    sl = slice(counts.indptr[row], counts.indptr[row + 1])
    cols, n = counts.indices[sl], counts.data[sl]
    order = np.lexsort((cols, -n))
    return vocabulary[cols[order]].tolist()
