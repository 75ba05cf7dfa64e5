"""Every fit stops when its loss diverges, and prints progress lines when stdout is a file."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pytest
import torch

import text2brain.run_watch as run_watch
from text2brain.run_watch import DivergenceGuard, ProgressLog, TrainingDiverged, run_callbacks


def trainer(step: int = 0, **more: object) -> SimpleNamespace:
    values = {
        "global_step": step,
        "current_epoch": 0,
        "max_epochs": 3,
        "estimated_stepping_batches": 30,
        "sanity_checking": False,
        "callback_metrics": {},
    }
    return SimpleNamespace(**{**values, **more})


def test_an_exploding_loss_stops_the_run() -> None:
    guard = DivergenceGuard(factor=100)
    guard.on_train_start(trainer(), None)
    guard.on_train_batch_end(trainer(1), None, {"loss": torch.tensor(0.011)})
    guard.on_train_batch_end(trainer(2), None, {"loss": torch.tensor(0.5)})  # noisy, not wild
    with pytest.raises(TrainingDiverged, match=r"at step 20: the loss 798.8 is over 100x"):
        guard.on_train_batch_end(trainer(20), None, {"loss": torch.tensor(798.8)})


def test_a_non_finite_loss_stops_the_run_at_once() -> None:
    guard = DivergenceGuard()
    with pytest.raises(TrainingDiverged, match="the loss is nan"):
        guard.on_train_batch_end(trainer(1), None, torch.tensor(math.nan))


def test_progress_lines_say_where_the_run_is(capsys: pytest.CaptureFixture[str]) -> None:
    log = ProgressLog(interval=0)
    log.on_train_start(trainer(), None)
    log.on_train_batch_end(trainer(10), None, {"loss": torch.tensor(0.25)})
    metrics = {"val/dice_auc": torch.tensor(0.07), "train/loss": torch.tensor(1.0)}
    log.on_validation_end(trainer(10, callback_metrics=metrics), None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 1/3, step 10/30, loss 0.25, ")
    assert lines[0].endswith(" left") and "elapsed" in lines[0]
    assert lines[1] == "validation at step 10: val/dice_auc 0.07"


def test_every_trainer_gets_the_guard_and_a_log_file_the_progress_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run_watch.sys, "stdout", io.StringIO())  # a file, not a terminal
    kinds = [type(c) for c in run_callbacks(None)]
    assert kinds == [DivergenceGuard, ProgressLog]
    terminal = io.StringIO()
    terminal.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(run_watch.sys, "stdout", terminal)
    assert [type(c) for c in run_callbacks([])] == [DivergenceGuard]
