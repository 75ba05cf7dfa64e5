"""Fixtures of the heads' tests: a tiny data module, a quiet trainer and the closed-form heads
fitted once on the synthetic corpus (tests/conftest.py has the corpus, encoder and space)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import yaml
from model_configs import tiny_model
from synthetic import quiet_trainer, tiny_datamodule, torch_threads

from text2brain.cli import main
from text2brain.data import TextMapDataModule
from text2brain.models import MODELS, model_class
from text2brain.models.closed_form import ClosedFormModule

REPO = Path(__file__).resolve().parents[2]

#: The registered heads fitted in closed form (no optimizer).
CLOSED_FORM = tuple(sorted(name for name in MODELS if not model_class(name).trains_by_gradient))


@pytest.fixture
def datamodule(data_files: dict[str, str], tiny_bert: Path) -> TextMapDataModule:
    """The data module of the generated corpus, tokenised for the tiny encoder."""
    return tiny_datamodule(data_files, tiny_bert)


@pytest.fixture
def make_trainer(tmp_path: Path) -> Callable[..., L.Trainer]:
    """make_trainer(**options): a `quiet_trainer` in `tmp_path` without the sanity validation
    steps."""

    def make(**options: Any) -> L.Trainer:
        return quiet_trainer(tmp_path, **{"num_sanity_val_steps": 0, **options})

    return make


@pytest.fixture(scope="session")
def fit_closed_form(data_files: dict[str, str], tiny_bert: Path) -> Callable[..., ClosedFormModule]:
    """fit_closed_form(name, **overrides): the closed-form head fitted on the generated corpus
    (one epoch, no validation), in eval mode; `overrides` change its tiny init args (a head
    that reads text with a transformer gets the tiny encoder)."""

    def fit(name: str, **overrides: Any) -> ClosedFormModule:
        model = tiny_model(name, tiny_bert, **overrides)
        quiet_trainer(max_epochs=1, limit_val_batches=0).fit(
            model, datamodule=tiny_datamodule(data_files)
        )
        assert model.is_fitted
        return model.eval()

    return fit


@pytest.fixture(scope="session")
def closed_form_heads(
    fit_closed_form: Callable[..., ClosedFormModule],
) -> dict[str, ClosedFormModule]:
    """Every closed-form head fitted once for the session with its tiny config (one thread)."""
    with torch_threads(1):
        return {name: fit_closed_form(name) for name in CLOSED_FORM}


@pytest.fixture
def shipped_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[[str], dict[str, Any]]:
    """shipped_config(name): configs/<name>.yaml as `text2brain fit --print_config` prints it,
    run in `tmp_path`; a head without a job of its own runs as configs/default.yaml with its
    configs/model/<name>.yaml."""

    def printed(name: str) -> dict[str, Any]:
        monkeypatch.chdir(tmp_path)
        configs = REPO / "configs"
        job = configs / f"{name}.yaml"
        if job.is_file():
            argv = ["-c", str(job)]
        else:
            argv = [
                "-c",
                str(configs / "default.yaml"),
                "--model",
                str(configs / "model" / job.name),
            ]
        with pytest.raises(SystemExit) as exc:
            main(["fit", *argv, "--print_config"])
        assert exc.value.code in (0, None)
        return yaml.safe_load(capsys.readouterr().out)

    return printed
