"""The released models: export folders installed with the package, found by name.

A release is a folder written by `text2brain export` in the repository's checkpoints/ folder,
installed as the package `text2brain.checkpoints` (see checkpoints/README.md). Its name is the
folder's (`text-ridge-minilm`, `mnm-minilm`); the registered name of its head (`text_ridge`,
`mnm`) names it too when exactly one release has that head, so `load_predictor("mnm")` and
`text2brain query --model mnm` need no path. Kept apart from text2brain.checkpoint so that
listing the releases (in a command's help) imports no torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

#: Name of the released default model (`load_predictor()`, `text2brain query` without a model).
DEFAULT_MODEL = "ensemble-minilm"
#: The package whose export folders are the released models (the repository's checkpoints/).
RELEASES_PACKAGE = "text2brain.checkpoints"
#: What a released model's name may look like (no path separator: a name is never a path).
RELEASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: The config file that makes a folder an export (text2brain.export).
CONFIG_NAME = "model.json"


def _releases_dir() -> Path:
    from importlib.resources import files

    return Path(str(files(RELEASES_PACKAGE)))


#: Where the released models are installed: each export folder in it is one release.
RELEASES_DIR: Path = _releases_dir()
#: The released default model that `load_predictor()` and `text2brain query` use.
DEFAULT_CHECKPOINT: Path = RELEASES_DIR / DEFAULT_MODEL


class UnknownReleaseError(ValueError):
    """A name that is no released model (the message lists the released ones)."""


def released_models() -> dict[str, Path]:
    """Name -> folder of every released model: the export folders in `RELEASES_DIR`."""
    if not RELEASES_DIR.is_dir():
        return {}
    return {
        folder.name: folder
        for folder in sorted(RELEASES_DIR.iterdir())
        if folder.is_dir() and (folder / CONFIG_NAME).is_file()
    }


def release_head(folder: Path) -> str | None:
    """The registered name of the head an export folder holds (None: unreadable, unknown)."""
    from text2brain.models import registered_name

    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        class_path = config.get("class_path") or config["text2brain"].get("class_path")
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None
    return registered_name(class_path) if isinstance(class_path, str) else None


def describe_releases(releases: dict[str, Path] | None = None) -> str:
    """The released models as "name (head), ...", for messages and help texts."""
    releases = released_models() if releases is None else releases
    if not releases:
        return "none is installed"
    return ", ".join(
        f"{name} ({release_head(f) or 'unknown head'})" for name, f in releases.items()
    )


def resolve_release(name: str) -> Path:
    """The folder of a released model, named by its folder or by its head's registered name.

    "mnm-minilm" is that folder; "mnm" is the one release whose head is registered as mnm.

    Raises:
        UnknownReleaseError (a ValueError): no release of that name or head, or several of
            that head; the message lists the releases.
    """
    releases = released_models()
    if name in releases:
        return releases[name]
    of_head = [release for release, folder in releases.items() if release_head(folder) == name]
    if len(of_head) == 1:
        return releases[of_head[0]]
    if of_head:
        raise UnknownReleaseError(
            f"several released models have the head {name!r} ({', '.join(of_head)}): "
            "name one of them"
        )
    raise UnknownReleaseError(
        f"no released model is named {name!r} or has it as its head; released models: "
        f"{describe_releases(releases)}"
    )
