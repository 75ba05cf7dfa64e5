"""A fixed sample of an evaluation split for measuring the hierarchy of an embedding space.

`sample_hierarchy` draws (seeded, so every validation sees the same sample) up to `n`
articles of a split among those with two tables or more, one of each article's tables, and,
for a third of them (``ceil(n / 3)``: about `n` texts in all), the article's texts: its
title, one of its keywords and its abstract (each when it has one), so that the sources compare
on the same articles.
Article i's average map is the parent of table map i (a single-table article's table map *is*
its average map, so it is left out, as in the training batches' hierarchy pairs). The heads
measure on it (text2brain.models.contrastive.hierarchy): cone membership and distance to the
origin of tables against their article, text -> map entailment, and how far from the origin
keywords, titles, abstracts, article and table maps lie.

Cost: 2 n maps rendered (under a second for n = 500) and embedded by the head, and about n
texts encoded (most of the time, with a trained text encoder: abstracts are long).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from text2brain.corpus import Corpus

#: The text sources of a sample, broadest first (a keyword names a topic, an abstract an
#: article's findings).
TEXT_SOURCES = ("keyword", "title", "abstract")

#: Maps of (corpus article index, table id or None for the article average) jobs.
RenderJobs = Callable[[list[tuple[int, "str | None"]]], np.ndarray]


@dataclass
class HierarchySample:
    """Article -> table pairs of one split and the articles' texts.

    Attributes:
        article_ids: (A,) the sampled articles.
        table_ids: (A,) one table of each.
        article_maps: (A, n_voxels) float32 article-average maps (the parents).
        table_maps: (A, n_voxels) float32 table maps; row i is a table of article i.
        texts: source ("keyword", "title", "abstract") -> the texts of that source (of the
            first third of the articles).
        text_article: source -> (n_source,) int64 row in `article_maps` of each text's article.
    """

    article_ids: list[str]
    table_ids: list[str]
    article_maps: np.ndarray
    table_maps: np.ndarray
    texts: dict[str, list[str]]
    text_article: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.article_ids)


def sample_hierarchy(
    corpus: Corpus,
    indices: Sequence[int],
    tables: Sequence[Sequence[str]],
    render: RenderJobs,
    n: int = 500,
    seed: int = 0,
) -> HierarchySample:
    """Up to `n` article -> table pairs of the articles `indices` (corpus rows), with texts.

    `tables[i]` lists corpus article i's tables (those with peaks); `render` draws the maps of
    (article index, table id or None) jobs. Articles in the order of `indices`; the texts are
    those of the first ``ceil(n / 3)`` of them.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    rng = np.random.default_rng(seed)
    candidates = [int(i) for i in indices if len(tables[int(i)]) >= 2]
    chosen = np.sort(rng.choice(len(candidates), min(n, len(candidates)), replace=False))
    rows = [candidates[c] for c in chosen]
    table_ids = [str(tables[i][rng.integers(len(tables[i]))]) for i in rows]
    texts: dict[str, list[str]] = {source: [] for source in TEXT_SOURCES}
    owners: dict[str, list[int]] = {source: [] for source in TEXT_SOURCES}
    for row, index in enumerate(rows[: math.ceil(n / 3)]):
        article = corpus.articles[index]
        found = {
            "keyword": article.keywords[rng.integers(len(article.keywords))]
            if article.keywords
            else "",
            "title": article.title,
            "abstract": article.abstract,
        }
        for source, text in found.items():
            if text.strip():
                texts[source].append(text)
                owners[source].append(row)
    maps = render([(i, None) for i in rows] + list(zip(rows, table_ids, strict=True)))
    return HierarchySample(
        article_ids=[corpus.articles[i].id for i in rows],
        table_ids=table_ids,
        article_maps=maps[: len(rows)],
        table_maps=maps[len(rows) :],
        texts=texts,
        text_article={s: np.asarray(owners[s], dtype=np.int64) for s in TEXT_SOURCES},
    )
