"""Callbacks that every `text2brain fit` gets: a diverging run stops, and a log file shows progress.

Why: a run whose loss explodes (too large a learning rate) used to finish and save its
checkpoint as if nothing happened; and with stdout redirected to a file, as every cluster job
has it, the training printed nothing between the readout fit and the end (the progress bar
is for terminals). `AutoPrecisionTrainer` (text2brain.training) adds both.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

#: A training loss above this many times its first value means the run diverged.
DIVERGENCE_FACTOR = 100.0
#: Seconds between two progress lines in a log that is not a terminal.
PROGRESS_INTERVAL = 60.0


class TrainingDiverged(RuntimeError):
    """The training loss became non-finite or exploded; the run stopped without saving."""


class DivergenceGuard(L.Callback):
    """Stops training when its loss is not finite or exceeds `factor` times its first value.

    It runs before the checkpoint callbacks of the same step (Lightning calls those last), so
    the step that diverged is never saved.
    """

    def __init__(self, factor: float = DIVERGENCE_FACTOR) -> None:
        self.factor = factor
        self.first: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.first = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach().float())
        step = trainer.global_step
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"training diverged at step {step}: the loss is {value}; stopped without "
                "saving a checkpoint (lower optim.lr, or check the data)"
            )
        if self.first is None:
            self.first = value
        elif self.first > 0 and value > self.factor * self.first:
            raise TrainingDiverged(
                f"training diverged at step {step}: the loss {value:.4g} is over "
                f"{self.factor:g}x its first value {self.first:.4g}; stopped without saving a "
                "checkpoint (lower optim.lr)"
            )


class ProgressLog(L.Callback):
    """One progress line every `interval` seconds, and the validation scores after each validation.

    For logs that are not a terminal (`AutoPrecisionTrainer` adds it when stdout is not a tty):
    epoch, step / total, loss, time elapsed and an estimate of the time left, on stdout.
    """

    def __init__(self, interval: float = PROGRESS_INTERVAL) -> None:
        self.interval = interval
        self.start = self.last = 0.0
        self.first_step = 0

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.monotonic()
        self.last = -math.inf
        self.first_step = trainer.global_step

    @rank_zero_only
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any
    ) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        elapsed = now - self.start
        done = step - self.first_step
        epochs = trainer.max_epochs
        parts = [
            f"epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs and epochs > 0 else "")
        ]
        parts.append(f"step {step:,}/{total:,}" if math.isfinite(total) else f"step {step:,}")
        if loss is not None:
            parts.append(f"loss {float(loss.detach().float()):.4g}")
        parts.append(f"{_duration(elapsed)} elapsed")
        if done > 0 and math.isfinite(total):
            parts.append(f"about {_duration(elapsed / done * max(0, total - step))} left")
        print(", ".join(parts), flush=True)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        scores = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith("val/") and value.numel() == 1
        }
        if scores:
            shown = ", ".join(f"{name} {value:.4g}" for name, value in sorted(scores.items()))
            print(f"validation at step {trainer.global_step:,}: {shown}", flush=True)


def run_callbacks(callbacks: Any) -> list[L.Callback]:
    """The trainer's callbacks with a `DivergenceGuard`, and a `ProgressLog` when stdout is
    not a terminal (unless the run lists its own)."""
    if callbacks is None:
        callbacks = []
    elif isinstance(callbacks, L.Callback):
        callbacks = [callbacks]
    callbacks = list(callbacks)
    kinds = {type(c) for c in callbacks}
    if DivergenceGuard not in kinds:
        callbacks.append(DivergenceGuard())
    if ProgressLog not in kinds and not _is_terminal(sys.stdout):
        callbacks.append(ProgressLog())
    return callbacks


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _duration(seconds: float) -> str:
    """ "42 s", "3.5 min", "2.1 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
