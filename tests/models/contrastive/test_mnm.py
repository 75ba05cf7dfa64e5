"""MNM's own terms beyond CLIP's (test_clip.py): its tiny config, bad options and the
warning when the learnable curvature collapses."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from model_configs import tiny_init_args, tiny_model
from synthetic import small_space

#: MNM's tiny config (model_configs.tiny_configs gathers it): CLIP's, since MNM is CLIP plus
#: its own loss terms and geometry, left at their defaults here.
TINY_CONFIGS = {"mnm": lambda encoder: tiny_init_args("clip", encoder)}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"entailment_parent": "map"}, "entailment_parent must be one of"),
        ({"logits": "cosine"}, "logits must be one of"),
        ({"hierarchy_weight": -1.0}, "loss weights must be >= 0"),
        ({"curvature": 0.0}, "curvature and min_radius must be > 0"),
        ({"retrieval_k": 0}, "retrieval_k must be a positive int"),
        ({"retrieval_temperature": 0.0}, "retrieval_temperature must be > 0"),
    ],
)
def test_mnm_rejects_bad_options(tiny_bert: Path, overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_model("mnm", tiny_bert, **overrides)


def test_curvature_collapse_is_warned_once(tiny_bert: Path) -> None:
    model = tiny_model("mnm", tiny_bert)
    model.set_space(small_space())
    with torch.no_grad():
        model.net.geometry.curvature.log_value.fill_(-100.0)
    model.net.geometry.curvature()  # clamps to the lower bound, as every use does
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.on_train_batch_end(None, None, 0)
        model.on_train_batch_end(None, None, 1)
    assert len(caught) == 1
    assert "curvature reached its lower bound c = 0.1" in str(caught[0].message)
