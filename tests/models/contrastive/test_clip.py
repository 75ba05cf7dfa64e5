"""CLIP, and what MNM inherits from it, beyond the registry-wide tests of test_base.py: its
tiny config, the loss terms logged in training, recall and map metrics in validation and the
shipped configs. Both heads are trained once for the session (conftest's `contrastive_runs`);
their retrieval bank is tested in test_bank.py, MNM's own terms in test_mnm.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from text2brain.models import MODELS

HEADS = ("clip", "mnm")

#: CLIP's tiny config (model_configs.tiny_configs gathers it). Brain encoder 12x14x12 ->
#: 6x7x6 -> 3x3x3; 16-d embeddings.
TINY_CONFIGS = {
    "clip": lambda encoder: {
        "text": {"encoder": encoder, "pretrained": False},
        "brain": {"channels": [4, 8], "crop": [12, 14, 12], "offset": [0, 0, 0]},
        "embed_dim": 16,
        "retrieval_k": 5,
    }
}

pytestmark = pytest.mark.usefixtures("one_thread")


# -- training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HEADS)
def test_training_logs_each_term_and_stays_finite(
    contrastive_runs: dict[str, dict[str, Any]], name: str
) -> None:
    steps = contrastive_runs[name]["logged"]
    assert len(steps) == 3
    expected = {"train/loss", "train/contrastive", "train/logit_scale"}
    if name == "mnm":
        expected |= {
            "train/entailment", "train/hierarchy", "train/ordering", "train/curvature",
            "train/alpha_text", "train/alpha_brain", "train/dist0_text", "train/dist0_brain",
        }  # fmt: skip
    for step in steps:
        assert expected <= set(step)
        assert all(math.isfinite(step[k]) for k in expected)
    model = contrastive_runs[name]["model"]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if name == "mnm":
        last = steps[-1]
        weights = model.hparams
        total = (
            last["train/contrastive"]
            + weights.entailment_weight * last["train/entailment"]
            + weights.hierarchy_weight * last["train/hierarchy"]
            + weights.ordering_weight * last["train/ordering"]
        )
        assert last["train/loss"] == pytest.approx(total, rel=1e-4)
        assert 0.1 <= last["train/curvature"] <= 10.0


@pytest.mark.parametrize("name", HEADS)
def test_validation_logs_recall_and_map_metrics(
    contrastive_runs: dict[str, dict[str, Any]], name: str
) -> None:
    metrics = contrastive_runs[name]["metrics"]
    for key in ("val/dice_auc", "val/contrastive", "val/recall@10_t2b", "val/recall@100_b2t"):
        assert math.isfinite(metrics[key]), key
    # 8 validation pairs: every match is among the 10 nearest.
    assert metrics["val/recall@10_t2b"] == metrics["val/recall@10_b2t"] == 1.0


@pytest.mark.parametrize("name", HEADS)
def test_shipped_configs_parse(
    name: str, tmp_path: Path, shipped_config: Callable[[str], dict[str, Any]]
) -> None:
    printed = shipped_config(name)
    assert printed["model"]["class_path"] == MODELS[name]
    assert printed["model"]["init_args"]["text"]["encoder"] == printed["data"]["tokenizer"]
    # MNM's official scale: cached features, batch 4096, 200 epochs.
    assert printed["data"]["batch_size"] == 4096
    assert printed["trainer"]["max_epochs"] == 200
    init = printed["model"]["init_args"]
    assert init["brain"]["kind"] == "basis" and init["feature_sources"]
    assert printed["data"]["hierarchy_tables"] == (2 if name == "mnm" else 0)
    folders = {
        callback["init_args"].get("dirpath")
        for callback in printed["trainer"]["callbacks"]
        if callback["class_path"].endswith("ModelCheckpoint")
    }
    assert folders == {f"checkpoints/{name}"}  # never over another head's checkpoints
    assert not list(tmp_path.iterdir())
