"""The corpus-mean head: its tiny config and its one map for every text."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from synthetic import tiny_datamodule

#: The corpus-mean head's tiny config (model_configs.tiny_configs gathers it): no arguments.
TINY_CONFIGS = {"corpus_mean": lambda encoder: {}}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_corpus_mean_predicts_the_training_mean_for_any_text(
    closed_form_heads: dict[str, Any], data_files: dict[str, str]
) -> None:
    datamodule = tiny_datamodule(data_files)
    _, maps = datamodule.article_maps("train")
    maps = closed_form_heads["corpus_mean"].predict_texts(["vision", "anything at all"])
    expected = torch.from_numpy(np.asarray(datamodule.article_maps("train")[1]).mean(0))
    assert torch.allclose(maps, expected.expand(2, -1).float(), atol=1e-6)
