"""The contrastive nets (`text2brain.models.contrastive.torch_model`): MNM's entailment
direction option, and how the brain encoder's input maps are scaled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from text2brain import lorentz
from text2brain.models.contrastive import losses
from text2brain.models.contrastive.torch_model import (
    ContrastiveNet,
    CosineGeometry,
    LorentzGeometry,
)
from text2brain.models.encoders import TextEncoder
from text2brain.models.settings import BrainEncoderSettings
from text2brain.models.targets import MASS_TOTAL, encoder_input


# -- the entailment direction ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["distance", "angle"])
def test_entailment_parent_option(kind: str) -> None:
    torch.manual_seed(0)
    text, brain = torch.randn(6, 8), torch.randn(6, 8)
    by_parent = {p: LorentzGeometry(8, logits=kind, parent=p) for p in ("text", "brain")}
    points = {p: (g.embed(text, "text"), g.embed(brain, "brain")) for p, g in by_parent.items()}
    t, b = points["text"]
    assert torch.equal(t, points["brain"][0]) and torch.equal(b, points["brain"][1])
    c = by_parent["text"].curvature()
    torch.testing.assert_close(
        by_parent["text"].entailment_loss(t, b), losses.entailment_loss(t, b, c)
    )
    torch.testing.assert_close(
        by_parent["brain"].entailment_loss(t, b), losses.entailment_loss(b, t, c)
    )
    if kind == "angle":  # the cone apex is the parent in the logits too
        torch.testing.assert_close(
            by_parent["brain"].cross_distance(t, b),
            lorentz.pairwise_exterior_angle(b, t, c).transpose(0, 1),
        )
        torch.testing.assert_close(
            by_parent["text"].cross_distance(t, b), lorentz.pairwise_exterior_angle(t, b, c)
        )
    else:
        torch.testing.assert_close(
            by_parent["brain"].cross_distance(t, b), by_parent["text"].cross_distance(t, b)
        )
    assert not torch.allclose(
        by_parent["text"].entailment_loss(t, b), by_parent["brain"].entailment_loss(t, b)
    )


# -- what the brain encoder reads ------------------------------------------------------------------
def test_mass_input_scale_keeps_how_concentrated_a_map_is() -> None:
    torch.manual_seed(0)
    table = torch.zeros(1, 100)
    table[0, :5] = 1.0  # one concentrated map
    article = (table + torch.roll(table, 50, dims=1)) / 2  # the average of two such maps
    by_max = encoder_input(torch.cat([table, article]), "max")
    assert torch.equal(by_max.amax(1), torch.ones(2))  # shape only: both peak at 1
    by_mass = encoder_input(torch.cat([table, 3.0 * article]), "mass")
    torch.testing.assert_close(by_mass.sum(1), torch.full((2,), MASS_TOTAL))
    assert by_mass[0].max() == 2 * by_mass[1].max()  # the spread-out map has lower values
    assert torch.equal(encoder_input(torch.zeros(1, 10), "mass"), torch.zeros(1, 10))


def test_unknown_input_scale_is_an_error_that_names_the_choices(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="input_scale must be one of .*'mass'"):
        encoder_input(torch.ones(1, 4), "sum")
    with pytest.raises(ValueError, match="brain.input_scale must be one of"):
        ContrastiveNet(
            TextEncoder(str(tiny_bert)),
            CosineGeometry(),
            (4, 4, 4),
            torch.arange(64),
            brain=BrainEncoderSettings(channels=(2,), input_scale="sum"),
        )
