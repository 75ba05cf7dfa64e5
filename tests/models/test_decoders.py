"""`Text2BrainDecoder` (text2brain.models.decoders): shapes, placement, options and bf16."""

from __future__ import annotations

import pytest
import torch

from text2brain.models.decoders import Text2BrainDecoder

# -- Text2BrainDecoder -------------------------------------------------------------------------


def test_decoder_default_shapes() -> None:
    decoder = Text2BrainDecoder(32)
    shapes: list[tuple[int, ...]] = []
    for block in [*decoder.blocks, decoder.head]:
        block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    out = decoder(torch.randn(3, 32))
    assert out.shape == (3, 46, 55, 46)
    assert shapes == [(32, 9, 11, 9), (16, 19, 23, 19), (8, 39, 47, 39), (1, 41, 49, 41)]
    assert decoder.decoded_shape == (41, 49, 41)
    inside = torch.zeros(46, 55, 46, dtype=torch.bool)
    inside[3:-3, 3:-4, :-6] = True  # Text2Brain's placement
    assert (out[:, ~inside] == 0).all()
    assert (out[:, inside] != 0).float().mean() > 0.99


def test_decoder_choices_are_validated() -> None:
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*'hardtanh', 'relu'"):
        Text2BrainDecoder(32, activation="swish")
    with pytest.raises(ValueError, match=r"unknown norm 'layer'.*'batch', 'instance'"):
        Text2BrainDecoder(32, norm="layer")
    with pytest.raises(ValueError, match="does not fit"):
        Text2BrainDecoder(32, output_offset=[7, 3, 0])
    with pytest.raises(ValueError, match="larger than the decoded volume"):
        Text2BrainDecoder(32, output_crop=[42, 48, 40])
    with pytest.raises(ValueError, match="in_dim"):
        Text2BrainDecoder(0)


def test_decoder_bf16_autocast_backward() -> None:
    decoder = Text2BrainDecoder(32)
    z = torch.randn(4, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = decoder(z)
    out.float().square().mean().backward()
    assert out.shape == (4, 46, 55, 46)
    assert torch.isfinite(z.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in decoder.parameters())


def test_decoder_other_configs() -> None:
    small = Text2BrainDecoder(
        16,
        grid_shape=[20, 24, 20],
        seed_shape=[2, 2, 2],
        seed_channels=4,
        channels=[6, 3],
        norm="group",
        activation="gelu",
        output_crop=None,
        output_offset=None,
        output_norm_act=True,
    )
    assert small.decoded_shape == (13, 13, 13)
    out = small(torch.randn(2, 16))
    assert out.shape == (2, 20, 24, 20)
    assert small.output_offset == (3, 5, 3)  # centred
    inside = torch.zeros(20, 24, 20, dtype=torch.bool)
    inside[3:16, 5:18, 3:16] = True  # the 13^3 output, centred
    assert (out[:, ~inside] == 0).all() and (out[:, inside] != 0).any()
    with pytest.raises(ValueError, match="does not fit"):
        Text2BrainDecoder(
            16, grid_shape=[12, 12, 12], seed_shape=[2, 2, 2], channels=[4, 4], output_crop=None
        )
