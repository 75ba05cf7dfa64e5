"""Tiny constructor arguments of every registered head, for the tests.

Every name in `text2brain.models.MODELS` needs an entry in `TINY_CONFIGS`: a function of the
tiny test encoder's folder (conftest's `tiny_bert`) returning the head's `init_args`, sized
for the 12x14x12 synthetic grid (synthetic.small_space) so a few training steps take well
under a second. tests/test_models.py runs every test over the registry and fails with
`missing_configs()` when a head has no tiny config.
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import Any

from text2brain.models import MODELS

InitArgs = dict[str, Any]


def _text2brain(encoder: str) -> InitArgs:
    # Decoder 1 -> 3 -> 7 -> 15 voxels a side (+2 from the last conv), cropped to the grid.
    return {
        "text": {"encoder": encoder, "pretrained": False, "freeze_layers": 2},
        "decoder": {
            "seed_shape": [1, 1, 1],
            "seed_channels": 8,
            "channels": [8, 4, 4],
            "output_crop": [12, 14, 12],
            "output_offset": [0, 0, 0],
        },
    }


#: A vocabulary for the synthetic corpus (tests/synthetic.py): its topics, words of its
#: titles and abstracts, and the phrases of the shared test texts; plus synonyms.
TINY_TERMS = [
    "vision", "audition", "motor", "memory", "working memory", "study", "healthy adults",
    "area", "cortex", "prefrontal cortex", "insula", "pain",
]  # fmt: skip
TINY_SYNONYMS = {"visual": "vision", "auditory": "audition", "memories": "memory"}


def _terms(encoder: str) -> InitArgs:
    return {"vocabulary": list(TINY_TERMS), "synonyms": dict(TINY_SYNONYMS)}


def _neuroquery(encoder: str) -> InitArgs:
    return {
        **_terms(encoder),
        "alphas": [0.1, 1.0, 10.0],
        "loo_voxels": None,
        "smoothing_components": 3,
        "nmf_iterations": 20,
    }


def _contrastive(encoder: str) -> InitArgs:
    # Brain encoder 12x14x12 -> 6x7x6 -> 3x3x3; 16-d embeddings.
    return {
        "text": {"encoder": encoder, "pretrained": False},
        "brain": {"channels": [4, 8], "crop": [12, 14, 12], "offset": [0, 0, 0]},
        "embed_dim": 16,
        "retrieval_k": 5,
    }


#: Registered name -> function(tiny encoder folder) -> init_args.
TINY_CONFIGS: dict[str, Callable[[str], InitArgs]] = {
    "text2brain": _text2brain,
    "clip": _contrastive,
    "mnm": _contrastive,
    "corpus_mean": lambda encoder: {},
    "neuroquery": _neuroquery,
    "neurosynth": _terms,
}


def missing_configs() -> list[str]:
    """Registered heads without a tiny config (should be empty)."""
    return sorted(set(MODELS) - set(TINY_CONFIGS))


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
    if name not in TINY_CONFIGS:
        raise KeyError(
            f"model {name!r} ({MODELS.get(name)}) is registered in text2brain.models.MODELS "
            "but has no tiny test config: add one to TINY_CONFIGS in tests/model_configs.py"
        )
    return TINY_CONFIGS[name](str(encoder))
