"""The frozen-encoder embedding cache (text2brain.models.embedding_cache): the file, its key,
and the heads that read it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from model_configs import tiny_model
from synthetic import quiet_trainer, tiny_datamodule

from text2brain import outputs
from text2brain.models import embedding_cache
from text2brain.models.embedding_cache import (
    MAX_BATCH,
    TOKENS_PER_BATCH,
    EmbeddingCache,
    length_batches,
    open_or_build,
)
from text2brain.paths import cache_dir

#: Freezes the whole tiny encoder (2 layers) of tests/conftest.py's `tiny_bert`.
FROZEN = {"text": {"freeze_embeddings": True, "freeze_layers": 2}}


# -- the file ----------------------------------------------------------------------------------
def test_length_batches_cover_every_text_once_within_the_budget() -> None:
    lengths = np.random.default_rng(0).integers(1, 130, size=3000)
    batches = length_batches(lengths)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= MAX_BATCH
        assert len(batch) == 1 or lengths[batch].max() * len(batch) <= TOKENS_PER_BATCH
    # sorted: short texts first, so a batch pads to nearly its own length
    assert [lengths[b].max() for b in batches] == sorted(lengths[b].max() for b in batches)


def fake_encoder(calls: list[list[str]]) -> Any:
    def encode(texts: list[str]) -> torch.Tensor:
        calls.append(list(texts))
        return torch.tensor([[len(t), ord(t[0])] for t in texts], dtype=torch.float32)

    return encode


def build(folder: Path, key: str, texts: list[str], calls: list, **kwargs: Any) -> Any:
    return open_or_build(
        folder,
        key,
        texts,
        2,
        fake_encoder(calls),
        lambda chunk: [len(t) for t in chunk],
        {"what": "test"},
        progress=False,
        **kwargs,
    )


def test_built_once_then_opened_memory_mapped(tmp_path: Path) -> None:
    texts = ["bb", "a", "cccc", "ddd"]
    calls: list[list[str]] = []
    cache = build(tmp_path, "k1", texts, calls)
    assert sum(len(c) for c in calls) == 4
    assert isinstance(cache.vectors, np.memmap)
    again = build(tmp_path, "k1", texts, calls)
    assert sum(len(c) for c in calls) == 4  # nothing encoded the second time
    vectors, missing = again.lookup(["cccc", "zz", "a"])
    assert missing == [1]
    assert vectors.tolist() == [[4.0, ord("c")], [0.0, 0.0], [1.0, ord("a")]]
    assert build(tmp_path, "k2", texts, calls, build=False) is None  # another key: no file


def test_an_interrupted_build_leaves_no_file(tmp_path: Path) -> None:
    def failing(texts: list[str]) -> torch.Tensor:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        open_or_build(
            tmp_path, "k", ["a", "b"], 2, failing, lambda t: [1] * len(t), {}, progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_a_file_of_the_wrong_shape_is_rebuilt(tmp_path: Path) -> None:
    np.save(tmp_path / "k.npy", np.zeros((3, 2), np.float32))
    calls: list[list[str]] = []
    with pytest.warns(UserWarning, match=r"holds float32 \(3, 2\), not float32 \(2, 2\)"):
        cache = build(tmp_path, "k", ["a", "b"], calls)
    assert len(cache) == 2 and calls


def _truncated(path: Path) -> None:
    np.save(path, np.ones((4, 2), np.float32))
    path.write_bytes(path.read_bytes()[:-8])


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a numpy file at all" * 10)


def _nan_filled(path: Path) -> None:
    np.save(path, np.full((4, 2), np.nan, np.float32))


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (_truncated, "cannot be read"),
        (_garbage, "cannot be read"),
        (_nan_filled, "holds NaN or infinite values"),
    ],
)
def test_a_corrupt_cache_is_named_and_rebuilt(tmp_path: Path, spoil: Any, problem: str) -> None:
    """It used to crash later: `mmap length is greater than file size`, `preds must be finite`."""
    texts = ["bb", "a", "cccc", "ddd"]
    spoil(tmp_path / "k.npy")
    calls: list[list[str]] = []
    with pytest.warns(UserWarning, match=f"embedding cache '{tmp_path / 'k.npy'}' {problem}"):
        cache = build(tmp_path, "k", texts, calls)
    assert sum(len(c) for c in calls) == 4
    assert np.isfinite(np.asarray(cache.vectors)).all() and cache.vectors.shape == (4, 2)
    spoil(tmp_path / "k.npy")
    with pytest.warns(UserWarning, match="delete it to rebuild"):
        assert build(tmp_path, "k", texts, calls, build=False) is None


def test_the_temporaries_of_a_killed_build_are_removed(tmp_path: Path) -> None:
    """A killed build left a 42 MB .tmp-*.npy in the cache that nothing removed."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)  # a process that has exited
    host = outputs._host()
    orphan = tmp_path / f".{host}-{pid}-0123abcd.tmp-k.npy"
    orphan.write_bytes(b"x" * 100)
    live = tmp_path / f".{host}-{os.getpid()}-0123abcd.tmp-other.npy"  # being written
    live.write_bytes(b"x")
    build(tmp_path, "k", ["a", "b"], [])
    assert not orphan.exists() and live.exists()


def test_lookup_checks_sizes() -> None:
    with pytest.raises(ValueError, match="2 texts but 1 vectors"):
        EmbeddingCache(["a", "b"], np.zeros((1, 4), np.float32))


# -- the heads ---------------------------------------------------------------------------------
def fit(name: str, files: dict[str, str], tiny_bert: Path, **overrides: Any) -> Any:
    """A head fitted for 2 steps; its random tiny encoder is the same in every call."""
    torch.manual_seed(0)
    model = tiny_model(name, tiny_bert, **overrides)
    data = tiny_datamodule(files, tiny_bert)
    quiet_trainer(max_steps=2, limit_val_batches=1, num_sanity_val_steps=0).fit(
        model, datamodule=data
    )
    return model, data


def test_cacheable_texts_are_every_enumerable_pair_text(
    data_files: dict[str, str], tiny_bert: Path
) -> None:
    data = tiny_datamodule(data_files, tiny_bert)
    texts = data.cacheable_texts()
    assert texts == sorted(set(texts))
    articles = data.corpus.articles
    for i in data.indices["train"]:
        article = articles[i]
        assert article.title in texts and article.abstract in texts
        assert set(article.keywords) <= set(texts)
    for stage in ("val", "test"):
        assert {articles[i].title for i in data.indices[stage]} <= set(texts)


@pytest.mark.parametrize("name", ["text2brain", "clip", "mnm"])
def test_frozen_encoder_reads_the_cache_and_matches_live_encoding(
    name: str, data_files: dict[str, str], tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = fit(name, data_files, tiny_bert, **FROZEN)
    cache = model.text_cache
    assert cache is not None and cache.path.parent == cache_dir() / "embeddings"
    assert len(cache) == len(data.cacheable_texts())
    texts = data.cacheable_texts()[:5] + ["a text the sampler never draws"]
    model.eval()
    cached = model.encode_texts(texts)
    live = model._encode_live(texts, 4)
    torch.testing.assert_close(cached, live, atol=1e-5, rtol=1e-5)

    # A second run with the same encoder opens the file: nothing is encoded again.
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the second run re-encoded the texts")

    monkeypatch.setattr(embedding_cache, "encode_texts", refuse)
    second, _ = fit(name, data_files, tiny_bert, **FROZEN)
    assert second.text_cache.path == cache.path


def test_a_changed_encoder_never_reuses_the_vectors(
    data_files: dict[str, str], tiny_bert: Path
) -> None:
    first, _ = fit("text2brain", data_files, tiny_bert, **FROZEN)
    torch.manual_seed(0)
    model = tiny_model("text2brain", tiny_bert, **FROZEN)
    data = tiny_datamodule(data_files, tiny_bert)
    data.setup()
    model.set_space(data.space)
    with torch.no_grad():
        model.net.text_encoder.model.embeddings.word_embeddings.weight.add_(0.01)
    quiet_trainer(max_steps=1, limit_val_batches=0).fit(model, datamodule=data)
    assert model.text_cache.path != first.text_cache.path


def test_frozen_encoder_stays_in_eval_mode(data_files: dict[str, str], tiny_bert: Path) -> None:
    frozen = tiny_model("text2brain", tiny_bert, **FROZEN)
    trained = tiny_model("text2brain", tiny_bert)
    data = tiny_datamodule(data_files, tiny_bert)
    data.setup()
    for model in (frozen, trained):
        model.set_space(data.space)
        model.train()
    assert not frozen.text_encoder.training and frozen.net.decoder.training
    assert trained.text_encoder.training


@pytest.mark.parametrize("overrides", [{}, {"text": {**FROZEN["text"], "embedding_cache": False}}])
def test_no_cache_for_a_trained_encoder_or_when_switched_off(
    overrides: dict[str, Any], data_files: dict[str, str], tiny_bert: Path
) -> None:
    model, _ = fit("text2brain", data_files, tiny_bert, **overrides)
    assert model.text_cache is None


def test_a_warning_of_every_batch_is_reported_once(tmp_path: Path) -> None:
    import warnings

    def encode(texts: list[str]) -> torch.Tensor:
        warnings.warn(f"{len(texts)} of {len(texts)} texts were truncated", stacklevel=2)
        return torch.zeros(len(texts), 2)

    lengths = [MAX_BATCH] * (3 * MAX_BATCH)  # 3 batches or more under the token budget
    with pytest.warns(UserWarning) as caught:
        open_or_build(
            tmp_path,
            "k",
            [str(i) for i in range(len(lengths))],
            2,
            encode,
            lambda t: lengths[: len(t)],
            {},
            progress=False,
        )
    messages = [str(w.message) for w in caught if "truncated" in str(w.message)]
    assert len(messages) == 1 and "more of" in messages[0]
