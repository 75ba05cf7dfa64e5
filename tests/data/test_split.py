"""The keyword-disjoint split (text2brain.data.split): completeness, determinism, its file and
impossible requests."""

from __future__ import annotations

import json

import pytest
from synthetic import make_corpus

from text2brain.corpus.base import Article, Corpus
from text2brain.data import Split, SplitRule, make_split
from text2brain.data.split import load_or_make_split, shared_specific_keywords


def paired_corpus(space, n: int = 60) -> Corpus:
    """Articles sharing a specific keyword in pairs, and some without keywords."""
    base = make_corpus(space, n_articles=n)
    articles = []
    for i, a in enumerate(base.articles):
        keywords = () if i % 10 == 9 else ("fmri", f"pair{i // 2}", f"unique{i}")
        articles.append(Article(a.id, a.title, keywords, a.abstract, a.discussion))
    return Corpus.build("paired", articles, base.coordinates, space)


# -- split --------------------------------------------------------------------------------------
def test_split_is_keyword_disjoint_and_complete(space):
    corpus = paired_corpus(space)
    rule = SplitRule(n_test=10, n_val=10, keyword_max_df=0.1, max_exclusions_per_test_article=1)
    split = make_split(corpus, rule)
    assert len(split.test) == 10 and len(split.val) == 10
    assert not shared_specific_keywords(split, corpus)
    parts = [split.train, split.val, split.test, split.excluded]
    assert sorted(sum(parts, [])) == sorted(corpus.ids)
    # Each test article's pair partner (if not itself in test) was kept out of training.
    test_pairs = {corpus.articles[corpus.index_of(i)].keywords[1] for i in split.test}
    for i in split.train + split.val:
        keywords = corpus.articles[corpus.index_of(i)].keywords
        assert not keywords or keywords[1] not in test_pairs
    no_keywords = {a.id for a in corpus.articles if not a.keywords}
    assert not no_keywords & set(split.test)
    assert split.stats["excluded_from_training"] == len(split.excluded) > 0
    assert split.stats["generic_keywords"] == 1  # "fmri"


def test_split_is_deterministic_and_seeded(space):
    corpus = paired_corpus(space)
    rule = SplitRule(n_test=10, n_val=10, keyword_max_df=0.1)
    assert make_split(corpus, rule).test == make_split(corpus, rule).test
    other = make_split(corpus, SplitRule(n_test=10, n_val=10, keyword_max_df=0.1, seed=1))
    assert other.test != make_split(corpus, rule).test


def test_split_file_round_trip_and_mismatch(space, tmp_path):
    corpus = paired_corpus(space)
    rule = SplitRule(n_test=10, n_val=10, keyword_max_df=0.1)
    path = tmp_path / "split.json"
    split = load_or_make_split(corpus, path, rule)
    assert path.exists()
    again = load_or_make_split(corpus, path, SplitRule(n_test=5, n_val=5))
    assert again.test == split.test and again.rule == rule  # the file wins over a new rule
    smaller = corpus.subset(corpus.ids[:-3])
    with pytest.raises(ValueError, match="does not match corpus.*3 corpus articles|3 ids not in"):
        load_or_make_split(smaller, path, rule)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read split file"):
        Split.load(bad)
    payload = json.loads(path.read_text())
    payload["format"] = 99
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="format 99"):
        Split.load(path)


def test_split_reports_impossible_requests(space):
    corpus = paired_corpus(space)
    with pytest.raises(ValueError, match="only .* of the 500 requested test articles"):
        make_split(corpus, SplitRule(n_test=500, n_val=1, keyword_max_df=0.1))
    with pytest.raises(ValueError, match="validation"):
        make_split(corpus, SplitRule(n_test=5, n_val=500, keyword_max_df=0.1))
    with pytest.raises(ValueError, match="keyword_max_df"):
        make_split(corpus, SplitRule(keyword_max_df=0))
