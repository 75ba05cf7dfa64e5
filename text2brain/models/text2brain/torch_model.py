"""Text2Brain in plain torch: text encoder -> embedding -> 3-D transposed CNN (+ readout, mean).

`Text2BrainMaths` holds the maths once, for both the LightningModule (`Text2Brain`, which adds
training) and `Text2BrainInference`, which `load_predictor` builds: predicting maps then needs
no Lightning. Both keep the same attributes (`net`, `mean_map`, `readout_*`), so their state
dicts, and every checkpoint and export, are interchangeable.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from text2brain.brain import BrainSpace
from text2brain.models.decoders import Text2BrainDecoder
from text2brain.models.encoders import TextEncoder
from text2brain.models.head import BrainMapHead
from text2brain.models.readout import RidgeReadout
from text2brain.models.settings import (
    DecoderSettings,
    TextEncoderSettings,
    as_settings,
)

TARGET_NORMALISATIONS = ("none", "max")
READOUTS = ("none", "ridge")


class Text2BrainNet(nn.Module):
    """Tokens -> brain volume (batch, *grid_shape); zero outside the decoder's output box."""

    def __init__(
        self,
        text_encoder: TextEncoder,
        grid_shape: Sequence[int],
        decoder: DecoderSettings | None = None,
    ) -> None:
        super().__init__()
        settings = as_settings(DecoderSettings, decoder)
        self.text_encoder = text_encoder
        self.decoder = Text2BrainDecoder(
            in_dim=text_encoder.dim,
            grid_shape=tuple(grid_shape),
            seed_shape=tuple(settings.seed_shape),
            seed_channels=settings.seed_channels,
            channels=tuple(settings.channels),
            dropout=settings.dropout,
            norm=settings.norm,
            activation=settings.activation,
            output_crop=tuple(settings.output_crop),
            output_offset=tuple(settings.output_offset),
            output_norm_act=settings.output_norm_act,
        )
        # Channels-last 3-D convolutions: 1.5-2x faster on CPU (oneDNN), the layout tensor
        # cores prefer under mixed precision on GPUs. Set here so that training, a loaded
        # checkpoint and inference compute the same sums in the same order.
        self.decoder.to(memory_format=torch.channels_last_3d)

    def forward(self, tokens: dict[str, Tensor]) -> Tensor:
        return self.decoder(self.text_encoder(**tokens))


def check_options(target_normalisation: str, readout: str, readout_rank: int | None) -> None:
    """Refuse the option values that Text2Brain does not know (both classes check them)."""
    if target_normalisation not in TARGET_NORMALISATIONS:
        raise ValueError(
            f"target_normalisation must be one of {TARGET_NORMALISATIONS}, "
            f"got {target_normalisation!r}"
        )
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    if readout_rank is not None and (
        isinstance(readout_rank, bool) or not isinstance(readout_rank, int) or readout_rank < 1
    ):
        raise ValueError(f"readout_rank must be a positive int or null, got {readout_rank!r}")


class Text2BrainMaths(RidgeReadout):
    """The Text2Brain computation, mixed into a `BrainMapHead` (see Text2Brain).

    texts -> `text_embedding` (the encoder's tokens and vector) -> `masked_maps` (decoder + ridge
    readout + training-mean map). A mixin rather than a module of its own, so the weights stay
    where checkpoints have them (`net.*`, `mean_map`, `readout_*`).
    """

    net: Text2BrainNet | None
    mask_index: Tensor
    inference_only: bool

    def configure(
        self,
        text: TextEncoderSettings | dict[str, Any] | None,
        decoder: DecoderSettings | dict[str, Any] | None,
        target_normalisation: str,
        residual: bool,
        readout: str,
        readout_rank: int | None,
    ) -> None:
        """Check and keep the head's settings (both classes' constructors call this)."""
        check_options(target_normalisation, readout, readout_rank)
        self.text_settings = as_settings(TextEncoderSettings, text)
        self.decoder_settings = as_settings(DecoderSettings, decoder)
        self.target_normalisation = target_normalisation
        self.residual = residual
        self.readout = readout
        self.readout_rank = readout_rank
        self.net = None

    def build(self, space: BrainSpace) -> None:
        text_encoder = TextEncoder.from_settings(self.text_settings, inference=self.inference_only)
        self.net = Text2BrainNet(text_encoder, space.shape, self.decoder_settings)
        if self.residual:
            self.register_buffer("mean_map", torch.zeros(space.n_voxels))
            output = self.net.decoder.head[0]
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)
        if self.readout == "ridge":
            self.build_readout(text_encoder.dim, space.n_voxels, self.readout_rank)

    def text_embedding(self, batch: dict[str, Any]) -> Tensor:
        """(batch, dim) text embeddings of a batch (its `tokens`, else its raw `text`)."""
        encoder = self.net.text_encoder
        tokens = batch.get("tokens") or encoder.tokenize(
            batch["text"], self.text_settings.max_length
        )
        return encoder(**tokens)

    def masked_maps(self, embedding: Tensor) -> Tensor:
        """(batch, n_voxels) float32 maps from text embeddings: decoder + readout + mean map."""
        maps = self.to_masked(self.net.decoder(embedding)).float()
        if self.readout == "ridge":
            maps = maps + self.readout_maps(embedding)
        return maps + self.mean_map if self.residual else maps

    @torch.inference_mode()
    def predict_texts(self, texts: list[str]) -> Tensor:
        return self.masked_maps(self.text_embedding({"text": texts}))


class Text2BrainInference(Text2BrainMaths, BrainMapHead):
    """The Text2Brain head for prediction only: what `load_predictor` builds, without Lightning.

    Built from a checkpoint's hyper-parameters, which hold every argument of `Text2Brain`; it
    takes them all but the optimisation (`optim`, which loading drops), as `configure` names
    them.
    """

    #: The head's name in messages (the registered LightningModule's).
    model_name = "Text2Brain"

    def __init__(self, **hparams: Any) -> None:
        super().__init__()
        self.configure(**hparams)
        self.hparams = SimpleNamespace(**hparams)

    # What the constructor takes, for checks and help: exactly `configure`'s arguments.
    __init__.__signature__ = inspect.signature(Text2BrainMaths.configure)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.masked_maps(self.text_embedding(batch))
