"""The text sampler (text2brain.data.sampling): the proportions of text sources, weights,
caption fallbacks and bad configurations."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from text2brain.corpus.base import Article
from text2brain.data import TextSampler

# -- sampling -----------------------------------------------------------------------------------
FULL = Article(
    id="x",
    title="Title",
    keywords=("k1", "k2"),
    abstract="An abstract.",
    discussion=("One.", "Two.", "Three."),
    table_captions={"t1": "Caption one. More.", "t2": "Caption two."},
)


def draw(sampler: TextSampler, article: Article, n: int = 4000, tables=("t1", "t2")) -> list:
    rng = np.random.default_rng(0)
    return [sampler.sample(article, list(tables), rng) for _ in range(n)]


def test_sampler_proportions_match_the_paper():
    pairs = draw(TextSampler(), FULL)
    kinds = Counter(p.kind for p in pairs)
    assert abs(kinds["table"] / len(pairs) - 0.5) < 0.03
    sources = Counter(p.source for p in pairs if p.kind == "article")
    n_article = kinds["article"]
    for source in ("title", "keyword", "abstract", "discussion"):
        assert abs(sources[source] / n_article - 0.25) < 0.03
    tables = [p for p in pairs if p.kind == "table"]
    assert {p.text for p in tables} == {"Caption one.", "Caption two."}  # first sentence only
    assert {p.table_id for p in tables} == {"t1", "t2"}


def test_sampler_weights_and_subsets():
    sampler = TextSampler(table_probability=0.0, article_sources={"title": 3, "discussion": 1})
    pairs = draw(sampler, FULL)
    counts = Counter(p.source for p in pairs)
    assert set(counts) == {"title", "discussion"}
    assert abs(counts["title"] / len(pairs) - 0.75) < 0.03
    order = {s: i for i, s in enumerate(FULL.discussion)}
    for p in pairs:
        if p.source == "discussion":
            picked = p.text.split(" ")
            assert 1 <= len(picked) <= 3
            assert [order[s] for s in picked] == sorted(order[s] for s in picked)


def test_sampler_caption_fallbacks():
    no_captions = Article(id="y", title="Only a title", keywords=("k",))
    pairs = draw(TextSampler(), no_captions)
    assert all(p.kind == "article" for p in pairs)  # fallback "article"
    pairs = draw(TextSampler(caption_fallback="title"), no_captions)
    tables = [p for p in pairs if p.kind == "table"]
    assert abs(len(tables) / len(pairs) - 0.5) < 0.03
    assert all(p.text == "Only a title" and p.source == "title" for p in tables)


def test_sampler_only_uses_text_the_article_has():
    keywords_only = Article(id="z", keywords=("k",))
    pairs = draw(TextSampler(table_probability=0.0), keywords_only, n=200)
    assert {p.source for p in pairs} == {"keyword"}
    nothing = Article(id="n")
    with pytest.raises(ValueError, match="no text"):
        TextSampler().sample(nothing, ["t1"], np.random.default_rng(0))
    with pytest.raises(ValueError, match="no title"):
        TextSampler.evaluation(nothing)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"article_sources": {"titel": 1}}, "unknown article text source"),
        ({"article_sources": {"title": 0}}, "one > 0"),
        ({"table_probability": 1.5}, "table_probability"),
        ({"caption_fallback": "skip"}, "caption_fallback"),
        ({"max_discussion_sentences": 0}, "max_discussion_sentences"),
    ],
)
def test_sampler_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TextSampler(**kwargs)
