"""Text2Brain in plain torch: text encoder -> embedding -> 3-D transposed CNN (+ readout, mean).

`Text2BrainMaths` holds the maths once, for both the LightningModule (`Text2Brain`, which adds
training) and `Text2BrainInference`, which `load_predictor` builds: predicting maps then needs
no Lightning. Both keep the same attributes (`net`, `mean_map`, `readout_*`), so their state
dicts, and every checkpoint and export, are interchangeable.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from text2brain.brain import BrainSpace
from text2brain.models.decoders import Text2BrainDecoder
from text2brain.models.encoders import DEFAULT_ENCODER, TextEncoder
from text2brain.models.head import BrainMapHead

TARGET_NORMALISATIONS = ("none", "max")
READOUTS = ("none", "ridge")


class Text2BrainNet(nn.Module):
    """Tokens -> brain volume (batch, *grid_shape); zero outside the decoder's output box."""

    def __init__(
        self,
        text_encoder: TextEncoder,
        grid_shape: Sequence[int],
        seed_shape: Sequence[int] = (4, 5, 4),
        seed_channels: int = 64,
        channels: Sequence[int] = (32, 16, 8),
        dropout: float = 0.5,
        norm: str = "batch",
        activation: str = "hardtanh",
        output_crop: Sequence[int] | None = (40, 48, 40),
        output_offset: Sequence[int] | None = (3, 3, 0),
        output_norm_act: bool = False,
    ) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.decoder = Text2BrainDecoder(
            in_dim=text_encoder.dim,
            grid_shape=tuple(grid_shape),
            seed_shape=tuple(seed_shape),
            seed_channels=seed_channels,
            channels=tuple(channels),
            dropout=dropout,
            norm=norm,
            activation=activation,
            output_crop=None if output_crop is None else tuple(output_crop),
            output_offset=None if output_offset is None else tuple(output_offset),
            output_norm_act=output_norm_act,
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


class Text2BrainMaths:
    """The Text2Brain computation, mixed into a `BrainMapHead` that has `hparams` (see Text2Brain).

    texts -> `text_embedding` (the encoder's tokens and vector) -> `masked_maps` (decoder + ridge
    readout + training-mean map). A mixin rather than a module of its own, so the weights stay
    where checkpoints have them (`net.*`, `mean_map`, `readout_*`).
    """

    hparams: Any
    net: Text2BrainNet | None
    mask_index: Tensor

    def build(self, space: BrainSpace) -> None:
        hp = self.hparams
        text_encoder = TextEncoder.from_hparams(hp, inference=self.inference_only)
        self.net = Text2BrainNet(
            text_encoder,
            grid_shape=space.shape,
            seed_shape=hp.seed_shape or (4, 5, 4),
            seed_channels=hp.seed_channels,
            channels=hp.channels or (32, 16, 8),
            dropout=hp.dropout,
            norm=hp.norm,
            activation=hp.activation,
            output_crop=hp.output_crop or (40, 48, 40),
            output_offset=hp.output_offset or (3, 3, 0),
            output_norm_act=hp.output_norm_act,
        )
        if hp.residual:
            self.register_buffer("mean_map", torch.zeros(space.n_voxels))
            output = self.net.decoder.head[0]
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)
        if hp.readout == "ridge":
            rank = min(hp.readout_rank or text_encoder.dim, text_encoder.dim)
            self.register_buffer("readout_in", torch.zeros(text_encoder.dim, rank))
            self.register_buffer("readout_out", torch.zeros(rank, space.n_voxels))
            self.register_buffer("readout_bias", torch.zeros(space.n_voxels))

    def text_embedding(self, batch: dict[str, Any]) -> Tensor:
        """(batch, dim) text embeddings of a batch (its `tokens`, else its raw `text`)."""
        encoder = self.net.text_encoder
        tokens = batch.get("tokens") or encoder.tokenize(batch["text"], self.hparams.max_length)
        return encoder(**tokens)

    def masked_maps(self, embedding: Tensor) -> Tensor:
        """(batch, n_voxels) float32 maps from text embeddings: decoder + readout + mean map."""
        maps = self.to_masked(self.net.decoder(embedding)).float()
        if self.hparams.readout == "ridge":
            maps = (
                maps + (embedding.float() @ self.readout_in) @ self.readout_out + self.readout_bias
            )
        return maps + self.mean_map if self.hparams.residual else maps

    @torch.inference_mode()
    def predict_texts(self, texts: list[str]) -> Tensor:
        return self.masked_maps(self.text_embedding({"text": texts}))


class Text2BrainInference(Text2BrainMaths, BrainMapHead):
    """The Text2Brain head for prediction only: what `load_predictor` builds, without Lightning.

    Takes the hyper-parameters of `Text2Brain` except its optimisation ones (`TRAINING_HPARAMS`,
    which loading drops); tests/test_models.py checks that the two signatures agree.
    """

    #: The head's name in messages (the registered LightningModule's).
    model_name = "Text2Brain"

    def __init__(
        self,
        encoder: str = DEFAULT_ENCODER,
        pooling: str = "mean",
        freeze_embeddings: bool = False,
        freeze_layers: int = 0,
        pretrained: bool = True,
        max_length: int = 128,
        target_normalisation: str = "none",
        residual: bool = True,
        readout: str = "none",
        readout_rank: int | None = None,
        seed_shape: list[int] | None = None,
        seed_channels: int = 64,
        channels: list[int] | None = None,
        dropout: float = 0.5,
        norm: str = "batch",
        activation: str = "hardtanh",
        output_crop: list[int] | None = None,
        output_offset: list[int] | None = None,
        output_norm_act: bool = False,
    ) -> None:
        super().__init__()
        check_options(target_normalisation, readout, readout_rank)
        hparams = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.hparams = SimpleNamespace(**hparams)
        self.net = None

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.masked_maps(self.text_embedding(batch))
