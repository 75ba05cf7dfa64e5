"""`BrainMapModule`: what every head of the zoo shares.

A head turns texts into masked brain maps (`predict_texts`) and defines its training loss; the
base wires the rest identically for all heads so runs compare side by side: optimizer groups
(text encoder vs head learning rates, no weight decay on norms, biases and scalars), a warm-up
+ cosine schedule stepped every optimizer step, the shared map metrics under the same names
(`val/dice_auc`, `test/dice@10`, `val/pearson`, `val/loss`, ...), prediction, and the brain
space (grid + mask) that travels inside every checkpoint with the format version.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from text2brain.metrics import map_metrics
from text2brain.models.formats import CHECKPOINT_FORMAT
from text2brain.models.head import BrainMapHead
from text2brain.models.settings import OptimSettings, as_plain


class BrainMapModule(BrainMapHead, L.LightningModule):
    """Base of every text -> brain map head, for training (the brain space: BrainMapHead).

    Subclasses implement `build(space)` (modules that depend on the grid), `predict_texts` /
    `forward(batch)` and, when they learn by gradient, `training_loss(batch)`. Parameters under
    an attribute named `text_encoder` form the encoder optimizer group.

    The base saves every constructor argument of the head (its own and its bases') as
    hyper-parameters, settings groups as plain dicts, so a head never calls
    `save_hyperparameters` itself and a checkpoint alone rebuilds it.
    """

    #: Whether the head is trained by gradient descent (baselines fit in closed form).
    trains_by_gradient = True
    #: Trainer arguments the head needs, set by `text2brain fit|validate|test|predict` over the
    #: run's config (text2brain.training.apply_run_needs; a value the run states otherwise is
    #: replaced with a warning naming it).
    trainer_arguments: ClassVar[dict[str, Any]] = {}
    #: Callbacks the head has no use for, dropped from the run's trainer by the same commands:
    #: class name -> the init arguments that pick them out ({}: every callback of that class).
    dropped_callbacks: ClassVar[dict[str, dict[str, Any]]] = {}
    ignored_hparams = ()  # it takes them all
    inference_only = False
    #: The optimisation (text2brain.models.settings.OptimSettings), set by the heads that train
    #: by gradient (their `optim` argument); `configure_optimizers` reads it.
    optim_settings: OptimSettings | None = None

    def __init__(self) -> None:
        super().__init__()
        # Every __init__ frame of the head, from its class down to this one; only what the
        # head's own signature takes (a base's argument the head fixes is not the head's),
        # and LightningCLI's own entries (`_class_path`, read back by `--ckpt_path`).
        self.save_hyperparameters()
        params = inspect.signature(type(self).__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            for name in set(self.hparams) - set(params):
                if not name.startswith("_"):
                    del self.hparams[name]
        if self.hparams:
            self.save_hyperparameters(as_plain(dict(self.hparams)))
        self.val_metrics = map_metrics("val/")
        self.test_metrics = map_metrics("test/")

    # -- brain space (set_space, build, on_load_checkpoint: BrainMapHead) ---------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        space = getattr(datamodule, "space", None)
        if space is None and datamodule is not None:
            datamodule.setup(stage)
            space = datamodule.space
        if space is None and self.space is None:
            raise RuntimeError("the model needs a brain space: train it with TextMapDataModule")
        if space is not None:
            self.set_space(space)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["text2brain"] = {
            "format_version": CHECKPOINT_FORMAT,
            "space": self.space.to_dict(),
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            # The logger's run (a wandb run id), so a resumed fit logs into the same run.
            "logger_version": self._logger_version(),
        }

    def _logger_version(self) -> str | None:
        trainer = self._trainer
        logger = trainer.logger if trainer is not None else None
        version = getattr(logger, "version", None)
        return str(version) if version is not None else None

    # -- what a head provides -----------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Predicted masked maps (batch, n_voxels) for a data-module batch."""
        raise NotImplementedError

    def training_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Loss terms; "loss" is optimised, every term is logged as train/<name>."""
        raise NotImplementedError

    def training_mean_map(self, chunk: int = 1024) -> Tensor:
        """Mean normalised article map of the training split (the corpus-mean floor).

        Read in chunks from the data module's memory-mapped corpus maps, so the whole training
        set never sits in memory at once.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "article_maps"):
            raise RuntimeError("the training-mean map needs a TextMapDataModule")
        _, maps = datamodule.article_maps("train")
        if len(maps) == 0:
            raise ValueError("the training split has no articles")
        total = torch.zeros(maps.shape[1], dtype=torch.float64)
        for start in range(0, len(maps), chunk):
            block = torch.from_numpy(np.ascontiguousarray(maps[start : start + chunk]))
            total += self.normalise_target(block.float()).sum(0, dtype=torch.float64)
        return (total / len(maps)).float()

    # -- steps --------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        terms = self.training_loss(batch)
        batch_size = len(batch["text"] if "text" in batch else batch["text_features"])
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=batch_size, prog_bar=name == "loss")
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def _evaluate(self, batch: dict[str, Any], stage: str, metrics: nn.Module) -> None:
        pred = self(batch).float()
        target = batch["map"].float()
        loss = self.map_loss(pred, target)
        self.log(f"{stage}/loss", loss, batch_size=len(target), sync_dist=True)
        metrics.update(pred, target)

    def map_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """MSE between predicted masked maps and the (normalised) targets: mask voxels only."""
        return torch.nn.functional.mse_loss(pred, self.normalise_target(target))

    def normalise_target(self, target: Tensor) -> Tensor:
        """The target as the head is trained to predict it (identity unless a head says)."""
        return target

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    def _log_metrics(self, metrics: nn.Module) -> None:
        values = metrics.compute()
        # Already reduced over ranks by torchmetrics; sync_dist only says so to Lightning.
        self.log_dict(dict(values), sync_dist=True)
        self.last_curves = {
            name: metric.curve().detach().cpu()
            for name, metric in metrics.items()
            if name.endswith("dice_auc")
        }
        metrics.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return {"article_id": batch["article_id"], "text": batch["text"], "map": self(batch)}

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        settings = self.optim_settings
        if settings is None:
            raise RuntimeError(f"{type(self).__name__} was built without optimisation settings")
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            part = (
                "encoder"
                if name.startswith("text_encoder.") or ".text_encoder." in name
                else "head"
            )
            decay = param.ndim >= 2 and not getattr(param, "no_weight_decay", False)
            groups.setdefault((part, decay), []).append(param)
        lr = {"encoder": settings.encoder_lr, "head": settings.lr}
        param_groups = [
            {
                "params": params,
                "lr": lr[part],
                "weight_decay": settings.weight_decay if decay else 0.0,
                "name": f"{part}{'' if decay else '/no_decay'}",
            }
            for (part, decay), params in sorted(groups.items())
        ]
        optimizer = torch.optim.AdamW(param_groups)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = settings.warmup_steps
        warmup = warmup if warmup >= 1 else warmup * total
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, int(warmup), total, settings.schedule)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate at an optimizer step."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))
