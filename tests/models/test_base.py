"""Every head of the zoo (text2brain.models.MODELS) on the synthetic corpus with a tiny encoder.

Each test runs once per registered model with its tiny config from tests/model_configs.py:
shapes, checkpoint round trip, shared metric names, optimizer groups, the per-step LR schedule,
bf16 training and the brain-space check.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from model_configs import merged, missing_configs, tiny_init_args
from synthetic import (
    ellipsoid_space,
    quiet_trainer,
    small_space,
    write_corpus_files,
    write_mask,
)

from text2brain.brain import BrainSpace
from text2brain.data import TextMapDataModule
from text2brain.models import (
    INFERENCE_MODELS,
    MODELS,
    inference_class,
    model_class,
    registered_name,
)
from text2brain.models.base import CHECKPOINT_FORMAT, BrainMapModule, lr_factor
from text2brain.models.head import TRAINING_HPARAMS

SHARED_METRICS = {
    "val/dice_auc",
    "val/dice@5",
    "val/dice@10",
    "val/dice@20",
    "val/dice@30",
    "val/pearson",
    "val/loss",
}
TEXTS = ["working memory in the prefrontal cortex", "pain and the insula", "visual cortex"]


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def space() -> BrainSpace:
    return small_space()


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_corpus_files(tmp_path_factory.mktemp("model-data"))


def make_datamodule(files: dict[str, str], tokenizer: Path, **kwargs: Any) -> TextMapDataModule:
    options: dict[str, Any] = {
        "n_test": 8,
        "n_val": 8,
        "keyword_max_df": 0.05,
        "tokenizer": str(tokenizer),
        "batch_size": 8,
        "num_workers": 0,
        **files,
    }
    options.update(kwargs)
    return TextMapDataModule(**options)


@pytest.fixture
def datamodule(data_files: dict[str, str], tiny_bert: Path) -> TextMapDataModule:
    return make_datamodule(data_files, tiny_bert)


@pytest.fixture(params=sorted(MODELS))
def model_name(request: pytest.FixtureRequest) -> str:
    return request.param


def make_model(name: str, tiny_bert: Path, **overrides: Any) -> BrainMapModule:
    cls = model_class(name)
    return cls(**merged(tiny_init_args(name, tiny_bert), overrides))


def needs_gradient(model_name: str) -> None:
    cls = model_class(model_name)
    if not cls.trains_by_gradient:
        pytest.skip(f"{cls.__name__} is fitted in closed form (no optimizer)")


def make_trainer(root: Path, **kwargs: Any) -> L.Trainer:
    return quiet_trainer(root, **{"num_sanity_val_steps": 0, **kwargs})


class RecordSteps(L.Callback):
    """Learning rates before every optimizer step and the training loss of every batch."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.losses: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append([group["lr"] for group in optimizer.param_groups])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


# -- registry ----------------------------------------------------------------------------------
def test_every_registered_model_has_a_tiny_config() -> None:
    missing = missing_configs()
    assert not missing, (
        f"registered models without a tiny test config: {missing}; add them to TINY_CONFIGS "
        "in tests/model_configs.py"
    )
    for name in MODELS:
        assert issubclass(model_class(name), BrainMapModule)


def test_registered_names_resolve_without_import() -> None:
    for name, path in MODELS.items():
        cls = model_class(name)
        for recorded in (name, path, f"{cls.__module__}.{cls.__qualname__}"):
            assert registered_name(recorded) == name
    assert registered_name("text2brain.models.other.Text2Brain") is None
    assert registered_name("t2b_evil.models.text2brain.Text2Brain") is None


def test_inference_classes_take_the_heads_arguments(tiny_bert: Path) -> None:
    """An inference class is built from its LightningModule's saved arguments, less the
    optimisation ones, and refuses an argument the head does not take by name."""
    for name in INFERENCE_MODELS:
        head = model_class(name)(**tiny_init_args(name, tiny_bert))
        saved = {k: v for k, v in head.hparams.items() if k not in TRAINING_HPARAMS}
        assert set(head.hparams) - set(saved) == set(TRAINING_HPARAMS)
        inference = inference_class(name)(**saved)
        assert not isinstance(inference, BrainMapModule)
        assert inference.text_settings == head.text_settings
        with pytest.raises(TypeError, match="unexpected_option"):
            inference_class(name)(**saved, unexpected_option=1)


def test_tiny_config_of_an_unknown_model_is_a_clear_error(tiny_bert: Path) -> None:
    with pytest.raises(KeyError, match="tests/model_configs.py"):
        tiny_init_args("not-a-model", tiny_bert)


# -- shapes ------------------------------------------------------------------------------------
def test_forward_and_predict_texts(
    model_name: str, tiny_bert: Path, datamodule: TextMapDataModule, space: BrainSpace
) -> None:
    model = make_model(model_name, tiny_bert)
    model.set_space(space)
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    assert "tokens" in batch
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            out = model(batch)
        assert out.shape == (len(batch["text"]), space.n_voxels)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
    maps = model.predict_texts(TEXTS)
    assert maps.shape == (len(TEXTS), space.n_voxels)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()


# -- checkpoints -------------------------------------------------------------------------------
def test_checkpoint_round_trip(
    model_name: str,
    tiny_bert: Path,
    datamodule: TextMapDataModule,
    space: BrainSpace,
    tmp_path: Path,
) -> None:
    model = make_model(model_name, tiny_bert)
    trainer = make_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    # A closed-form fit counts as one step (the batch that ends it).
    assert trainer.global_step == (3 if model.trains_by_gradient else 1)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    info = checkpoint["text2brain"]
    assert info["format_version"] == CHECKPOINT_FORMAT
    module, _, qualname = info["class_path"].rpartition(".")
    assert getattr(importlib.import_module(module), qualname) is model_class(model_name)
    assert BrainSpace.from_dict(info["space"]).to_dict() == space.to_dict()

    loaded = type(model).load_from_checkpoint(path, map_location="cpu", weights_only=True)
    restored = loaded.space
    assert restored is not None and restored.shape == space.shape
    assert np.array_equal(restored.mask, space.mask)
    assert np.array_equal(restored.affine, space.affine)
    assert torch.equal(loaded.mask_index, model.mask_index)
    assert dict(loaded.hparams) == dict(model.hparams)
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)

    model.eval()
    loaded.eval()
    assert torch.equal(model.predict_texts(TEXTS), loaded.predict_texts(TEXTS))

    # Every head exports (weights + JSON) and loads back from the export with the same maps.
    from text2brain.export import export_checkpoint
    from text2brain.inference import load_predictor

    export_checkpoint(path, tmp_path / "export", dtype="float32")
    exported = load_predictor(tmp_path / "export", device="cpu").predict_vectors(TEXTS)
    assert np.allclose(exported, model.predict_texts(TEXTS).numpy(), atol=1e-6)


def test_checkpoint_without_text2brain_section_is_refused(
    model_name: str, tiny_bert: Path, space: BrainSpace
) -> None:
    model = make_model(model_name, tiny_bert)
    with pytest.raises(ValueError, match="no 'text2brain' section"):
        model.on_load_checkpoint({"state_dict": {}})
    info = {"format_version": CHECKPOINT_FORMAT + 1, "space": space.to_dict()}
    with pytest.raises(ValueError, match="newer than this text2brain reads"):
        model.on_load_checkpoint({"text2brain": info})


def test_model_refuses_data_with_another_mask(
    model_name: str,
    tiny_bert: Path,
    data_files: dict[str, str],
    space: BrainSpace,
    tmp_path: Path,
) -> None:
    model = make_model(model_name, tiny_bert)
    model.set_space(space)
    model.set_space(BrainSpace.from_dict(space.to_dict()))  # the same space again is fine
    mask = space.mask.copy()
    mask[tuple(np.argwhere(mask)[0])] = False  # one brain voxel less
    other = BrainSpace(mask, space.affine)
    other_files = {
        **data_files,
        "mask": str(write_mask(other, tmp_path / "other-mask.nii.gz")),
        "split_file": str(tmp_path / "split.json"),
    }
    datamodule = make_datamodule(other_files, tiny_bert)
    with pytest.raises(ValueError, match="grid"):
        make_trainer(tmp_path).validate(model, datamodule=datamodule)
    with pytest.raises(ValueError, match="grid"):
        model.set_space(ellipsoid_space(shape=(10, 12, 10)))


# -- metrics -----------------------------------------------------------------------------------
def test_validate_logs_the_shared_metric_names(
    model_name: str, tiny_bert: Path, datamodule: TextMapDataModule, tmp_path: Path
) -> None:
    model = make_model(model_name, tiny_bert)
    (results,) = make_trainer(tmp_path).validate(model, datamodule=datamodule, verbose=False)
    own = {f"val/{name}" for name in getattr(model, "extra_metrics", ())}  # a head's extras
    assert set(results) == SHARED_METRICS | own
    assert all(math.isfinite(v) for v in results.values())
    assert 0.0 <= results["val/dice_auc"] <= 0.25
    assert 0.0 <= results["val/dice@10"] <= 1.0


# -- optimisation ------------------------------------------------------------------------------
def test_optimizer_groups(
    model_name: str, tiny_bert: Path, datamodule: TextMapDataModule, tmp_path: Path
) -> None:
    needs_gradient(model_name)
    model = make_model(
        model_name, tiny_bert, optim={"encoder_lr": 1e-4, "lr": 2e-3, "weight_decay": 0.05}
    )
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    (optimizer,) = trainer.optimizers
    names = {id(p): n for n, p in model.named_parameters()}
    seen: list[str] = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = names[id(param)]
            seen.append(name)
            in_encoder = "text_encoder" in name.split(".")
            assert group["initial_lr"] == (1e-4 if in_encoder else 2e-3), name
            assert group["name"].startswith("encoder" if in_encoder else "head"), name
            if param.ndim < 2:
                assert group["weight_decay"] == 0.0, f"{name} (ndim {param.ndim}) is decayed"
            elif not getattr(param, "no_weight_decay", False):
                assert group["weight_decay"] == 0.05, name
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable)  # every trainable parameter exactly once
    assert any("text_encoder" in n.split(".") for n in seen)  # the encoder group exists
    assert any("text_encoder" not in n.split(".") for n in seen)


def test_lr_schedule_is_stepped_every_optimizer_step(
    model_name: str, tiny_bert: Path, datamodule: TextMapDataModule, tmp_path: Path
) -> None:
    # Gradient accumulation makes optimizer steps differ from batches; 5 steps of 2 batches
    # fit in the first epoch, so a scheduler stepped per epoch would keep the first LR.
    needs_gradient(model_name)
    model = make_model(
        model_name, tiny_bert, optim={"warmup_steps": 3, "schedule": "cosine", "lr": 1e-3}
    )
    record = RecordSteps()
    trainer = make_trainer(
        tmp_path, max_steps=5, accumulate_grad_batches=2, limit_val_batches=0, callbacks=[record]
    )
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 5
    (config,) = trainer.lr_scheduler_configs
    assert config.interval == "step" and config.frequency == 1
    assert config.scheduler.last_epoch == 5
    total = int(trainer.estimated_stepping_batches)
    assert total == 5
    head = [group["name"] for group in trainer.optimizers[0].param_groups].index("head")
    lrs = [step[head] for step in record.lrs]
    expected = [1e-3 * lr_factor(step, 3, total, "cosine") for step in range(5)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] < lrs[1] < lrs[2]  # warm-up: up at every step
    assert lrs[2] == pytest.approx(1e-3) and lrs[4] < lrs[3]


def test_bf16_mixed_fit_is_finite(
    model_name: str, tiny_bert: Path, datamodule: TextMapDataModule, tmp_path: Path
) -> None:
    needs_gradient(model_name)
    model = make_model(model_name, tiny_bert)
    record = RecordSteps()
    trainer = make_trainer(
        tmp_path, max_steps=3, precision="bf16-mixed", limit_val_batches=0, callbacks=[record]
    )
    trainer.fit(model, datamodule=datamodule)
    assert len(record.losses) == 3 and all(math.isfinite(x) for x in record.losses)
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32, name
        assert torch.isfinite(param).all(), name
    model.eval()
    assert torch.isfinite(model.predict_texts(TEXTS)).all()


# -- schedule function -------------------------------------------------------------------------
def test_lr_factor() -> None:
    # Linear warm-up: (step + 1) / warmup, reaching 1 at the last warm-up step.
    assert [lr_factor(s, 4, 20, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    for schedule in ("cosine", "linear", "constant"):
        assert lr_factor(0, 4, 20, schedule) == 0.25
        assert lr_factor(4, 4, 20, schedule) == 1.0  # the first step after warm-up
    # Cosine from 1 to 0 over the remaining steps, 0 beyond the end.
    assert lr_factor(12, 4, 20, "cosine") == pytest.approx(0.5)
    assert lr_factor(8, 4, 20, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(20, 4, 20, "cosine") == pytest.approx(0.0)
    assert lr_factor(25, 4, 20, "cosine") == pytest.approx(0.0)
    cosine = [lr_factor(s, 4, 20, "cosine") for s in range(4, 21)]
    assert all(a > b for a, b in zip(cosine, cosine[1:], strict=False))
    # Linear to 0.
    assert lr_factor(12, 4, 20, "linear") == pytest.approx(0.5)
    assert lr_factor(20, 4, 20, "linear") == pytest.approx(0.0)
    assert lr_factor(25, 4, 20, "linear") == pytest.approx(0.0)
    # Constant after warm-up.
    assert all(lr_factor(s, 4, 20, "constant") == 1.0 for s in range(4, 40))
    # No warm-up: full rate at the first step.
    assert lr_factor(0, 0, 10, "cosine") == 1.0
    assert lr_factor(0, 0, 10, "linear") == 1.0


# -- Text2Brain specifics ----------------------------------------------------------------------
@pytest.mark.parametrize("normalisation", ["none", "max"])
def test_text2brain_residual_starts_at_the_training_mean_map(
    tiny_bert: Path, datamodule: TextMapDataModule, tmp_path: Path, normalisation: str
) -> None:
    model = make_model("text2brain", tiny_bert, target_normalisation=normalisation)
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    _, maps = datamodule.article_maps("train")
    targets = torch.from_numpy(np.array(maps))
    if normalisation == "max":
        targets = targets / targets.amax(dim=1, keepdim=True)
    assert torch.allclose(model.mean_map, targets.mean(0), atol=1e-6)

    fresh = make_model("text2brain", tiny_bert, target_normalisation=normalisation)
    fresh.set_space(datamodule.space)
    fresh.mean_map.copy_(model.mean_map)
    fresh.eval()
    # Zero-initialised output layer: every text gets the mean map until training moves it.
    assert torch.equal(fresh.predict_texts(TEXTS), model.mean_map.expand(len(TEXTS), -1))
    assert not make_model("text2brain", tiny_bert, residual=False).hparams.residual


@pytest.mark.parametrize("rank", [None, 2])
def test_text2brain_ridge_readout_is_fitted_and_saved(
    tiny_bert: Path, datamodule: TextMapDataModule, tmp_path: Path, rank: int | None
) -> None:
    model = make_model("text2brain", tiny_bert, readout="ridge", readout_rank=rank)
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
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
    maps = model.predict_texts(TEXTS)
    assert torch.equal(loaded.predict_texts(TEXTS), maps)
    assert maps.std(0).mean() > 0  # the readout makes maps depend on the text
    with pytest.raises(ValueError, match="readout must be one of"):
        make_model("text2brain", tiny_bert, readout="lasso")
    with pytest.raises(ValueError, match="readout_rank must be a positive int"):
        make_model("text2brain", tiny_bert, readout="ridge", readout_rank=0)


def test_resumed_fit_keeps_the_fitted_readout(
    tiny_bert: Path, datamodule: TextMapDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model("text2brain", tiny_bert, readout="ridge")
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "step1.ckpt")
    fitted = model.readout_out.clone(), model.mean_map.clone()

    def refit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a resumed fit refitted the readout")

    cls = type(model)
    monkeypatch.setattr(cls, "fit_readout", refit)
    monkeypatch.setattr(cls, "training_mean_map", refit)
    resumed = make_model("text2brain", tiny_bert, readout="ridge")
    trainer = make_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(resumed, datamodule=datamodule, ckpt_path=tmp_path / "step1.ckpt")
    assert trainer.global_step == 2
    assert torch.equal(resumed.readout_out, fitted[0])
    assert torch.equal(resumed.mean_map, fitted[1])


def test_format_1_checkpoint_is_upgraded_on_load(
    tiny_bert: Path, datamodule: TextMapDataModule, tmp_path: Path
) -> None:
    """Format 1 stored the full readout as `readout_weight`; it still loads and predicts."""
    model = make_model("text2brain", tiny_bert, readout="ridge")
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
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
    assert torch.allclose(loaded.predict_texts(TEXTS), model.predict_texts(TEXTS), atol=1e-6)
    from text2brain.inference import load_predictor

    predictor = load_predictor(tmp_path / "format1.ckpt", device="cpu")
    assert np.allclose(predictor.predict_vectors(TEXTS), model.predict_texts(TEXTS), atol=1e-6)
