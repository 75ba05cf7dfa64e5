"""LightningCLI wiring: the zoo's models, the shared data module, config saving and logging."""

from __future__ import annotations

import os
import sys
from typing import Any
from unittest import mock

import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from text2brain.data import TextMapDataModule
from text2brain.models.base import BrainMapModule


class LogConfigCallback(SaveConfigCallback):
    """Saves config.yaml in the run folder and sends the full config to the logger (wandb)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": self.config.as_dict()})


class Text2BrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--check_tokenizer",
            type=bool,
            default=True,
            help="fail when data.tokenizer differs from the model's encoder",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.config.subcommand]
        model_args = config.model.init_args if "init_args" in config.model else {}
        encoder = model_args.get("encoder") if hasattr(model_args, "get") else None
        tokenizer = config.data.tokenizer if "tokenizer" in config.data else None
        if config.check_tokenizer and encoder and tokenizer and encoder != tokenizer:
            raise ValueError(
                f"data.tokenizer ({tokenizer!r}) differs from model.init_args.encoder "
                f"({encoder!r}): set both to the same name (or pass --check_tokenizer false)"
            )


def run_lightning_cli(argv: list[str]) -> Text2BrainCLI:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # `args` carries the command line; an empty sys.argv keeps LightningCLI from warning that
    # both were given (it reads one or the other).
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        return _make_cli(argv)


def _make_cli(argv: list[str]) -> Text2BrainCLI:
    return Text2BrainCLI(
        BrainMapModule,
        TextMapDataModule,
        subclass_mode_model=True,
        subclass_mode_data=False,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=argv,
        auto_configure_optimizers=False,
    )
