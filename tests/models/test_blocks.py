"""The building blocks of the torch modules (text2brain.models.blocks)."""

from __future__ import annotations

import pytest
import torch

from text2brain.models.blocks import ACTIVATIONS, NORMS, make_activation, make_norm


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_norm_and_activation_factories(norm: str, activation: str) -> None:
    x = torch.randn(2, 8, 3, 3, 3)
    assert make_activation(activation)(make_norm(norm, 8)(x)).shape == x.shape
