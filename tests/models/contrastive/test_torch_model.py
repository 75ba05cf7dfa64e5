"""The geometries of the contrastive nets (`text2brain.models.contrastive.torch_model`): MNM's
entailment direction option."""

from __future__ import annotations

import pytest
import torch

from text2brain import lorentz
from text2brain.models.contrastive import losses
from text2brain.models.contrastive.torch_model import LorentzGeometry


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
