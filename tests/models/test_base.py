"""Every head of the zoo (text2brain.models.MODELS) on the synthetic corpus with a tiny encoder.

Each test runs once per registered model with the tiny config its own test module declares
(tests/model_configs.py gathers them): shapes, checkpoint round trip, shared metric names,
optimizer groups, the per-step LR schedule, bf16 training and the brain-space check; and the
registry itself (`text2brain.models.base` and `text2brain.models`).
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from model_configs import missing_configs, tiny_config_modules, tiny_init_args, tiny_model
from synthetic import QUERIES, ellipsoid_space, tiny_datamodule, write_mask

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

#: conftest's `make_trainer`: make_trainer(**options) -> a quiet Trainer in tmp_path.
MakeTrainer = Callable[..., L.Trainer]

SHARED_METRICS = {
    "val/dice_auc",
    "val/dice@5",
    "val/dice@10",
    "val/dice@20",
    "val/dice@30",
    "val/pearson",
    "val/loss",
}


@pytest.fixture(params=sorted(MODELS))
def model_name(request: pytest.FixtureRequest) -> str:
    return request.param


def needs_gradient(model_name: str) -> None:
    cls = model_class(model_name)
    if not cls.trains_by_gradient:
        pytest.skip(f"{cls.__name__} is fitted in closed form (no optimizer)")


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
        f"registered models without a tiny test config: {missing}; declare TINY_CONFIGS in "
        "their test modules under tests/models/"
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
    """An inference class is built from its LightningModule's saved arguments, less those
    that only serve training (its `ignored_hparams`: the training settings, but those it
    predicts with: the retrieval head averages maps through its target transform), and
    refuses an argument the head does not take by name."""
    for name in INFERENCE_MODELS:
        head = model_class(name)(**tiny_init_args(name, tiny_bert))
        cls = inference_class(name)
        ignored, takes = cls.ignored_hparams, inspect.signature(cls.__init__).parameters
        assert all(h in ignored or h in takes for h in TRAINING_HPARAMS), name
        saved = {k: v for k, v in head.hparams.items() if k not in ignored}
        inference = cls(**saved)
        assert not isinstance(inference, BrainMapModule)
        assert getattr(inference, "text_settings", None) == getattr(head, "text_settings", None)
        with pytest.raises(TypeError, match="unexpected_option"):
            inference_class(name)(**saved, unexpected_option=1)


def test_tiny_config_of_an_unknown_model_is_a_clear_error(tiny_bert: Path) -> None:
    with pytest.raises(KeyError, match="'not-a-model' .*not registered.* add TINY_CONFIGS"):
        tiny_init_args("not-a-model", tiny_bert)


def test_a_registered_head_without_a_tiny_config_is_named(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head added to MODELS without TINY_CONFIGS in a test module fails the registry test
    above and every test over the registry, with a message that says where the config goes."""
    monkeypatch.setitem(MODELS, "new_head", "text2brain.models.new_head.NewHead")
    assert missing_configs() == ["new_head"]
    with pytest.raises(KeyError, match=r"'new_head' \(registered as .*NewHead.*tests/models/"):
        tiny_init_args("new_head", tiny_bert)


def test_tiny_configs_are_found_in_the_heads_test_modules() -> None:
    """Each head's tiny config is declared by the test module of its package or module, in the
    folder that mirrors it (text2brain/models/contrastive/clip.py: models/contrastive/test_clip)."""
    declared = tiny_config_modules()
    assert set(declared) == set(MODELS)
    for name, test_module in declared.items():
        package_path = model_class(name).__module__.split(".")[2:]  # below text2brain.models
        *folders, test = test_module.split(".")[1:]  # below tests/models
        assert test.startswith("test_") and test.removeprefix("test_") in package_path, name
        assert package_path[: len(folders)] == folders, name


# -- shapes ------------------------------------------------------------------------------------
def test_forward_and_predict_texts(
    model_name: str, tiny_bert: Path, datamodule: TextMapDataModule, space: BrainSpace
) -> None:
    model = tiny_model(model_name, tiny_bert)
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
    maps = model.predict_texts(QUERIES)
    assert maps.shape == (len(QUERIES), space.n_voxels)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()


# -- checkpoints -------------------------------------------------------------------------------
def test_checkpoint_round_trip(
    model_name: str,
    tiny_bert: Path,
    datamodule: TextMapDataModule,
    space: BrainSpace,
    tmp_path: Path,
    make_trainer: MakeTrainer,
) -> None:
    model = tiny_model(model_name, tiny_bert)
    trainer = make_trainer(max_steps=3, limit_val_batches=0)
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
    assert torch.equal(model.predict_texts(QUERIES), loaded.predict_texts(QUERIES))

    # Every head exports (weights + JSON) and loads back from the export with the same maps.
    from text2brain.export import export_checkpoint
    from text2brain.inference import load_predictor

    export_checkpoint(path, tmp_path / "export", dtype="float32")
    exported = load_predictor(tmp_path / "export", device="cpu").predict_vectors(QUERIES)
    assert np.allclose(exported, model.predict_texts(QUERIES).numpy(), atol=1e-6)


def test_checkpoint_without_text2brain_section_is_refused(
    model_name: str, tiny_bert: Path, space: BrainSpace
) -> None:
    model = tiny_model(model_name, tiny_bert)
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
    make_trainer: MakeTrainer,
) -> None:
    model = tiny_model(model_name, tiny_bert)
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
    datamodule = tiny_datamodule(other_files, tiny_bert)
    with pytest.raises(ValueError, match="grid"):
        make_trainer().validate(model, datamodule=datamodule)
    with pytest.raises(ValueError, match="grid"):
        model.set_space(ellipsoid_space(shape=(10, 12, 10)))


# -- metrics -----------------------------------------------------------------------------------
def test_validate_logs_the_shared_metric_names(
    model_name: str, tiny_bert: Path, datamodule: TextMapDataModule, make_trainer: MakeTrainer
) -> None:
    model = tiny_model(model_name, tiny_bert)
    (results,) = make_trainer().validate(model, datamodule=datamodule, verbose=False)
    own = {f"val/{name}" for name in getattr(model, "extra_metrics", ())}  # a head's extras
    assert set(results) == SHARED_METRICS | own
    assert all(math.isfinite(v) for v in results.values())
    assert 0.0 <= results["val/dice_auc"] <= 0.25
    assert 0.0 <= results["val/dice@10"] <= 1.0


# -- optimisation ------------------------------------------------------------------------------
def test_optimizer_groups(
    model_name: str, tiny_bert: Path, datamodule: TextMapDataModule, make_trainer: MakeTrainer
) -> None:
    needs_gradient(model_name)
    model = tiny_model(
        model_name, tiny_bert, optim={"encoder_lr": 1e-4, "lr": 2e-3, "weight_decay": 0.05}
    )
    trainer = make_trainer(max_steps=1, limit_val_batches=0)
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
    model_name: str, tiny_bert: Path, datamodule: TextMapDataModule, make_trainer: MakeTrainer
) -> None:
    # Gradient accumulation makes optimizer steps differ from batches; 5 steps of 2 batches
    # fit in the first epoch, so a scheduler stepped per epoch would keep the first LR.
    needs_gradient(model_name)
    model = tiny_model(
        model_name, tiny_bert, optim={"warmup_steps": 3, "schedule": "cosine", "lr": 1e-3}
    )
    record = RecordSteps()
    trainer = make_trainer(
        max_steps=5, accumulate_grad_batches=2, limit_val_batches=0, callbacks=[record]
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
    model_name: str, tiny_bert: Path, datamodule: TextMapDataModule, make_trainer: MakeTrainer
) -> None:
    needs_gradient(model_name)
    model = tiny_model(model_name, tiny_bert)
    record = RecordSteps()
    trainer = make_trainer(
        max_steps=3, precision="bf16-mixed", limit_val_batches=0, callbacks=[record]
    )
    trainer.fit(model, datamodule=datamodule)
    assert len(record.losses) == 3 and all(math.isfinite(x) for x in record.losses)
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32, name
        assert torch.isfinite(param).all(), name
    model.eval()
    assert torch.isfinite(model.predict_texts(QUERIES)).all()


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
