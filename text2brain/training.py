"""LightningCLI wiring: the zoo's models, the shared data module, a head's run needs, config saving
and logging."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import lightning as L
import yaml
from jsonargparse import Namespace
from lightning.pytorch.accelerators import Accelerator
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from text2brain import precision as precisions
from text2brain.data import TextMapDataModule
from text2brain.legacy_config import upgrade_argv
from text2brain.models import model_class, registered_name
from text2brain.models.base import BrainMapModule
from text2brain.run_watch import run_callbacks

try:  # jsonargparse's --print_config, held until the head's run needs are applied
    from jsonargparse._actions import _ActionPrintConfig as _PrintConfig
except ImportError:  # pragma: no cover - another jsonargparse prints the config before them
    _PrintConfig = None

_LIGHTNING_PRECISION = inspect.signature(L.Trainer.__init__).parameters["precision"].annotation
#: What the trainer's `precision` takes: "auto" or any value the installed Lightning accepts.
TrainerPrecision = Literal["auto"] | _LIGHTNING_PRECISION


class AutoPrecisionTrainer(L.Trainer):
    """Lightning's Trainer whose precision may also be "auto", its default.

    "auto" is resolved here, once, before Lightning sets up its precision plugin, from the
    trainer's accelerator (text2brain.precision says what it picks and why), and one line logs
    the choice. An explicit precision is kept; an explicit bf16 on a CPU without native bf16
    gets a warning saying how much slower it is. `text2brain fit` builds this trainer, so a
    run's saved config.yaml records "auto" as asked, and the log the precision it stood for.
    """

    def __init__(
        self,
        *,
        accelerator: str | Accelerator = "auto",
        precision: TrainerPrecision = "auto",
        **kwargs: Any,
    ) -> None:
        """Lightning's Trainer, with `precision` resolved first.

        Args:
            accelerator: "cpu", "gpu", "cuda", "mps", "auto", ... or an Accelerator instance,
                as for `lightning.Trainer`; an "auto" precision is chosen for it.
            precision: "auto" (bf16-mixed on GPUs with bf16 and CPUs with native bf16,
                16-mixed on older CUDA GPUs, else 32-true) or any precision `lightning.Trainer`
                takes, used as given.
        """
        choice = precisions.trainer_precision(precision, _accelerator_name(accelerator))
        if rank_zero_only.rank == 0:
            precisions.report(choice, info=rank_zero_info)
        kwargs["callbacks"] = run_callbacks(kwargs.get("callbacks"))
        super().__init__(accelerator=accelerator, precision=choice.precision, **kwargs)


def _accelerator_name(accelerator: Any) -> str:
    """The accelerator's name ("auto", "cpu", "gpu", ...), also for an Accelerator instance."""
    if isinstance(accelerator, str):
        return accelerator
    return type(accelerator).__name__.removesuffix("Accelerator").lower()


class LogConfigCallback(SaveConfigCallback):
    """Saves config.yaml in the run folder and sends the full config to the logger (wandb)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = self.config.clone()
        config.pop("config", None)  # the -c file paths, jsonargparse Path objects
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config.as_dict()})


class ConfigError(ValueError):
    """A run's configuration cannot be built (found before any data is loaded or trained).

    `text2brain fit|validate|test|predict` print it as one line; errors once the run has
    started keep their traceback.
    """


class Text2BrainCLI(LightningCLI):
    """LightningCLI over the zoo; the head's run needs are applied before anything is built.

    The head that `model.class_path` names sets its checkpoint folder, trainer arguments and
    callbacks over the parsed config (`apply_run_needs`), and `--print_config` prints the run
    with them applied, as its saved config.yaml records it.
    """

    def __init__(self, *args: Any, explicit_trainer_keys: Iterable[str] = (), **kwargs: Any):
        """LightningCLI's arguments, and the trainer settings that the run states itself
        (`explicit_trainer_keys(argv)`): a run need that replaces one of them warns."""
        self.explicit_trainer_keys = frozenset(explicit_trainer_keys)
        self._print_request: dict[str, Any] | None = None
        #: Checkpoints of an earlier run in this fit's checkpoint folders (`--overwrite`).
        self._earlier_checkpoints: list[Path] = []
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--check_tokenizer",
            type=bool,
            default=True,
            help="fail when data.tokenizer differs from the model's encoder",
        )
        parser.add_argument(
            "--checkpoint_dir",
            type=str | None,
            default=None,
            help="folder of the ModelCheckpoint callbacks that name none (default: "
            "checkpoints/<the head's name in text2brain.models.MODELS>)",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="fit: delete the checkpoints an earlier run left in the checkpoint folders "
            "(without it, such a folder stops the run: resume with --ckpt_path instead)",
        )

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """As LightningCLI; a `--print_config` waits for `before_instantiate_classes`."""
        hold = _PrintConfig.skip_print_config() if _PrintConfig else contextlib.nullcontext()
        with hold:
            super().parse_arguments(parser, args)
        self._print_request = vars(parser).pop("print_config", None)
        argv = [*sys.argv, *(args if isinstance(args, list) else [])]
        asked = any(str(a).partition("=")[0] == "--print_config" for a in argv)
        if asked and self._print_request is None:  # never run what was only to be printed
            raise RuntimeError("this jsonargparse's --print_config cannot be held: upgrade it")
        config = self.config.get(self.config.get("subcommand") or "") or {}
        if config.get("ckpt_path"):  # before LightningCLI reads the file's hyper-parameters
            check_ckpt_path(str(config.ckpt_path), config.model.class_path)

    def instantiate_classes(self) -> None:
        """Build the model, data and trainer; a bad value in the config is a `ConfigError`."""
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            super().instantiate_classes()
        except (ValueError, TypeError, MisconfigurationException) as err:
            raise ConfigError(str(err)) from err
        if self.config.subcommand == "fit" and self.config.fit.get("overwrite"):
            for path in self._earlier_checkpoints:
                path.unlink(missing_ok=True)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.config.subcommand]
        apply_run_needs(config, explicit=self.explicit_trainer_keys)
        if self._print_request is not None:  # the run as it will be built; exits
            self.parser.print_config = self._print_request
            _PrintConfig.print_config_if_requested(self.parser, self.config)
        try:
            self._check_tokenizer(config)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        drop_logger_only_callbacks(config.trainer)
        drop_checkpoints_in_fast_dev_run(config.trainer)
        if self.config.subcommand == "fit":
            if config.get("ckpt_path"):
                continue_wandb_run(config)
            else:
                self._earlier_checkpoints = earlier_checkpoints(config.trainer)
            if self._earlier_checkpoints and not config.get("overwrite"):
                raise ConfigError(folder_in_use(self._earlier_checkpoints))

    @staticmethod
    def _check_tokenizer(config: Any) -> None:
        model_args = config.model.init_args if "init_args" in config.model else {}
        text = model_args.get("text") if hasattr(model_args, "get") else None
        encoder = text.get("encoder") if hasattr(text, "get") else None
        tokenizer = config.data.tokenizer if "tokenizer" in config.data else None
        if config.check_tokenizer and encoder and tokenizer and encoder != tokenizer:
            raise ValueError(
                f"data.tokenizer ({tokenizer!r}) differs from model.init_args.text.encoder "
                f"({encoder!r}): set both to the same name (or pass --check_tokenizer false)"
            )


# -- checkpoints of earlier runs ----------------------------------------------------------------
def check_ckpt_path(path: str, class_path: str) -> None:
    """`--ckpt_path` names a readable text2brain checkpoint of the run's head (before any work).

    Lightning would restore whatever head the file holds under the run's config, or stop with a
    traceback deep in its loading code (a truncated file, a pickle).
    """
    if path in ("last", "best", "hpc", "registry"):
        return
    from text2brain.checkpoint import CheckpointError, read_checkpoint
    from text2brain.models import registered_name

    if not os.path.isfile(path):
        raise ConfigError(f"--ckpt_path {path!r} is not a file")
    try:
        ckpt = read_checkpoint(Path(path))
    except CheckpointError as err:
        raise ConfigError(f"--ckpt_path: {err}") from err
    except OSError as err:  # torch's reader of a truncated file says only "Invalid argument"
        raise ConfigError(
            f"--ckpt_path {path!r} cannot be read ({err.strerror or err}): a truncated or "
            "damaged checkpoint?"
        ) from err
    recorded = str(ckpt["text2brain"].get("class_path") or "")
    head = registered_name(recorded) or recorded.rpartition(".")[2]
    run = registered_name(class_path) or class_path.rpartition(".")[2]
    if head != run:
        raise ConfigError(
            f"--ckpt_path {path!r} is a checkpoint of the {head!r} head, but the run's model "
            f"is {run!r}: give that head's config (-c) or model"
        )


def earlier_checkpoints(trainer: Any) -> list[Path]:
    """The .ckpt files already in the folders of the run's ModelCheckpoint callbacks."""
    found: list[Path] = []
    for callback in _callbacks(trainer):
        if _class_name(callback) != "ModelCheckpoint" or not hasattr(callback, "get"):
            continue
        dirpath = (callback.get("init_args") or {}).get("dirpath")
        if dirpath and Path(dirpath).is_dir():
            found += [p for p in sorted(Path(dirpath).glob("*.ckpt")) if p not in found]
    return found


def folder_in_use(checkpoints: Sequence[Path]) -> str:
    """Why a fit into a folder of earlier checkpoints is refused, and the three ways on."""
    folders = sorted({str(p.parent) for p in checkpoints})
    last = next((p for p in checkpoints if p.name == "last.ckpt"), checkpoints[0])
    names = ", ".join(p.name for p in checkpoints[:5]) + (", ..." if len(checkpoints) > 5 else "")
    return (
        f"checkpoint folder {', '.join(folders)} holds an earlier run's checkpoints ({names}): "
        f"resume it with --ckpt_path {last}, replace them with --overwrite true, or choose "
        "another --checkpoint_dir"
    )


# -- what a head needs from its run -------------------------------------------------------------
def apply_run_needs(config: Any, explicit: Iterable[str] = ()) -> None:
    """The run's head sets what it needs over the parsed config of `fit|validate|test|predict`.

    - Its `trainer_arguments` replace the trainer's values. A value the run states itself
      (`explicit`: trainer keys from the command line or a config's own keys, see
      `explicit_trainer_keys`) is replaced with a warning naming it; one from an included
      trainer file, the settings every head shares, without.
    - Its `dropped_callbacks` leave the trainer (with a warning if the run lists its callbacks).
    - ModelCheckpoint callbacks without a `dirpath` write to `checkpoint_dir`, by default
      checkpoints/<name>, the head's registry name (`checkpoint_name`); a dirpath is kept.

    One line logs what was set.
    """
    explicit = frozenset(explicit)
    head = head_class(config.model.class_path)
    trainer = config.trainer
    said, changed = [], []
    for key, need in head.trainer_arguments.items():
        value = trainer.get(key)
        if type(value) is type(need) and value == need:
            continue
        if key in explicit:
            rank_zero_warn(
                f"{head.__name__} needs trainer.{key}={need!r}: the config's {value!r} is replaced"
            )
        trainer[key] = need
        changed.append(f"{key}={need}")
    if changed:
        said.append(f"trainer {', '.join(changed)}")

    callbacks = _callbacks(trainer)
    kept = [c for c in callbacks if _dropped_as(c, head.dropped_callbacks) is None]
    if len(kept) < len(callbacks):
        dropped = [d for c in callbacks if (d := _dropped_as(c, head.dropped_callbacks))]
        if "callbacks" in explicit:
            rank_zero_warn(f"{head.__name__} does not use these callbacks, dropped: {dropped}")
        said.append(f"callbacks dropped: {', '.join(dropped)}")
        trainer.callbacks = kept

    folder = config.get("checkpoint_dir") or f"checkpoints/{checkpoint_name(head)}"
    if fill_checkpoint_dirs(kept, folder):
        said.append(f"checkpoints in {folder}/")
    if said:
        rank_zero_info(f"{head.__name__} run: {'; '.join(said)}")


def head_class(class_path: str) -> type[BrainMapModule]:
    """The head a config's `model.class_path` names: through the registry, else imported."""
    name = registered_name(class_path)
    if name is not None:
        return model_class(name)
    module, _, attribute = class_path.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def checkpoint_name(head: type) -> str:
    """The folder name of a head's checkpoints: its registry name (`text2brain.models.MODELS`),
    else, for a head not registered yet, its class name in snake case (MyHead -> my_head)."""
    name = registered_name(f"{head.__module__}.{head.__qualname__}")
    if name is not None:
        return name
    words = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", head.__name__)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", words).lower()


def fill_checkpoint_dirs(callbacks: Sequence[Any], folder: str) -> int:
    """Sets `folder` as the dirpath of the ModelCheckpoint entries without one; how many."""
    filled = 0
    for callback in callbacks:
        if _class_name(callback) != "ModelCheckpoint" or not hasattr(callback, "get"):
            continue
        if callback.get("init_args") is None:
            callback.init_args = Namespace()
        if callback.init_args.get("dirpath") is None:
            callback.init_args.dirpath = folder
            filled += 1
    return filled


def _callbacks(trainer: Any) -> list[Any]:
    """The trainer config's callbacks as a list (the config may give one alone, or none)."""
    callbacks = trainer.get("callbacks")
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, list) else [callbacks]


def _dropped_as(callback: Any, dropped: dict[str, dict[str, Any]]) -> str | None:
    """How `callback` is named in a head's `dropped_callbacks` if it is one, else None."""
    name = _class_name(callback)
    if name not in dropped:
        return None
    init_args = callback.get("init_args") if hasattr(callback, "get") else callback
    values = {k: getattr(init_args, k, None) for k in dropped[name]}
    if any(values[k] != v for k, v in dropped[name].items()):
        return None
    return f"{name}({', '.join(f'{k}={v}' for k, v in values.items())})" if values else name


def explicit_trainer_keys(argv: Sequence[str]) -> set[str]:
    """The trainer settings that a command line states itself (before `expand_config_includes`).

    A `--trainer.KEY` option, a `--trainer` YAML string, and a config's own `trainer.KEY` or
    `trainer: {KEY: ...}` keys; not the keys of a trainer file that a config includes
    (`trainer: trainer/default.yaml`) or that `--trainer FILE` names: those are the settings
    every head shares, which a head's run needs replace without a warning.
    """
    keys: set[str] = set()
    for i, arg in enumerate(argv):
        option, has_value, value = arg.partition("=")
        if not has_value:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if option.startswith("--trainer."):
            keys.add(option.split(".")[1].rstrip("+"))  # callbacks+=... appends
        elif option == "--trainer" and not Path(value).is_file():
            keys |= _trainer_keys({"trainer": _load_yaml(value)})
        elif option in CONFIG_FLAGS:
            path = Path(value)
            keys |= _trainer_keys(_load_yaml(path.read_text() if path.is_file() else value))
    return keys


def _trainer_keys(config: Any) -> set[str]:
    """The trainer keys a config states itself (an include's string is not one)."""
    if not isinstance(config, dict):
        return set()
    keys: set[str] = set()
    for key, value in config.items():
        if key == "trainer" and isinstance(value, dict):
            keys |= {str(k) for k in value}
        elif isinstance(key, str) and key.startswith("trainer."):
            keys.add(key.split(".")[1])
    return keys


def _load_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None  # jsonargparse reports it


#: Callbacks that fail without a logger (Lightning says so only once training starts).
LOGGER_ONLY_CALLBACKS = ("LearningRateMonitor",)


def drop_logger_only_callbacks(trainer: Any) -> None:
    """Without a logger (`--trainer.logger=false`), drop the callbacks that need one.

    Lightning would otherwise raise only when training starts, after the data was loaded and
    the maps rendered. MapFigureLogger stays: without a logger it writes PNG files.
    """
    logger = trainer.get("logger")
    if not (logger is False or (isinstance(logger, list) and not logger)):
        return
    callbacks = _callbacks(trainer)
    kept = [c for c in callbacks if _class_name(c) not in LOGGER_ONLY_CALLBACKS]
    if len(kept) == len(callbacks):
        return
    dropped = sorted({_class_name(c) for c in callbacks} - {_class_name(c) for c in kept})
    rank_zero_warn(f"the trainer has no logger, so these callbacks were dropped: {dropped}")
    trainer.callbacks = kept


def drop_checkpoints_in_fast_dev_run(trainer: Any) -> None:
    """With `fast_dev_run`, drop the ModelCheckpoint callbacks.

    Lightning says checkpointing is suppressed in that mode, yet (2.6) a ModelCheckpoint with
    `save_last` still writes last.ckpt when training ends: a full checkpoint (120 MB for the
    main job) from a one-batch smoke test, over a real run's last.ckpt in the same folder.
    """
    if not trainer.get("fast_dev_run"):
        return
    callbacks = _callbacks(trainer)
    kept = [c for c in callbacks if _class_name(c) != "ModelCheckpoint"]
    if len(kept) < len(callbacks):  # Lightning already says "checkpointing is suppressed"
        trainer.callbacks = kept


def _class_name(callback: Any) -> str:
    """The class name of a callback in a parsed config (a class_path entry or an instance)."""
    class_path = callback.get("class_path") if hasattr(callback, "get") else None
    if isinstance(class_path, str):
        return class_path.rsplit(".", 1)[-1]
    return type(callback).__name__


WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"


def continue_wandb_run(config: Any) -> None:
    """Resuming `fit` from a checkpoint logs into the wandb run that wrote it.

    Without this, the training state resumes but wandb starts a new run, splitting one training
    curve over two dashboards entries. The run id travels in the checkpoint (see
    `BrainMapModule.on_save_checkpoint`); an id given on the command line wins.
    """
    logger = config.trainer.get("logger")
    if not hasattr(logger, "get") or logger.get("class_path") not in (
        WANDB_LOGGER,
        "lightning.pytorch.loggers.wandb.WandbLogger",
    ):
        return
    init_args = logger.get("init_args")
    if init_args is None or init_args.get("id"):
        return
    path = str(config.ckpt_path)
    if path in ("last", "best", "hpc") or not os.path.isfile(path):
        return
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    run_id = checkpoint.get("text2brain", {}).get("logger_version")
    if isinstance(run_id, str) and run_id:
        init_args["id"] = run_id
        init_args["resume"] = "allow"


CONFIG_FLAGS = ("-c", "--config")


def expand_config_includes(argv: list[str]) -> list[str]:
    """Config files that include a group's file and override some of its keys, merged here.

    A config such as `trainer: trainer/default.yaml` followed by `trainer.max_epochs: 3` in the
    same file means "that file, with max_epochs 3"; jsonargparse (4.53) instead drops the
    included file whenever the file also has dotted keys of that group, so the run silently
    loses e.g. the trainer's precision, gradient clipping and logger. Such files are merged
    here, the included file first and the dotted keys over it, and handed to LightningCLI as a
    YAML string (jsonargparse takes one in place of a path); other files pass unchanged. The
    run's saved config.yaml records the merged result.
    """
    expanded = list(argv)
    for i, arg in enumerate(argv):
        if arg in CONFIG_FLAGS and i + 1 < len(argv):
            index, path = i + 1, argv[i + 1]
        elif arg.startswith("--config="):
            index, path = i, arg.split("=", 1)[1]
        else:
            continue
        merged = _merged_config(Path(path))
        if merged is not None:
            text = yaml.safe_dump(merged, sort_keys=False)
            expanded[index] = f"--config={text}" if index == i else text
    return expanded


def _merged_config(path: Path) -> dict[str, Any] | None:
    """The file with its group includes merged with its dotted keys; None if it has none."""
    if not path.is_file():
        return None  # a YAML string, or a missing file that jsonargparse reports
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        return None
    dotted = {k: v for k, v in config.items() if isinstance(k, str) and "." in k}
    groups = {k.split(".", 1)[0] for k in dotted}
    if not any(isinstance(config.get(g), str) for g in groups):
        return None
    merged: dict[str, Any] = {}
    for key, value in config.items():
        if key in dotted:
            continue
        if isinstance(value, str) and (path.parent / value).is_file():
            if key in groups:
                value = yaml.safe_load((path.parent / value).read_text()) or {}
            else:  # an include of its own: absolute, as the merged config has no folder
                value = str((path.parent / value).resolve())
        merged[key] = value
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = merged
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return merged


def run_lightning_cli(argv: list[str]) -> Text2BrainCLI:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    explicit = explicit_trainer_keys(argv)
    argv = upgrade_argv(expand_config_includes(argv))
    # The command line goes through sys.argv (LightningCLI reads it when `args` is None), not
    # through `args`: Lightning's DDP launcher starts the other ranks by re-running
    # `sys.executable <script or -m module> sys.argv[1:]`, so sys.argv must hold this command
    # while the trainer runs, or the ranks > 0 start without a subcommand and exit.
    with mock.patch.object(sys, "argv", [*sys.argv[:1], *argv]):
        return _make_cli(explicit)


def _make_cli(explicit_trainer_keys: Iterable[str] = ()) -> Text2BrainCLI:
    return Text2BrainCLI(
        BrainMapModule,
        TextMapDataModule,
        subclass_mode_model=True,
        subclass_mode_data=False,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True},
        trainer_class=AutoPrecisionTrainer,
        parser_kwargs={"prog": "text2brain"},
        args=None,
        auto_configure_optimizers=False,
        explicit_trainer_keys=explicit_trainer_keys,
    )
