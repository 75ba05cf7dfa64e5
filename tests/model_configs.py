"""Tiny constructor arguments of every registered head, gathered from the heads' test modules.

Every name in `text2brain.models.MODELS` needs a tiny config: a function of the tiny test
encoder's folder (conftest's `tiny_bert`) returning the head's `init_args`, sized for the
12x14x12 synthetic grid (synthetic.small_space) so a few training steps take well under a
second. A head declares it in its own test module under tests/models/, as a module-level

    TINY_CONFIGS = {"<registered name>": lambda encoder: {...}}

and `tiny_configs()` finds it there: it imports every tests/models/**/test_*.py that mentions
TINY_CONFIGS and merges their dicts. Adding a head to the zoo thus needs nothing else in tests/:
tests/models/test_base.py runs every registry-wide test over it, and fails with
`missing_configs()` when a head has no tiny config.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

from text2brain.models import MODELS, model_class

InitArgs = dict[str, Any]
TinyConfig = Callable[[str], InitArgs]

#: The folder of the heads' test modules, where the tiny configs are declared.
MODEL_TESTS = Path(__file__).resolve().parent / "models"

#: A vocabulary for the synthetic corpus (tests/synthetic.py): its topics, words of its
#: titles and abstracts, and the phrases of the shared test texts; plus synonyms.
TINY_TERMS = [
    "vision", "audition", "motor", "memory", "working memory", "study", "healthy adults",
    "area", "cortex", "prefrontal cortex", "insula", "pain",
]  # fmt: skip
TINY_SYNONYMS = {"visual": "vision", "auditory": "audition", "memories": "memory"}


def tiny_terms(encoder: str) -> InitArgs:
    """The vocabulary arguments of a term-based head (`TINY_TERMS`, `TINY_SYNONYMS`)."""
    return {"vocabulary": list(TINY_TERMS), "synonyms": dict(TINY_SYNONYMS)}


def _module_name(path: Path) -> str:
    """The name pytest imports a test module under (its "prepend" import mode).

    The module's folders that hold an __init__.py make its package; the first one above them
    goes on sys.path.
    """
    parts, folder = [path.stem], path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return ".".join(parts)


@functools.cache
def _declared() -> dict[str, tuple[TinyConfig, str]]:
    """Registered name -> (tiny config, name of the test module that declares it)."""
    found: dict[str, tuple[TinyConfig, str]] = {}
    for path in sorted(MODEL_TESTS.rglob("test_*.py")):
        if "TINY_CONFIGS" not in path.read_text(encoding="utf-8"):
            continue
        module = importlib.import_module(_module_name(path))
        for name, config in getattr(module, "TINY_CONFIGS", {}).items():
            if name in found:
                raise ValueError(
                    f"tiny config of {name!r} in both {found[name][1]} and {module.__name__}"
                )
            found[name] = config, module.__name__
    return found


def tiny_configs() -> dict[str, TinyConfig]:
    """Registered name -> function(tiny encoder folder) -> init_args, from the test modules.

    Each module is imported under pytest's own name for it, so pytest collects the same module
    object later; a name declared by two modules is an error.
    """
    return {name: config for name, (config, _) in _declared().items()}


def tiny_config_modules() -> dict[str, str]:
    """Registered name -> the test module that declares its tiny config (as pytest names it)."""
    return {name: module for name, (_, module) in _declared().items()}


def __getattr__(name: str) -> Any:
    if name == "TINY_CONFIGS":  # the merged dict, as this module held it before discovery
        return tiny_configs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def missing_configs() -> list[str]:
    """Registered heads without a tiny config (should be empty)."""
    return sorted(set(MODELS) - set(tiny_configs()))


def merged(init_args: InitArgs, overrides: InitArgs) -> InitArgs:
    """`init_args` with `overrides` on top; a settings group (a dict) is merged field by field."""
    result = dict(init_args)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = {**result[key], **value}
        else:
            result[key] = value
    return result


def tiny_init_args(name: str, encoder: str | PathLike[str]) -> InitArgs:
    """The tiny `init_args` of the head registered as `name`, for the encoder folder given."""
    configs = tiny_configs()
    if name not in configs:
        registered = f"registered as {MODELS[name]}" if name in MODELS else "not registered"
        raise KeyError(
            f"model {name!r} ({registered} in text2brain.models.MODELS) has no tiny test "
            f"config: add TINY_CONFIGS = {{{name!r}: lambda encoder: {{...}}}} to its test "
            "module under tests/models/"
        )
    return configs[name](str(encoder))


def tiny_model(name: str, encoder: str | PathLike[str] = "", **overrides: Any) -> Any:
    """The head registered as `name`, built from its tiny config with `overrides` merged in."""
    return model_class(name)(**merged(tiny_init_args(name, encoder), overrides))
