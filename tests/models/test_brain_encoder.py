"""`BrainEncoder` (text2brain.models.brain_encoder), the contrastive heads' map encoder."""

from __future__ import annotations

import pytest
import torch

from text2brain.models.brain_encoder import BrainEncoder

# -- BrainEncoder ------------------------------------------------------------------------------


def test_brain_encoder() -> None:
    encoder = BrainEncoder(24)
    assert encoder.feature_shape == (32, 5, 6, 5)
    volume = torch.randn(3, 46, 55, 46, requires_grad=True)
    out = encoder(volume)
    assert out.shape == (3, 24)
    out.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())
    outside = torch.ones(46, 55, 46, dtype=torch.bool)
    outside[3:-3, 3:-4, :-6] = False
    assert (volume.grad[:, outside] == 0).all()  # only the decoder's box is read
    with pytest.raises(ValueError, match="expected volumes"):
        encoder(torch.randn(3, 40, 48, 40))
    with pytest.raises(ValueError, match="below one voxel"):
        BrainEncoder(8, channels=[4] * 7)
