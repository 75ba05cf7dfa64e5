"""Text2Brain as a plain torch module: text encoder -> projection -> 3-D transposed CNN."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from text2brain.models.decoders import Text2BrainDecoder
from text2brain.models.encoders import TextEncoder


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

    def forward(self, tokens: dict[str, Tensor]) -> Tensor:
        return self.decoder(self.text_encoder(**tokens))
