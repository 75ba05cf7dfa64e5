"""The retrieval bank of the contrastive heads (`RetrievalBankMixin`): maps as weighted
averages of the bank's maps, the bank's embeddings at every save and the bank in the
checkpoint, on the heads trained once for the session (conftest's `contrastive_runs`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from model_configs import tiny_model
from synthetic import QUERIES, small_space, tiny_datamodule

from text2brain.inference import load_predictor
from text2brain.models.contrastive.retrieval import scale_maps

HEADS = ("clip", "mnm")

pytestmark = pytest.mark.usefixtures("one_thread")


# -- maps from the bank ------------------------------------------------------------------------
@pytest.mark.parametrize("name", HEADS)
def test_maps_are_weighted_averages_of_the_bank(
    contrastive_runs: dict[str, dict[str, Any]], name: str
) -> None:
    model, data = contrastive_runs[name]["model"], contrastive_runs[name]["data"]
    bank = model.bank
    ids, maps = data.article_maps("train")
    assert bank.ids == list(ids) and bank.maps.dtype == torch.float16
    expected_maps = scale_maps(torch.from_numpy(np.array(maps)))
    torch.testing.assert_close(bank.maps.float(), expected_maps, atol=1e-3, rtol=0)
    titles = {a.id: a.title for a in data.corpus.articles}
    assert bank.titles == [titles[i] for i in ids]
    # The embeddings are those of the final weights (refreshed after the last step).
    with torch.no_grad():
        torch.testing.assert_close(bank.embeddings, model.net.embed_maps(bank.maps.float()))

    with torch.no_grad():
        text = model.embed_text({"text": QUERIES})
        distance = model.net.geometry.cross_distance(text, bank.embeddings)
        k = model.hparams.retrieval_k
        nearest, indices = distance.topk(k, largest=False)
        weights = torch.softmax(-nearest * model.net.geometry.logit_scale(), dim=1)
        expected = torch.einsum("nk,nkv->nv", weights, bank.maps[indices].float())
    predicted = model.predict_texts(QUERIES)
    torch.testing.assert_close(predicted, expected, atol=1e-5, rtol=1e-4)
    assert predicted.max() <= 1.0 + 1e-6


def test_checkpoint_bank_matches_its_weights_mid_training(
    data_files: dict[str, str],
    tiny_bert: Path,
    tmp_path: Path,
    make_trainer: Callable[..., L.Trainer],
) -> None:
    """A save in the step right after a validation still refreshes the bank's embeddings."""
    L.seed_everything(0, verbose=False)
    model = tiny_model("clip", tiny_bert)
    every_3 = ModelCheckpoint(tmp_path, "{step}", save_top_k=-1, every_n_train_steps=3)
    run = make_trainer(
        max_steps=3, val_check_interval=2, enable_checkpointing=True, callbacks=[every_3]
    )
    run.fit(model, datamodule=tiny_datamodule(data_files, tiny_bert))
    loaded = load_predictor(tmp_path / "step=3.ckpt", device="cpu").model
    with torch.no_grad():
        expected = loaded.net.embed_maps(loaded.bank.maps.float())
    torch.testing.assert_close(loaded.bank.embeddings, expected)


def test_bank_travels_in_the_checkpoint(contrastive_runs: dict[str, dict[str, Any]]) -> None:
    checkpoint = torch.load(contrastive_runs["mnm"]["path"], map_location="cpu", weights_only=True)
    bank = checkpoint["text2brain"]["bank"]
    model = contrastive_runs["mnm"]["model"]
    assert bank["ids"] == model.bank.ids and bank["maps"].dtype == torch.float16
    assert not any(key.startswith("bank") for key in checkpoint["state_dict"])


def test_retrieval_needs_a_bank(tiny_bert: Path) -> None:
    model = tiny_model("clip", tiny_bert)
    model.set_space(small_space())
    with pytest.raises(ValueError, match="no retrieval bank"):
        model.related_articles(["pain"])
    with pytest.warns(UserWarning, match="no retrieval bank"):
        assert not model.predict_texts(["pain"]).any()
