"""Configs and flags of text2brain before the settings groups, read as their grouped names.

Since checkpoint format 3 a head takes its shared settings in groups (`text`, `brain`,
`decoder`, `optim`: text2brain.models.settings). A config or command line written before
says `model.init_args.encoder_lr` where it now means `model.init_args.optim.encoder_lr`. Such
names are renamed here, before LightningCLI parses the command, with one warning per name
that says what to write instead; checkpoints are upgraded the same way
(text2brain.models.formats), by the same function.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import yaml

from text2brain.models.settings import AMBIGUOUS_FLAT_NAMES, group_legacy_hparams, legacy_names

CONFIG_FLAGS = ("-c", "--config")
FLAG_PREFIX = "--model.init_args."


def warn_renamed(source: str, renamed: dict[str, str]) -> None:
    """One warning per source, naming every old setting and what to write instead."""
    if renamed:
        names = ", ".join(f"{old} -> {new}" for old, new in renamed.items())
        warnings.warn(
            f"{source}: model settings are grouped since text2brain's checkpoint format 3; "
            f"read under model.init_args as {names}: please write the new names",
            FutureWarning,
            stacklevel=3,
        )


def upgrade_model_section(model: Any, source: str) -> Any:
    """A `model` section (a class_path + init_args mapping) with flat settings grouped."""
    if not isinstance(model, dict) or not isinstance(model.get("init_args"), dict):
        return model
    grouped, renamed = group_legacy_hparams(model["init_args"])
    warn_renamed(source, renamed)
    return {**model, "init_args": grouped} if renamed else model


def _read_yaml(value: str, folder: Path | None) -> tuple[Any, Path | None]:
    """(the parsed YAML, the folder its relative includes resolve against) of a path or a
    YAML string; (None, None) when neither."""
    path = Path(value) if folder is None else folder / value
    try:
        if path.is_file():
            return yaml.safe_load(path.read_text()), path.parent
    except OSError:
        return None, None
    if folder is not None:
        return None, None
    try:
        return yaml.safe_load(value), None
    except yaml.YAMLError:
        return None, None


def _upgraded_config(value: str) -> str | None:
    """A `-c` config (path or YAML string) with its model section upgraded; None if unchanged."""
    config, folder = _read_yaml(value, None)
    if not isinstance(config, dict) or "model" not in config:
        return None
    model = config["model"]
    source = value if folder is not None else "config"
    if isinstance(model, str) and folder is not None:
        included, _ = _read_yaml(model, folder)
        upgraded = upgrade_model_section(included, str(folder / model))
        if upgraded is included:
            return None
        config = {**config, "model": upgraded}
    else:
        upgraded = upgrade_model_section(model, source)
        if upgraded is model:
            return None
        config = {**config, "model": upgraded}
    if folder is not None:  # the file's other includes resolve against its folder
        for key, item in config.items():
            if isinstance(item, str) and (folder / item).is_file():
                config[key] = str((folder / item).resolve())
    return yaml.safe_dump(config, sort_keys=False)


def upgrade_argv(argv: list[str]) -> list[str]:
    """The command line with every pre-group model setting renamed (configs, `--model` files
    and `--model.init_args.NAME` flags), each rename warned about once."""
    names = legacy_names()
    upgraded = list(argv)
    text2brain_head = False  # the flat decoder names were Text2Brain's alone
    for i, arg in enumerate(argv):
        value_at = i + 1 if arg in (*CONFIG_FLAGS, "--model") and i + 1 < len(argv) else None
        if value_at is not None:
            value = argv[value_at]
            if arg == "--model":
                parsed, _ = _read_yaml(value, None)
                new = upgrade_model_section(parsed, value)
                if new is not parsed:
                    upgraded[value_at] = yaml.safe_dump(new, sort_keys=False)
            else:
                new_config = _upgraded_config(value)
                if new_config is not None:
                    upgraded[value_at] = new_config
            text2brain_head |= "Text2Brain" in upgraded[value_at]
    flags: dict[str, str] = {}
    for i, arg in enumerate(upgraded):
        if not arg.startswith(FLAG_PREFIX):
            continue
        name, eq, value = arg[len(FLAG_PREFIX) :].partition("=")
        if name not in names or (name in AMBIGUOUS_FLAT_NAMES and not text2brain_head):
            continue
        upgraded[i] = f"{FLAG_PREFIX}{names[name]}{eq}{value}"
        flags[name] = names[name]
    warn_renamed("command line", flags)
    return upgraded
