"""Text2Brain beyond the registry-wide tests of test_base.py: its tiny config, the residual
mean map, the ridge readout (fitted, saved, kept on resume) and format-1 checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from model_configs import tiny_model
from synthetic import QUERIES

from text2brain.data import TextMapDataModule
from text2brain.models.targets import transform_targets

#: Text2Brain's tiny config (model_configs.tiny_configs gathers it). Decoder 1 -> 3 -> 7 -> 15
#: voxels a side (+2 from the last conv), cropped to the 12x14x12 grid.
TINY_CONFIGS = {
    "text2brain": lambda encoder: {
        "text": {"encoder": encoder, "pretrained": False, "freeze_layers": 2},
        "decoder": {
            "seed_shape": [1, 1, 1],
            "seed_channels": 8,
            "channels": [8, 4, 4],
            "output_crop": [12, 14, 12],
            "output_offset": [0, 0, 0],
        },
    }
}


# -- Text2Brain specifics ----------------------------------------------------------------------
@pytest.mark.parametrize("normalisation", ["none", "max"])
def test_text2brain_residual_starts_at_the_training_mean_map(
    tiny_bert: Path,
    datamodule: TextMapDataModule,
    normalisation: str,
    make_trainer: Callable[..., L.Trainer],
) -> None:
    model = tiny_model("text2brain", tiny_bert, target_normalisation=normalisation)
    trainer = make_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    _, maps = datamodule.article_maps("train")
    targets = torch.from_numpy(np.array(maps))
    if normalisation == "max":
        targets = targets / targets.amax(dim=1, keepdim=True)
    # The mean of the targets as the head is trained on them (default: their power 0.1).
    assert model.target_transform == "power:0.1"
    targets = transform_targets(targets, model.target_transform)
    assert torch.allclose(model.mean_map, targets.mean(0), atol=1e-6)

    fresh = tiny_model("text2brain", tiny_bert, target_normalisation=normalisation)
    fresh.set_space(datamodule.space)
    fresh.mean_map.copy_(model.mean_map)
    fresh.eval()
    # Zero-initialised output layer: every text gets the mean map until training moves it.
    assert torch.equal(fresh.predict_texts(QUERIES), model.mean_map.expand(len(QUERIES), -1))
    assert not tiny_model("text2brain", tiny_bert, residual=False).hparams.residual


@pytest.mark.parametrize("rank", [None, 2])
def test_text2brain_ridge_readout_is_fitted_and_saved(
    tiny_bert: Path,
    datamodule: TextMapDataModule,
    tmp_path: Path,
    rank: int | None,
    make_trainer: Callable[..., L.Trainer],
) -> None:
    model = tiny_model("text2brain", tiny_bert, readout="ridge", readout_rank=rank)
    trainer = make_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    dim = model.net.text_encoder.dim
    assert model.readout_in.shape == (dim, rank or dim)
    assert model.readout_out.abs().sum() > 0
    path = tmp_path / "readout.ckpt"
    trainer.save_checkpoint(path)
    loaded = type(model).load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert torch.equal(loaded.readout_out, model.readout_out)
    model.eval()
    loaded.eval()
    maps = model.predict_texts(QUERIES)
    assert torch.equal(loaded.predict_texts(QUERIES), maps)
    assert maps.std(0).mean() > 0  # the readout makes maps depend on the text
    with pytest.raises(ValueError, match="readout must be one of"):
        tiny_model("text2brain", tiny_bert, readout="lasso")
    with pytest.raises(ValueError, match="readout_rank must be a positive int"):
        tiny_model("text2brain", tiny_bert, readout="ridge", readout_rank=0)


def test_resumed_fit_keeps_the_fitted_readout(
    tiny_bert: Path,
    datamodule: TextMapDataModule,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_trainer: Callable[..., L.Trainer],
) -> None:
    model = tiny_model("text2brain", tiny_bert, readout="ridge")
    trainer = make_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "step1.ckpt")
    fitted = model.readout_out.clone(), model.mean_map.clone()

    def refit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a resumed fit refitted the readout")

    cls = type(model)
    monkeypatch.setattr(cls, "fit_readout", refit)
    monkeypatch.setattr(cls, "training_mean_map", refit)
    resumed = tiny_model("text2brain", tiny_bert, readout="ridge")
    trainer = make_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(resumed, datamodule=datamodule, ckpt_path=tmp_path / "step1.ckpt")
    assert trainer.global_step == 2
    assert torch.equal(resumed.readout_out, fitted[0])
    assert torch.equal(resumed.mean_map, fitted[1])


def test_format_1_checkpoint_is_upgraded_on_load(
    tiny_bert: Path,
    datamodule: TextMapDataModule,
    tmp_path: Path,
    make_trainer: Callable[..., L.Trainer],
) -> None:
    """Format 1 stored the full readout as `readout_weight`; it still loads and predicts."""
    model = tiny_model("text2brain", tiny_bert, readout="ridge")
    trainer = make_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    path = tmp_path / "format2.ckpt"
    trainer.save_checkpoint(path)
    old = torch.load(path, map_location="cpu", weights_only=True)
    state = old["state_dict"]
    state["readout_weight"] = state.pop("readout_in") @ state.pop("readout_out")
    old["text2brain"]["format_version"] = 1
    torch.save(old, tmp_path / "format1.ckpt")
    loaded = type(model).load_from_checkpoint(
        tmp_path / "format1.ckpt", map_location="cpu", weights_only=True
    )
    model.eval()
    loaded.eval()
    assert torch.allclose(loaded.predict_texts(QUERIES), model.predict_texts(QUERIES), atol=1e-6)
    from text2brain.inference import load_predictor

    predictor = load_predictor(tmp_path / "format1.ckpt", device="cpu")
    assert np.allclose(predictor.predict_vectors(QUERIES), model.predict_texts(QUERIES), atol=1e-6)
