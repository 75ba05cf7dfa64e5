"""The text-ridge maths in plain torch: encoder embedding -> ridge readout + training-mean map.

`TextRidgeMaths` holds it once, for the LightningModule (`TextRidge`, which adds the fit) and
for `TextRidgeInference`, which `load_predictor` builds: predicting then needs no Lightning.
Both keep the same attributes (`net.text_encoder`, `mean_map`, `readout_*`, `alpha`), so
checkpoints and exports load into either.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from text2brain.brain import BrainSpace
from text2brain.models.encoders import TextEncoder
from text2brain.models.head import TRAINING_HPARAMS, BrainMapHead
from text2brain.models.readout import RidgeReadout
from text2brain.models.settings import TextEncoderSettings, as_settings
from text2brain.text import check_texts
from text2brain.validation import check_number


def checked_rank(rank: int | None) -> int | None:
    """The readout's rank, checked where either class is built: an export's model.json is
    outside its sha256 check, and a bad rank failed deep in torch (a RuntimeError)."""
    check_number(rank, "rank", 1, integer=True, optional=True)
    return rank


class TextRidgeMaths(RidgeReadout):
    """The text-ridge computation, mixed into a `BrainMapHead` (see TextRidge)."""

    text_settings: TextEncoderSettings
    rank: int | None
    inference_only: bool

    def build(self, space: BrainSpace) -> None:
        encoder = TextEncoder.from_settings(self.text_settings, inference=self.inference_only)
        encoder.requires_grad_(False)  # nothing is trained: a fixed function of the text
        self.net = nn.ModuleDict({"text_encoder": encoder})
        self.register_buffer("mean_map", torch.zeros(space.n_voxels))
        self.build_readout(encoder.dim, space.n_voxels, self.rank)
        self.register_buffer("alpha", torch.tensor(0.0))  # the chosen penalty, absolute

    def maps_of(self, embedding: Tensor) -> Tensor:
        """(batch, n_voxels) float32 maps of (batch, dim) embeddings: readout + mean map."""
        return self.readout_maps(embedding.to(self.readout_in.device)) + self.mean_map


class TextRidgeInference(TextRidgeMaths, BrainMapHead):
    """The text-ridge head for prediction only: what `load_predictor` builds, without
    Lightning. It takes the encoder and the rank; the fit's other arguments are ignored."""

    #: The head's name in messages (the registered LightningModule's).
    model_name = "TextRidge"
    ignored_hparams = (*TRAINING_HPARAMS, "sources", "alpha", "alpha_selection", "alpha_grid")

    def __init__(self, text: TextEncoderSettings | dict[str, Any] | None = None,
                 rank: int | None = 32) -> None:  # fmt: skip
        super().__init__()
        self.text_settings = as_settings(TextEncoderSettings, text)
        self.rank = checked_rank(rank)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        encoder = self.net.text_encoder
        tokens = encoder.tokenize(list(batch["text"]), self.text_settings.max_length)
        return self.maps_of(encoder(**tokens))

    @torch.inference_mode()
    def predict_texts(self, texts: list[str]) -> Tensor:
        return self.forward({"text": check_texts(texts, allow_empty=False)})
