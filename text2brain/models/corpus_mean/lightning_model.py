"""The corpus-mean baseline: the floor every model of the zoo must clear."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from text2brain.brain import BrainSpace
from text2brain.models.closed_form import ClosedFormModule
from text2brain.text import check_texts


class CorpusMean(ClosedFormModule):
    """Predicts the mean training article map for every text.

    Most peaks fall in the same few regions whatever the study is about, so this map already
    scores well above chance; a model that does not beat it has learnt nothing from the text.
    """

    def build(self, space: BrainSpace) -> None:
        self.register_buffer("mean_map", torch.zeros(space.n_voxels))

    def fit_closed_form(self, datamodule: Any) -> None:
        self.mean_map = self.training_mean_map().to(self.device)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.mean_map.expand(len(batch["text"]), -1).clone()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # Lightning leaves the key out when there are no hyper-parameters; loaders expect it.
        checkpoint.setdefault("hyper_parameters", {})

    @torch.inference_mode()
    def predict_texts(self, texts: list[str]) -> Tensor:
        return self.forward({"text": check_texts(texts)})
