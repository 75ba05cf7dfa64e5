"""The zoo: every head, registered by name.

`MODELS` maps a short name to the head's class path. The registry is what the model tests run
over (a new head is tested by adding it here and a tiny config in tests/model_configs.py) and
the only classes a checkpoint may name when it is loaded for inference.
"""

from __future__ import annotations

import importlib

from text2brain.models.base import BrainMapModule

MODELS: dict[str, str] = {
    "text2brain": "text2brain.models.text2brain.Text2Brain",
    "clip": "text2brain.models.contrastive.CLIP",
    "mnm": "text2brain.models.contrastive.MNM",
    "corpus_mean": "text2brain.models.corpus_mean.CorpusMean",
    "neuroquery": "text2brain.models.neuroquery.NeuroQuery",
    "neurosynth": "text2brain.models.neurosynth.Neurosynth",
}


def model_class(name_or_class_path: str) -> type[BrainMapModule]:
    """The registered head named `name_or_class_path` (a short name or its class path)."""
    by_path = {path: path for path in MODELS.values()}
    path = MODELS.get(name_or_class_path) or by_path.get(name_or_class_path)
    if path is None:
        raise ValueError(
            f"{name_or_class_path!r} is not a registered text2brain model; known: "
            f"{sorted(MODELS)} ({sorted(MODELS.values())})"
        )
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)
