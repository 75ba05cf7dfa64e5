"""Text-map pairs drawn as in Text2Brain (paper 2.4).

Training: with probability `table_probability` a table map paired with the first sentence of
its caption, otherwise the article-average map paired with one text source drawn among those
the article has (title, one keyword, the abstract, a random subset of discussion sentences),
with configurable weights so the paper's source ablation can be rerun. Evaluation: the title
with the article-average map, deterministic.

Fallback when an article has no captioned table (NeuroQuery has none): `caption_fallback`
"article" draws the article-average branch instead (the default: the mean of an article's
table maps is exactly its average map, so pairing tables with article-level text only adds
target noise); "title" pairs a random table map with the title.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from text2brain.corpus.base import Article
from text2brain.text import split_sentences

ARTICLE_SOURCES = ("title", "keyword", "abstract", "discussion")
CAPTION_FALLBACKS = ("article", "title")


@dataclass(frozen=True)
class Pair:
    """One text and the map it is paired with (`table_id` None = article-average map)."""

    text: str
    source: str
    table_id: str | None = None

    @property
    def kind(self) -> str:
        return "article" if self.table_id is None else "table"


class TextSampler:
    """Draws (text, map) pairs for training and fixed pairs for evaluation."""

    def __init__(
        self,
        table_probability: float = 0.5,
        article_sources: Mapping[str, float] | None = None,
        max_discussion_sentences: int = 5,
        caption_fallback: str = "article",
    ) -> None:
        weights = dict(article_sources or {s: 1.0 for s in ARTICLE_SOURCES})
        unknown = set(weights) - set(ARTICLE_SOURCES)
        if unknown:
            raise ValueError(
                f"unknown article text source(s) {sorted(unknown)}; choose from {ARTICLE_SOURCES}"
            )
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ValueError(f"article_sources weights must be >= 0, one > 0; got {weights}")
        if not 0.0 <= table_probability <= 1.0:
            raise ValueError(f"table_probability must be in [0, 1], got {table_probability}")
        if caption_fallback not in CAPTION_FALLBACKS:
            raise ValueError(
                f"caption_fallback must be one of {CAPTION_FALLBACKS}, got {caption_fallback!r}"
            )
        if max_discussion_sentences < 1:
            raise ValueError("max_discussion_sentences must be >= 1")
        self.table_probability = table_probability
        self.article_sources = {s: float(w) for s, w in weights.items() if w > 0}
        self.max_discussion_sentences = max_discussion_sentences
        self.caption_fallback = caption_fallback

    def sources_of(self, article: Article) -> list[str]:
        """The configured article-level sources this article has text for."""
        has = {
            "title": bool(article.title.strip()),
            "keyword": bool(article.keywords),
            "abstract": bool(article.abstract.strip()),
            "discussion": bool(article.discussion),
        }
        return [s for s in self.article_sources if has[s]]

    def can_train_on(self, article: Article, table_ids: Sequence[str]) -> bool:
        return bool(self.sources_of(article)) or bool(self._table_texts(article, table_ids))

    def sample(self, article: Article, table_ids: Sequence[str], rng: np.random.Generator) -> Pair:
        """A random training pair for `article`, whose tables (with peaks) are `table_ids`."""
        sources = self.sources_of(article)
        if rng.random() < self.table_probability or not sources:
            tables = self._table_texts(article, table_ids)
            if tables:
                table_id, text, source = tables[rng.integers(len(tables))]
                return Pair(text, source, table_id)
            if not sources:
                raise ValueError(
                    f"article {article.id!r} has no text for the configured sources "
                    f"{list(self.article_sources)} and no table caption"
                )
        weights = np.array([self.article_sources[s] for s in sources])
        source = sources[rng.choice(len(sources), p=weights / weights.sum())]
        return Pair(self._article_text(article, source, rng), source)

    def enumerable_texts(self, article: Article, table_ids: Sequence[str]) -> list[str]:
        """Every text `sample` can return for this article, except discussion subsets.

        Why: a frozen encoder's vectors of these texts can be computed once (an embedding
        cache); random subsets of discussion sentences are too many to list and are encoded
        when drawn.
        """
        texts = [text for _, text, _ in self._table_texts(article, table_ids)]
        sources = self.sources_of(article)
        if "title" in sources:
            texts.append(article.title)
        if "keyword" in sources:
            texts.extend(article.keywords)
        if "abstract" in sources:
            texts.append(article.abstract)
        return texts

    @staticmethod
    def evaluation(article: Article) -> Pair:
        """The fixed evaluation pair: title -> article-average map."""
        if not article.title.strip():
            raise ValueError(f"article {article.id!r} has no title to evaluate on")
        return Pair(article.title, "title")

    def _table_texts(
        self, article: Article, table_ids: Sequence[str]
    ) -> list[tuple[str, str, str]]:
        """(table id, text, source) of each table that can be drawn."""
        captioned = []
        for table_id in table_ids:
            sentences = split_sentences(article.table_captions.get(table_id, ""))
            if sentences:
                captioned.append((table_id, sentences[0], "caption"))
        if captioned or self.caption_fallback == "article" or not article.title.strip():
            return captioned
        return [(table_id, article.title, "title") for table_id in table_ids]

    def _article_text(self, article: Article, source: str, rng: np.random.Generator) -> str:
        if source == "title":
            return article.title
        if source == "keyword":
            return article.keywords[rng.integers(len(article.keywords))]
        if source == "abstract":
            return article.abstract
        n = len(article.discussion)
        k = int(rng.integers(1, min(n, self.max_discussion_sentences) + 1))
        chosen = np.sort(rng.choice(n, k, replace=False))
        return " ".join(article.discussion[i] for i in chosen)
