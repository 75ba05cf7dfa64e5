"""`text2brain export`: a checkpoint as a weights file (safetensors) plus a JSON config.

```bash
text2brain export checkpoints/text2brain/best.ckpt -o checkpoints/my-model
```
```python
predictor = load_predictor("checkpoints/my-model")  # the folder (or its model.json)
```

Why: a training checkpoint holds what resuming needs (optimizer moments, loop state) and,
for heads with a text encoder, a full copy of the encoder even where training never changed
it. A release needs neither. An export is a folder with

- `model.safetensors`: the weights; no pickle, so loading cannot run code. Floating-point
  tensors are float16 by default (`--dtype float32` keeps them), except any whose values do
  not fit float16, which stay float32 and are listed in the config.
- `model.json`: the head's hyper-parameters, its grid and mask, the checkpoint format, the
  export format, the provenance (source file, step, validation score) and the sha256 of the
  weights file and of each side file.
- side files (`SIDE_FILES`): JSON files for the large non-tensor parts of a head's text2brain
  section, so model.json stays a small config that lists the releases quickly. The retrieval
  bank of a contrastive or retrieval head goes to `bank.json`: its article ids, titles and
  keywords as compact JSON, its tensors (embeddings, already computed and float16; peak
  coordinates, float32 so the maps it rebuilds are the training ones) in model.safetensors
  under `text2brain/bank/`. No dense maps: the bank rebuilds them from the peaks. An
  ensemble member's bank goes to a file named by its place (`members.retrieval.bank.json`).

Text-encoder weights equal to the installed base encoder's (a frozen encoder, frozen
embeddings) are left out. The config records which ones, with a fingerprint of their values.
Loading takes them from the installed encoder and checks that fingerprint, so a different
base encoder fails with a clear error; it cannot silently change the maps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from text2brain import __version__
from text2brain.checkpoint import (
    CONFIG_NAME,
    EXPORT_FORMAT,
    FILE_REFERENCE,
    FORMAT_NAME,
    SECTION_PREFIX,
    SIDE_FILES,
    STATE_PREFIX,
    WEIGHTS_NAME,
    build_model,
    checkpoint_path,
    file_sha256,
    model_from_checkpoint,
    read_checkpoint,
    registered_class,
)
from text2brain.errors import add_debug_option
from text2brain.models.formats import CHECKPOINT_FORMAT, state_fingerprint
from text2brain.outputs import OutputError, atomic_output, write_text

DTYPES = {"float16": torch.float16, "float32": torch.float32}
_FLOAT16_MAX = float(torch.finfo(torch.float16).max)


@dataclass
class ExportSummary:
    """What `export_checkpoint` wrote."""

    directory: Path
    n_tensors: int
    n_base_encoder_tensors: int  # left out: equal to the installed base encoder's
    weights_bytes: int
    kept_float32: list[str]  # floating tensors outside float16's range
    side_files: dict[str, int]  # name -> bytes
    total_bytes: int  # every file of the export

    def describe(self) -> str:
        kept = f"; kept in float32 (outside float16's range): {self.kept_float32}"
        sides = "".join(f", {name} ({size / 1e6:.1f} MB)" for name, size in self.side_files.items())
        return (
            f"wrote {self.directory / WEIGHTS_NAME} ({self.weights_bytes / 1e6:.1f} MB, "
            f"{self.n_tensors} tensors){sides} and {self.directory / CONFIG_NAME}, "
            f"{self.total_bytes / 1e6:.1f} MB in all; "
            f"{self.n_base_encoder_tensors} base-encoder tensors left out (taken from the "
            f"installed encoder when loading){kept if self.kept_float32 else ''}"
        )


# -- writing -------------------------------------------------------------------------------------


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: str = "float16",
    keep_base_encoder: bool = False,
    overwrite: bool = False,
) -> ExportSummary:
    """Write `checkpoint` as `out_dir/model.safetensors` + `out_dir/model.json`.

    Args:
        checkpoint: a `.ckpt` written by `text2brain fit` (it is checked as `load_predictor`
            checks it, and upgraded to the current checkpoint format).
        out_dir: the export folder (created).
        dtype: "float16" (default; halves the size) or "float32" for floating tensors.
        keep_base_encoder: also store text-encoder weights that equal the base encoder's.
        overwrite: replace an existing export in `out_dir`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    path = checkpoint_path(checkpoint)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{str(out)!r} exists and is not a folder")
    if not overwrite and any((out / name).exists() for name in (CONFIG_NAME, WEIGHTS_NAME)):
        raise FileExistsError(f"{str(out)!r} already holds an export; pass overwrite=True")
    ckpt = read_checkpoint(path)
    cls = registered_class(path, ckpt["text2brain"].get("class_path"))
    bank = ckpt["text2brain"].get("bank")
    if isinstance(bank, dict) and bank.get("embeddings") is None:
        # A contrastive head saved between two validations (a periodic last.ckpt) left its
        # stale bank embeddings out: compute them once here, not at every load of the export.
        model = model_from_checkpoint(path, ckpt)  # the dict read above, not the file again
        ckpt["text2brain"]["bank"] = model.require_bank("be exported").to_dict()
    state = ckpt["state_dict"]

    base_keys: list[str] = []
    base_state: dict[str, torch.Tensor] = {}
    if not keep_base_encoder:
        base = build_model(path, cls, ckpt, pretrained=True)  # the installed base weights
        base_state = base.state_dict()
        prefixes = encoder_prefixes(base)
        base_keys = sorted(
            k
            for k in state
            if k.startswith(prefixes)
            and k in base_state
            and state[k].shape == base_state[k].shape
            and torch.equal(state[k], base_state[k])
        )

    tensors: dict[str, torch.Tensor] = {}
    kept_float32: list[str] = []
    for key, value in state.items():
        if key in base_keys:
            continue
        tensors[STATE_PREFIX + key], kept = _cast(value, DTYPES[dtype])
        if kept:
            kept_float32.append(key)
    section = _to_json(ckpt["text2brain"], SECTION_PREFIX, tensors)
    side_files = _pull_side_files(section)
    hyper_parameters = ckpt["hyper_parameters"]
    try:
        json.dumps(hyper_parameters)
    except TypeError as err:
        raise ValueError(
            f"{str(path)!r} has hyper-parameters that are not plain JSON values ({err}); "
            "text2brain heads take plain arguments"
        ) from err

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / WEIGHTS_NAME
    written: list[Path] = []
    try:
        # model.json, written last, makes the folder an export: a replaced export's goes
        # first, so an export that fails half-way is never taken for a whole one.
        (out / CONFIG_NAME).unlink(missing_ok=True)
        with atomic_output(weights_path) as tmp:
            try:
                save_file(tensors, tmp, metadata={"format": FORMAT_NAME})
            except SafetensorError as err:  # a full disk, said in safetensors' own type
                raise OutputError(f"cannot write {str(weights_path)!r}: {err}") from err
        written.append(weights_path)
        for name, value in side_files.items():  # compact: data, not a config to read
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            written.append(write_text(out / name, text))
        for name in SIDE_FILES.values():  # a previous export's, now stale
            for stale in out.glob(f"*{name}"):
                if stale.name not in side_files:
                    stale.unlink()
        write_text(
            out / CONFIG_NAME,
            _config_text(
                path, ckpt, out, section, side_files, hyper_parameters, dtype, base_keys, base_state
            ),
        )
    except BaseException:
        for file in written:
            with contextlib.suppress(OSError):
                file.unlink()
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    written = [weights_path, out / CONFIG_NAME, *(out / name for name in side_files)]
    return ExportSummary(
        out,
        len(tensors),
        len(base_keys),
        weights_path.stat().st_size,
        kept_float32,
        {name: (out / name).stat().st_size for name in side_files},
        sum(path.stat().st_size for path in written),
    )


def _config_text(
    path: Path,
    ckpt: dict[str, Any],
    out: Path,
    section: dict[str, Any],
    side_files: dict[str, Any],
    hyper_parameters: dict[str, Any],
    dtype: str,
    base_keys: list[str],
    base_state: dict[str, torch.Tensor],
) -> str:
    """model.json: what the export holds, with the sha256 of its files (written already)."""
    config = {
        "format": FORMAT_NAME,
        "export_format": EXPORT_FORMAT,
        "checkpoint_format": CHECKPOINT_FORMAT,
        "text2brain_version": __version__,
        "class_path": ckpt["text2brain"].get("class_path"),
        "hyper_parameters": hyper_parameters,
        "text2brain": section,
        "weights": {
            "file": WEIGHTS_NAME,
            "sha256": file_sha256(out / WEIGHTS_NAME),
            "dtype": dtype,
        },
        "files": {name: file_sha256(out / name) for name in side_files},
        "base_encoder": (
            {"keys": base_keys, "fingerprint": state_fingerprint(base_state, base_keys)}
            if base_keys
            else None
        ),
        "source": _provenance(path, ckpt),
    }
    return json.dumps(config, indent=1) + "\n"


def encoder_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the model's text encoders (their weights can come from the base)."""
    from text2brain.models.encoders import TextEncoder

    return tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, TextEncoder))


def _cast(value: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    """(tensor to store, kept float32 because float16 cannot hold it)."""
    value = value.detach().cpu().contiguous().clone()
    if not value.is_floating_point() or value.dtype == dtype or value.dtype == torch.float16:
        return value, False
    if dtype == torch.float16 and value.numel() and float(value.abs().max()) > _FLOAT16_MAX:
        return value.float(), True
    return value.to(dtype), False


def _pull_side_files(section: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Move the `SIDE_FILES` entries of `section`, at any depth (an ensemble's members keep
    their own sections), into side files: file name -> JSON, each entry replaced by a
    reference. A nested entry's file is named by its path ("members.retrieval.bank.json")."""
    files: dict[str, Any] = {}
    for key in list(section):
        value = section[key]
        if key in SIDE_FILES and value is not None:
            name = ".".join([*path, SIDE_FILES[key]])
            files[name] = value
            section[key] = {FILE_REFERENCE: name}
        elif isinstance(value, dict) and key != "hyper_parameters":
            inner = path if key == "text2brain" else (*path, key)
            files.update(_pull_side_files(value, inner))
    return files


def _to_json(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as JSON, its tensors moved into `tensors` as {"__tensor__": name} references."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError(f"checkpoint section {prefix!r} has keys that are not strings")
        return {k: _to_json(v, f"{prefix}{k}/", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, f"{prefix}{i}/", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ValueError(f"checkpoint section {prefix!r} holds a {type(value).__name__}")


def _provenance(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    scores = {}
    for name, state in ckpt.get("callbacks", {}).items():  # "ModelCheckpoint{'monitor': ...}"
        monitor = re.search(r"'monitor': '([^']+)'", str(name))
        if monitor and isinstance(state, dict) and state.get("best_model_score") is not None:
            scores[monitor.group(1)] = float(state["best_model_score"])
    return {
        "checkpoint": path.name,
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "best_scores": scores,
    }


def export(argv: list[str] | None = None) -> None:
    """`text2brain export CKPT -o FOLDER` (the `COMMANDS` entry of text2brain.cli)."""
    parser = argparse.ArgumentParser(
        prog="text2brain export",
        description="Write a checkpoint as model.safetensors (weights only) + model.json "
        "(config), plus bank.json (the retrieval bank's texts) for a head with a retrieval bank, "
        "which load_predictor and `text2brain query --ckpt FOLDER` read.",
    )
    parser.add_argument("checkpoint", help=".ckpt written by `text2brain fit`")
    parser.add_argument("-o", "--out-dir", required=True, help="export folder (created)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float16")
    parser.add_argument(
        "--keep-base-encoder",
        action="store_true",
        help="also store text-encoder weights equal to the installed base encoder's",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export")
    add_debug_option(parser)
    args = parser.parse_args(argv)
    try:
        summary = export_checkpoint(
            args.checkpoint, args.out_dir, args.dtype, args.keep_base_encoder, args.overwrite
        )
    except FileExistsError as err:  # worded for the command line
        raise FileExistsError(str(err).replace("overwrite=True", "--overwrite")) from err
    print(summary.describe())
