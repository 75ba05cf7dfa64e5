"""Which models `text2brain serve` loads: `--model` specs, their names, loading them once.

A spec is ``NAME=PATH``, a ``PATH`` (a `.ckpt` file or an export folder; its name is the file
stem or folder name, and a checkpoint called best or last is named after its folder too, as
``clip-best``), or a released model's name (text2brain.releases: its folder's name, as
`DEFAULT_MODEL`, or its head's, as ``mnm``). No spec: the released default model.
Names are what the API's ``model=`` parameter and the page's selector use; a request never
names a file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from text2brain.releases import (
    DEFAULT_MODEL,
    RELEASE_NAME,
    UnknownReleaseError,
    describe_releases,
    resolve_release,
)

if TYPE_CHECKING:
    from text2brain.inference import Predictor

#: A model's name: what a URL carries (letters, digits, ".", "_", "-").
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Checkpoint stems that say nothing about the model alone.
GENERIC_STEMS = ("best", "last")


@dataclass(frozen=True)
class ModelSpec:
    """One model to load: its name, and its path (None: the released model)."""

    name: str
    path: Path | None


def parse_spec(spec: str) -> ModelSpec:
    """A `--model` argument as a `ModelSpec` (the path is checked when it is loaded)."""
    if not spec.strip():
        raise ValueError("--model is empty; give NAME=PATH, a PATH or " + DEFAULT_MODEL)
    name, sep, path = spec.partition("=")
    if sep and NAME.fullmatch(name) and path:
        return ModelSpec(name, Path(path).expanduser())
    if spec == DEFAULT_MODEL:
        return ModelSpec(DEFAULT_MODEL, None)
    if RELEASE_NAME.fullmatch(spec):  # a released model, by its name or its head's
        try:
            release = resolve_release(spec)
            return ModelSpec(release.name, release)
        except UnknownReleaseError:
            pass
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"--model {spec!r}: no such checkpoint or export folder; give NAME=PATH, a PATH "
            f"or a released model ({describe_releases()})"
        )
    return ModelSpec(default_name(path), path)


def default_name(path: Path) -> str:
    """A path's model name: its stem (a folder's name), with the folder for best/last."""
    stem = path.name if path.is_dir() else path.stem
    if stem in GENERIC_STEMS and path.parent.name:
        stem = f"{path.resolve().parent.name}-{stem}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:64]
    if not NAME.fullmatch(name):
        raise ValueError(f"cannot name the model at {str(path)!r}; give it one as NAME=PATH")
    return name


def parse_specs(specs: Sequence[str]) -> list[ModelSpec]:
    """Every `--model` argument parsed (none: the released model); names must be unique."""
    parsed = [parse_spec(spec) for spec in specs] or [ModelSpec(DEFAULT_MODEL, None)]
    names = [spec.name for spec in parsed]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(
            f"two models are named {', '.join(map(repr, twice))}; name them apart as NAME=PATH"
        )
    return parsed


def load_models(
    specs: Sequence[ModelSpec], device: str | None = None, precision: str = "auto"
) -> dict[str, Predictor]:
    """name -> loaded `Predictor`, in the order given (the first is the page's default)."""
    from text2brain.inference import load_predictor

    return {spec.name: load_predictor(spec.path, device, precision) for spec in specs}
