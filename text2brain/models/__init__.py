"""The zoo: every head, registered by name.

`MODELS` maps a short name to the head's class path (its LightningModule). The name is the
head's checkpoint folder (`checkpoints/<name>/`); the registry is what the registry-wide tests
run over (with the tiny config in the head's own test module, tests/models/) and the only
classes a checkpoint may name when it is loaded for inference.

`INFERENCE_MODELS` maps a head to its Lightning-free inference class, which `load_predictor`
builds instead, so predicting never imports Lightning: the Text2Brain, text-ridge, retrieval
and ensemble heads (the released default model is an ensemble of the text-ridge and retrieval
heads) have one; the other heads are loaded through their LightningModule, imported on demand
(and an ensemble's members as they load alone).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from text2brain.models.base import BrainMapModule
    from text2brain.models.head import BrainMapHead

MODELS: dict[str, str] = {
    "text2brain": "text2brain.models.text2brain.Text2Brain",
    "clip": "text2brain.models.contrastive.CLIP",
    "mnm": "text2brain.models.contrastive.MNM",
    "corpus_mean": "text2brain.models.corpus_mean.CorpusMean",
    "neuroquery": "text2brain.models.neuroquery.NeuroQuery",
    "neurosynth": "text2brain.models.neurosynth.Neurosynth",
    "retrieval": "text2brain.models.retrieval.Retrieval",
    "text_ridge": "text2brain.models.text_ridge.TextRidge",
    "ensemble": "text2brain.models.ensemble.Ensemble",
}

INFERENCE_MODELS: dict[str, str] = {
    "text2brain": "text2brain.models.text2brain.torch_model.Text2BrainInference",
    "text_ridge": "text2brain.models.text_ridge.torch_model.TextRidgeInference",
    "retrieval": "text2brain.models.retrieval.torch_model.RetrievalInference",
    "ensemble": "text2brain.models.ensemble.torch_model.EnsembleInference",
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
    return _import(path)


def registered_name(class_path: str) -> str | None:
    """The short name of the head that `class_path` names, without importing anything.

    A checkpoint records the class's module path (`...text2brain.lightning_model.Text2Brain`),
    the registry its public path (`...text2brain.Text2Brain`): a class path names a head when
    it is the short name, the registered path, or the same class name in a module of the
    registered package.
    """
    for name, path in MODELS.items():
        package, _, cls = path.rpartition(".")
        module, _, recorded = class_path.rpartition(".")
        if class_path in (name, path) or (recorded == cls and module.startswith(package + ".")):
            return name
    return None


def inference_class(name: str) -> type[BrainMapHead]:
    """The class that `load_predictor` builds for the head `name`: Lightning-free if it has one."""
    return _import(INFERENCE_MODELS.get(name) or MODELS[name])


def _import(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)
