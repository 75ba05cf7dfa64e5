"""The retrieval bank of the contrastive heads (`RetrievalBankMixin`, `RetrievalBank`): maps
rebuilt from peaks as the corpus renders them, weighted averages of them, the compact bank in
the checkpoint, old dense banks, and when the bank is embedded, on the heads trained once for
the session (conftest's `contrastive_runs`) and short runs of their own."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from model_configs import tiny_model
from synthetic import QUERIES, small_space, tiny_datamodule

from text2brain import lorentz
from text2brain.brain import BrainSpace, render_article_maps
from text2brain.export import export_checkpoint
from text2brain.inference import load_predictor
from text2brain.models.contrastive.retrieval import (
    DenseMaps,
    PeakMaps,
    RetrievalBank,
    compact_embeddings,
)
from text2brain.models.targets import scale_maps, scaled_targets

HEADS = ("clip", "mnm")

pytestmark = pytest.mark.usefixtures("one_thread")


# -- maps from the bank ------------------------------------------------------------------------
@pytest.mark.parametrize("name", HEADS)
def test_maps_are_weighted_averages_of_the_corpus_maps(
    contrastive_runs: dict[str, dict[str, Any]], name: str
) -> None:
    model, data = contrastive_runs[name]["model"], contrastive_runs[name]["data"]
    bank = model.bank
    ids, maps = data.article_maps("train")
    assert bank.ids == list(ids) and isinstance(bank.maps, PeakMaps)
    assert bank.maps.fwhm == data.hparams.fwhm
    assert bank.maps.space.to_dict() == data.space.to_dict()
    corpus_maps = scale_maps(torch.from_numpy(np.array(maps)))
    torch.testing.assert_close(bank.render(range(len(bank))), corpus_maps, atol=1e-6, rtol=1e-5)
    titles = {a.id: a.title for a in data.corpus.articles}
    assert bank.titles == [titles[i] for i in ids]
    # The embeddings (float16) are those of the final weights (refreshed after the last step).
    assert bank.embeddings.dtype == torch.float16
    with torch.no_grad():
        expected = compact_embeddings(model.net.embed_maps(corpus_maps))
    torch.testing.assert_close(bank.embeddings, expected, atol=2e-3, rtol=2e-3)

    with torch.no_grad():
        text = model.embed_text({"text": QUERIES})
        distance = model.net.geometry.cross_distance(text, bank.embeddings.float())
        k = model.hparams.retrieval_k
        nearest, indices = distance.topk(k, largest=False)
        weights = torch.softmax(-nearest * model.net.geometry.logit_scale(), dim=1)
        expected = torch.einsum("nk,nkv->nv", weights, corpus_maps[indices])
    predicted = model.predict_texts(QUERIES)
    torch.testing.assert_close(predicted, expected, atol=1e-5, rtol=1e-4)
    assert predicted.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("space", ["geodesic", "direction"])
def test_retrieval_space_and_transform_change_the_neighbours_and_their_maps(
    contrastive_runs: dict[str, dict[str, Any]], space: str
) -> None:
    model, data = contrastive_runs["mnm"]["model"], contrastive_runs["mnm"]["data"]
    bank = model.bank
    _, maps = data.article_maps("train")
    corpus_maps = scaled_targets(torch.from_numpy(np.array(maps)), "power:0.1")
    try:
        model.retrieval_space, model.retrieval_transform = space, "power:0.1"
        with torch.no_grad():
            text = model.embed_text({"text": QUERIES})
            points = bank.embeddings.float()
            if space == "geodesic":
                distance = lorentz.pairwise_dist(text, points, model.net.geometry.curvature())
            else:
                distance = 1 - F.normalize(text, dim=-1) @ F.normalize(points, dim=-1).T
            nearest, indices = distance.topk(model.hparams.retrieval_k, largest=False)
            weights = torch.softmax(-nearest * model.net.geometry.logit_scale(), dim=1)
            expected = torch.einsum("nk,nkv->nv", weights, corpus_maps[indices])
        torch.testing.assert_close(model.predict_texts(QUERIES), expected, atol=1e-5, rtol=1e-4)
        # Targets are scored on the maps' scale.
        target = torch.from_numpy(np.array(maps[:2]))
        torch.testing.assert_close(
            model.normalise_target(target), scaled_targets(target, "power:0.1")
        )
    finally:
        model.retrieval_space, model.retrieval_transform = "logits", "none"


def test_bad_retrieval_settings_are_refused(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="retrieval_space must be one of"):
        tiny_model("mnm", tiny_bert, retrieval_space="euclid")
    with pytest.raises(ValueError, match="is not one of"):
        tiny_model("clip", tiny_bert, retrieval_transform="cube")


def test_bank_rebuilds_neuroquery_article_maps(neuroquery_dir: Path) -> None:
    """The 20 nearest articles of a few queries: rebuilt from the bank's peaks, they are the
    corpus's rendered article maps (`render_article_maps`) to float tolerance."""
    from text2brain.data import TextMapDataModule

    data = TextMapDataModule(data_dir=str(neuroquery_dir), tokenizer=None, num_workers=0)
    with pytest.warns(UserWarning, match="skipped"):
        data.setup()
    ids, *peaks = data.article_peaks("train")
    corpus = data.corpus
    bank = RetrievalBank.from_peaks(
        ids, tuple(peaks), [""] * len(ids), [[]] * len(ids), data.space, data.hparams.fwhm
    )
    rows = np.random.default_rng(0).choice(len(bank), (3, 20), replace=False)
    rebuilt = bank.render(rows.ravel())
    chosen = [ids[r] for r in rows.ravel()]
    coordinates = corpus.coordinates[corpus.coordinates["id"].isin(chosen)]
    rendered_ids, rendered = render_article_maps(coordinates, data.space, data.hparams.fwhm)
    order = [list(rendered_ids).index(i) for i in chosen]
    expected = scale_maps(torch.from_numpy(rendered[order]))
    torch.testing.assert_close(rebuilt, expected, atol=1e-6, rtol=1e-5)
    # What the bank stores: ~35 peaks per article, no map.
    assert bank.maps.xyz.dtype == torch.float32 and len(bank.maps.xyz) < 40 * len(bank)


def test_a_subset_of_the_bank_renders_its_rows(
    contrastive_runs: dict[str, dict[str, Any]],
) -> None:
    """`RetrievalBank.subset`: the chosen rows, in the given order, with their texts and maps
    (a bank with embeddings, or of dense maps, is not cut)."""
    full = contrastive_runs["clip"]["model"].bank
    peaks_only = RetrievalBank(full.ids, full.titles, full.keywords, full.maps)
    rows = [5, 0, 3]
    cut = peaks_only.subset(rows)
    assert cut.ids == [full.ids[i] for i in rows] and cut.titles == [full.titles[i] for i in rows]
    torch.testing.assert_close(cut.render(range(3)), full.render(rows))
    assert int(cut.maps.offsets[-1]) == len(cut.maps.xyz)
    with pytest.raises(ValueError, match="only a bank of peaks without embeddings"):
        full.subset(rows)


# -- the bank in the checkpoint ----------------------------------------------------------------
def bank_bytes(state: dict[str, Any]) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def test_checkpoint_holds_a_compact_bank(contrastive_runs: dict[str, dict[str, Any]]) -> None:
    checkpoint = torch.load(contrastive_runs["mnm"]["path"], map_location="cpu", weights_only=True)
    state = checkpoint["text2brain"]["bank"]
    model = contrastive_runs["mnm"]["model"]
    assert state["ids"] == model.bank.ids and "maps" not in state
    assert state["embeddings"].dtype == torch.float16
    assert set(state["peaks"]) == {"xyz", "offsets", "weights", "fwhm", "space"}
    dense = RetrievalBank.from_maps(
        model.bank.ids, model.bank.render(range(len(model.bank))).numpy(), state["titles"],
        state["keywords"],
    )  # fmt: skip
    assert bank_bytes(state) < bank_bytes(dense.to_dict()) / 4
    assert not any(key.startswith("bank") for key in checkpoint["state_dict"])


@pytest.mark.parametrize("name", HEADS)
def test_a_dense_bank_of_an_old_checkpoint_still_loads(
    contrastive_runs: dict[str, dict[str, Any]], tmp_path: Path, name: str
) -> None:
    """A checkpoint written before the compact bank: scaled float16 maps, float32 embeddings."""
    run = contrastive_runs[name]
    model, bank = run["model"], run["model"].bank
    checkpoint = torch.load(run["path"], map_location="cpu", weights_only=True)
    maps = bank.render(range(len(bank))).half()
    checkpoint["text2brain"]["bank"] = {
        "ids": list(bank.ids),
        "titles": list(bank.titles),
        "keywords": [list(k) for k in bank.keywords],
        "maps": maps,
        "embeddings": bank.embeddings.float(),
    }
    torch.save(checkpoint, tmp_path / "old.ckpt")
    predictor = load_predictor(tmp_path / "old.ckpt", device="cpu")
    loaded = predictor.model.bank
    assert isinstance(loaded.maps, DenseMaps) and torch.equal(loaded.embeddings, bank.embeddings)
    assert (
        predictor.related_articles("working memory", k=5)
        == model.related_articles(["working memory"], k=5)[0]
    )
    torch.testing.assert_close(
        torch.from_numpy(predictor.predict_vectors(QUERIES)),
        model.predict_texts(QUERIES),
        atol=1e-3,
        rtol=0,
    )
    # Saved again, it stays dense (there are no peaks to rebuild it from).
    assert "maps" in loaded.to_dict() and "peaks" not in loaded.to_dict()


def test_bank_on_another_grid_is_refused(contrastive_runs: dict[str, dict[str, Any]]) -> None:
    state = contrastive_runs["clip"]["model"].bank.to_dict()
    other = small_space()
    mask = other.mask.copy()
    mask[tuple(np.argwhere(mask)[0])] = False
    with pytest.raises(ValueError, match="voxels"):
        RetrievalBank.from_dict(state, BrainSpace(mask, other.affine))
    shifted = other.affine.copy()
    shifted[0, 3] += 4
    with pytest.raises(ValueError, match="another grid"):
        RetrievalBank.from_dict(state, BrainSpace(other.mask, shifted))


def test_retrieval_needs_a_bank(tiny_bert: Path) -> None:
    model = tiny_model("clip", tiny_bert)
    model.set_space(small_space())
    with pytest.raises(ValueError, match="no retrieval bank"):
        model.related_articles(["pain"])
    with pytest.warns(UserWarning, match="no retrieval bank"):
        assert not model.predict_texts(["pain"]).any()


# -- when the bank is embedded -----------------------------------------------------------------
def count_embeddings(model: L.LightningModule, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The global step of each call of `model.embed_bank`, appended as they happen."""
    calls: list[int] = []
    original = model.embed_bank

    def counted() -> torch.Tensor:
        calls.append(model.global_step)
        return original()

    monkeypatch.setattr(model, "embed_bank", counted)
    return calls


def test_bank_is_embedded_only_when_read(
    data_files: dict[str, str],
    tiny_bert: Path,
    tmp_path: Path,
    make_trainer: Callable[..., L.Trainer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A periodic checkpoint at every step re-embeds nothing: only the validation (step 2) and
    the end of fit (step 3) do; the stale embeddings are left out of the checkpoints saved
    between them, and whatever loads such a checkpoint embeds the bank before retrieval."""
    L.seed_everything(0, verbose=False)
    model = tiny_model("clip", tiny_bert)
    calls = count_embeddings(model, monkeypatch)
    every_step = ModelCheckpoint(tmp_path, "{step}", save_top_k=-1, every_n_train_steps=1)
    best = ModelCheckpoint(tmp_path, "best", monitor="val/dice_auc", mode="max")
    run = make_trainer(
        max_steps=3, val_check_interval=2, enable_checkpointing=True, callbacks=[every_step, best]
    )
    run.fit(model, datamodule=tiny_datamodule(data_files, tiny_bert))
    assert calls == [2, 3]

    def saved_embeddings(name: str) -> torch.Tensor | None:
        checkpoint = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
        return checkpoint["text2brain"]["bank"]["embeddings"]

    assert all(saved_embeddings(f"step={s}.ckpt") is None for s in (1, 2, 3))
    assert saved_embeddings("best.ckpt") is not None  # saved after validation: fresh

    # Loading the last periodic checkpoint embeds the bank at the first retrieval, with the
    # step-3 weights: those the model embedded its bank with at the end of fit.
    loaded = load_predictor(tmp_path / "step=3.ckpt", device="cpu")
    assert loaded.model.bank.embeddings is None
    related = loaded.related_articles("working memory", k=5)
    # The same weights; the predictor's channels-last CPU convolutions may round the float16
    # embeddings one unit differently on some CPUs.
    assert torch.allclose(
        loaded.model.bank.embeddings.float(), model.bank.embeddings.float(), atol=2e-3
    )
    expected = model.eval().related_articles(["working memory"], k=5)[0]
    assert [a.article_id for a in related] == [a.article_id for a in expected]

    # An export of it carries the embeddings, computed once by `export_checkpoint`.
    export_checkpoint(tmp_path / "step=3.ckpt", tmp_path / "export")
    exported = load_predictor(tmp_path / "export", device="cpu").model
    assert exported.bank_fresh
    assert torch.allclose(
        exported.bank.embeddings.float(), model.bank.embeddings.float(), atol=2e-3
    )
    assert isinstance(exported.bank.maps, PeakMaps)

    # A resumed run does not embed before it needs to: only at its end (no validation here).
    resumed = tiny_model("clip", tiny_bert)
    calls = count_embeddings(resumed, monkeypatch)
    again = make_trainer(max_steps=5, limit_val_batches=0)
    again.fit(
        resumed,
        datamodule=tiny_datamodule(data_files, tiny_bert),
        ckpt_path=tmp_path / "step=3.ckpt",
    )
    assert calls == [5]


def test_a_fresh_checkpoint_is_not_embedded_again(
    contrastive_runs: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's checkpoints were saved after validation: they carry their embeddings."""
    predictor = load_predictor(contrastive_runs["mnm"]["path"], device="cpu")
    calls = count_embeddings(predictor.model, monkeypatch)
    predictor.related_articles("pain", k=3)
    predictor.predict_vectors(QUERIES)
    assert calls == []
