"""Reading text2brain checkpoints and exports: checked, upgraded, never unpickled.

One place for what a `.ckpt` file (written by `text2brain fit`) and an export folder
(`text2brain export`: model.json + model.safetensors) hold and how they are read, shared by
`load_predictor` (text2brain.inference) and `text2brain export`. Why not
`LightningModule.load_from_checkpoint`: that unpickles the file (a checkpoint can run arbitrary
code when unpickled) and imports whatever class path the file names. Here a file is read with
`torch.load(weights_only=True)` or safetensors only, the class must be one of the zoo's
registered heads, and every problem (not a checkpoint, another format version, weights that do
not fit) is a `CheckpointError` that names the file and says what to do. No Lightning here.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from text2brain.brain import BrainSpace
from text2brain.models.formats import state_fingerprint, upgrade_checkpoint
from text2brain.models.head import BrainMapHead
from text2brain.releases import (
    CONFIG_NAME,
    DEFAULT_CHECKPOINT,
    RELEASE_NAME,
    UnknownReleaseError,
    resolve_release,
)

#: What every text2brain checkpoint holds (Lightning's keys plus text2brain's own section).
REQUIRED_KEYS = ("state_dict", "hyper_parameters", "text2brain")
#: How many keys of each kind a state-dict mismatch message lists before "...".
_SHOWN_KEYS = 5


class CheckpointError(ValueError):
    """A file that cannot be loaded as a text2brain checkpoint (the message says why)."""


#: Version of the export layout: 1 is model.json + model.safetensors; 2 adds side files, JSON
#: files that hold large parts of the text2brain section (a retrieval bank's texts) so that
#: model.json stays a small config.
EXPORT_FORMAT = 2
#: Export formats this version reads (format 1 is format 2 without side files).
READABLE_EXPORT_FORMATS = (1, 2)
WEIGHTS_NAME = "model.safetensors"
#: Entries of the text2brain section stored in a side file of their own: entry -> file name.
SIDE_FILES = {"bank": "bank.json"}
#: How the config refers to a side file in place of the entry it holds.
FILE_REFERENCE = "__file__"
#: What the config's "format" field says, so any other JSON is recognised as not an export.
FORMAT_NAME = "text2brain-export"
#: Key prefixes in the weights file: state-dict tensors, tensors of the text2brain section.
STATE_PREFIX, SECTION_PREFIX = "state/", "text2brain/"


def load_model(checkpoint: str | os.PathLike | None = None) -> BrainMapHead:
    """The head a checkpoint or export folder holds, its weights loaded, in eval mode.

    Raises:
        FileNotFoundError: the file does not exist (or no default model is shipped yet).
        CheckpointError (a ValueError): the file is not a text2brain checkpoint, needs
            arbitrary unpickling, has another format version, names an unregistered model or
            holds weights that do not fit the model its hyper-parameters describe.
    """
    return model_from_checkpoint(*read_model_file(checkpoint))


def read_model_file(checkpoint: str | os.PathLike | None) -> tuple[Path, dict[str, Any]]:
    """The path and the checkpoint dict (checked, upgraded) of a `.ckpt` file or an export.

    What `load_model` reads before building the head: its hyper-parameters and its
    "text2brain" section, which a head made of other heads (the ensemble) keeps.
    """
    path = checkpoint_path(checkpoint)
    return path, _read_export(path) if is_export(path) else read_checkpoint(path)


def model_from_checkpoint(path: Path, ckpt: dict[str, Any]) -> BrainMapHead:
    """The head of a checkpoint dict read by `read_model_file` (`path` names it in errors),
    its weights loaded, in eval mode."""
    info = ckpt["text2brain"]
    cls = registered_class(
        path, info.get("class_path") or ckpt["hyper_parameters"].get("_class_path")
    )
    base_encoder = (ckpt.get("export") or {}).get("base_encoder")
    model = build_model(path, cls, ckpt, pretrained=base_encoder is not None)
    state = ckpt["state_dict"]
    if base_encoder is not None:
        state = _with_base_encoder(path, model, state, base_encoder)
    load_weights(path, model, state)
    return model.eval().requires_grad_(False)


def checkpoint_path(checkpoint: str | os.PathLike | None) -> Path:
    """The checkpoint file or export folder to read (None: the released default model).

    A str that names a released model (`resolve_release`: its folder's name, or its head's
    registered name) is that release, even where a file of that name exists in the current
    folder; a `Path`, or a str with a folder in it ("./mnm"), is always a path.
    """
    if checkpoint is None:
        default = Path(DEFAULT_CHECKPOINT)
        if not (default.is_file() or is_export(default)):
            raise FileNotFoundError(
                f"the default checkpoint {str(DEFAULT_CHECKPOINT)!r} is missing from this "
                "installation; reinstall text2brain or pass the path of a checkpoint"
            )
        return Path(DEFAULT_CHECKPOINT)
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
    is_name = isinstance(checkpoint, str) and RELEASE_NAME.fullmatch(checkpoint) is not None
    if is_name:
        try:
            return resolve_release(checkpoint)
        except UnknownReleaseError as err:
            if not Path(checkpoint).exists():
                raise FileNotFoundError(
                    f"{checkpoint!r} is neither a released model nor an existing checkpoint "
                    f"file or export folder ({err})"
                ) from err
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir() and not is_export(path):
        raise CheckpointError(
            f"{str(path)!r} is a folder without model.json; pass the path of a .ckpt file or "
            "of a folder written by `text2brain export`"
        )
    return path


def _read_export(path: Path) -> dict[str, Any]:
    """An export folder as a checkpoint dict, checked and upgraded like a checkpoint."""
    try:
        ckpt = read_export(path)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    return _checked_checkpoint(path, ckpt)


def _with_base_encoder(
    path: Path, model: BrainMapHead, state: dict[str, Any], base_encoder: dict[str, Any]
) -> dict[str, Any]:
    """The export's state dict completed with the weights it left out, from the base encoder.

    The model was built with the installed base encoder's weights; their fingerprint must be
    the one recorded at export, or the maps would silently differ from the exported model's.
    """
    keys = list(base_encoder.get("keys") or [])
    own = model.state_dict()
    unknown = [k for k in keys if k not in own]
    if unknown or state_fingerprint(own, keys) != base_encoder.get("fingerprint"):
        settings = getattr(model, "text_settings", None)
        encoder = getattr(settings, "encoder", None)
        raise CheckpointError(
            f"{str(path)!r} needs the base text encoder {encoder!r} it was exported against, "
            "but the installed one has other weights (another version of its package?); "
            "install the version used at export, or export again with --keep-base-encoder"
        )
    return {**{k: own[k] for k in keys}, **state}


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, read without ever unpickling arbitrary objects, checked, upgraded."""
    try:
        with warnings.catch_warnings():  # said of any plain pickle; the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # torch raises many types for files that are not checkpoints
        unsafe = re.search(r"(?:GLOBAL|Unsupported class)\s+([\w.]+)", str(err))
        if isinstance(err, (pickle.UnpicklingError, RuntimeError)) and unsafe:
            raise CheckpointError(
                f"{str(path)!r} holds a Python object of type {unsafe.group(1)} that can only "
                "be loaded by arbitrary unpickling, which can run any code; text2brain never "
                "unpickles arbitrary objects. Re-save it with plain tensors and containers "
                "(as `text2brain fit` writes checkpoints)"
            ) from err
        reason = _torch_load_reason(err)
        raise CheckpointError(
            f"{str(path)!r} is not a text2brain checkpoint: torch.load cannot read it ({reason})"
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{str(path)!r} is not a text2brain checkpoint: it holds a {type(ckpt).__name__}, "
            "not a checkpoint dict"
        )
    return _checked_checkpoint(path, ckpt)


def _checked_checkpoint(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict (from a .ckpt or an export) after the checks both need."""
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(
            f"{str(path)!r} is not a text2brain checkpoint: it lacks {missing} (expected the "
            f"keys {list(REQUIRED_KEYS)} that a text2brain model writes through Lightning, as "
            "`text2brain fit` does)"
        )
    info, hparams, state = ckpt["text2brain"], ckpt["hyper_parameters"], ckpt["state_dict"]
    if not (isinstance(info, dict) and isinstance(hparams, dict) and isinstance(state, dict)):
        raise CheckpointError(
            f"{str(path)!r} is not a text2brain checkpoint: 'text2brain', 'hyper_parameters' "
            "and 'state_dict' must be dicts"
        )
    try:
        upgrade_checkpoint(ckpt)
    except ValueError as err:
        raise CheckpointError(f"{str(path)!r}: {err}") from err
    try:
        BrainSpace.from_dict(info["space"])
    except Exception as err:  # any malformed space description
        raise CheckpointError(
            f"{str(path)!r} has no valid brain space in its 'text2brain' section: {err}"
        ) from err
    return ckpt


def _torch_load_reason(err: BaseException) -> str:
    """The gist of a torch.load failure, without torch's advice to retry with weights_only=False.

    That advice is wrong here: for a file that is no checkpoint it would only unpickle garbage.
    """
    message = " ".join(str(err).split())
    inner = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", message)
    if inner:
        return inner.group(1).strip()[:200]
    return f"{type(err).__name__}: {message}"[:200] if message else type(err).__name__


def registered_class(path: Path, class_path: Any) -> type[BrainMapHead]:
    """The class to build for the registered head the checkpoint names.

    The file's class path is never imported: it only selects a registered head (see
    `registered_name`), whose Lightning-free inference class is built when it has one.
    """
    from text2brain.models import MODELS, inference_class, registered_name

    name = registered_name(class_path) if isinstance(class_path, str) else None
    if name is not None:
        return inference_class(name)
    if class_path is None:
        raise CheckpointError(f"{str(path)!r} does not record which model class wrote it")
    raise CheckpointError(
        f"{str(path)!r} names the model class {class_path!r}, which is not a registered "
        f"text2brain model (registered: {sorted(MODELS.values())}); only registered models "
        "can be loaded"
    )


def model_name(cls: type[BrainMapHead]) -> str:
    """The head's name in messages: an inference class goes by its LightningModule's name."""
    return getattr(cls, "model_name", cls.__name__)


def build_model(
    path: Path, cls: type[BrainMapHead], ckpt: dict[str, Any], pretrained: bool = False
) -> BrainMapHead:
    """The head from the checkpoint's hyper-parameters, with its grid-dependent modules built.

    `pretrained=False` (default): the weights come from the checkpoint, so fetching the
    encoder's original weights would be wasted time (and a download for hub encoders); its
    architecture and tokenizer still come from the encoder name or folder in the
    hyper-parameters. `pretrained=True` loads them: an export takes its unchanged base-encoder
    weights from there. Training-only hyper-parameters that the class does not take
    (`ignored_hparams`) are dropped.
    """
    hparams = {
        k: v
        for k, v in ckpt["hyper_parameters"].items()
        if not str(k).startswith("_") and k not in cls.ignored_hparams
    }
    params = inspect.signature(cls.__init__).parameters
    if isinstance(hparams.get("text"), dict):
        hparams["text"] = {**hparams["text"], "pretrained": pretrained}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(hparams) - set(params))
    name = model_name(cls)
    if unknown and not takes_any:
        raise CheckpointError(
            f"{str(path)!r} has hyper-parameters {unknown} that {name} does not take; "
            "it was probably written by another text2brain version: load it with that version"
        )
    try:
        model = cls(**hparams)
        model.pretrained_encoders = pretrained
        model.on_load_checkpoint(ckpt)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"cannot build {name} from {str(path)!r}: {' '.join(str(err).split())}"
        ) from err
    return model


def load_weights(path: Path, model: BrainMapHead, state: dict[str, Any]) -> None:
    """Load the weights strictly; a mismatch is summarised (the model's own error is a wall)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = []
    for key in expected:
        if key not in state:
            continue
        value = state[key]
        if not isinstance(value, torch.Tensor):
            mismatched.append(f"{key} (a {type(value).__name__}, not a tensor)")
        elif value.shape != expected[key].shape:
            mismatched.append(
                f"{key} (checkpoint {tuple(value.shape)}, model {tuple(expected[key].shape)})"
            )
    problems = [
        f"{len(keys)} {kind}: {', '.join(keys[:_SHOWN_KEYS])}"
        + (", ..." if len(keys) > _SHOWN_KEYS else "")
        for kind, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with another shape", mismatched),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"the weights in {str(path)!r} do not fit the {model_name(type(model))} its "
            f"hyper-parameters describe: {'; '.join(problems)}"
        )
    model.load_state_dict(state, strict=True)


# -- prediction ----------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- reading -------------------------------------------------------------------------------------


def is_export(path: Path) -> bool:
    """A folder holding model.json, or that model.json / model.safetensors itself."""
    if path.is_dir():
        return (path / CONFIG_NAME).is_file()
    return path.name in (CONFIG_NAME, WEIGHTS_NAME)


def read_export(path: Path) -> dict[str, Any]:
    """The export as a checkpoint dict (state_dict, hyper_parameters, text2brain, export).

    Base-encoder weights that were left out are missing from the state dict; the "export"
    entry (the config) lists them, and `load_predictor` fills them in.

    Raises:
        FileNotFoundError: model.json, model.safetensors or a side file it lists is missing.
        ValueError: not an export, another export format, or a damaged weights or side file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = path if path.is_dir() else path.parent
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(f"the export {str(folder)!r} lacks {needed.name}")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(config_path)!r} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise ValueError(f"{str(config_path)!r} is not a text2brain export config")
    version = config.get("export_format")
    if version not in READABLE_EXPORT_FORMATS:
        how = (
            "upgrade text2brain (pip install -U text2brain)"
            if isinstance(version, int) and version > EXPORT_FORMAT
            else "export it again from its checkpoint"
        )
        raise ValueError(
            f"{str(folder)!r} has export format {version!r}, this text2brain reads "
            f"{EXPORT_FORMAT}: {how}"
        )
    missing = [k for k in ("hyper_parameters", "text2brain", "weights") if k not in config]
    if missing:
        raise ValueError(f"{str(config_path)!r} lacks {missing}")
    expected = config["weights"].get("sha256")
    if expected != file_sha256(weights_path):
        raise ValueError(
            f"{str(weights_path)!r} does not match the sha256 in {CONFIG_NAME} (damaged or "
            "replaced): export the checkpoint again"
        )
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{str(weights_path)!r} cannot be read: {err}") from err
    state = {k[len(STATE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(STATE_PREFIX)}
    side_files = _read_side_files(folder, config.get("files") or {})
    section = _from_json(config["text2brain"], tensors, str(config_path), side_files)
    return {
        "state_dict": state,
        "hyper_parameters": config["hyper_parameters"],
        "text2brain": section,
        "export": config,
    }


def _read_side_files(folder: Path, files: Any) -> dict[str, Any]:
    """The side files a config lists (name -> sha256), each checked and parsed: name -> JSON."""
    if not isinstance(files, dict):
        raise ValueError(f"the 'files' of {str(folder / CONFIG_NAME)!r} must map names to sha256")
    parsed = {}
    for name, sha256 in files.items():
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise FileNotFoundError(f"the export {str(folder)!r} lacks {name}")
        if file_sha256(path) != sha256:
            raise ValueError(
                f"{str(path)!r} does not match the sha256 in {CONFIG_NAME} (damaged or "
                "replaced): export the checkpoint again"
            )
        try:
            parsed[name] = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from err
    return parsed


def _from_json(
    value: Any, tensors: dict[str, torch.Tensor], source: str, files: dict[str, Any]
) -> Any:
    """A config value with its tensor and side-file references replaced by what they name."""
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            name = value["__tensor__"]
            if name not in tensors:
                raise ValueError(f"{source!r} refers to a tensor {name!r} the weights lack")
            return tensors[name]
        if set(value) == {FILE_REFERENCE}:
            name = value[FILE_REFERENCE]
            if name not in files:
                raise ValueError(f"{source!r} refers to a file {name!r} its 'files' do not list")
            return _from_json(files[name], tensors, name, files)
        return {k: _from_json(v, tensors, source, files) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v, tensors, source, files) for v in value]
    return value


# -- command -------------------------------------------------------------------------------------
