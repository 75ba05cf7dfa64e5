"""Target transforms (text2brain.models.targets): monotone, sign-preserving, named clearly."""

from __future__ import annotations

import pytest
import torch

from text2brain.models.targets import parse_transform, transform_targets


@pytest.mark.parametrize("spec", ["none", "sqrt", "power:0.25", "power:1", "log1p:100"])
def test_transforms_keep_each_maps_ranking_and_range(spec: str) -> None:
    maps = torch.rand(5, 300) * 2 - 1
    maps[:, :10] = 0.0
    out = transform_targets(maps, spec)
    assert out.shape == maps.shape
    assert torch.equal(out.sign(), maps.sign())
    assert (out.abs() <= 1 + 1e-6).all()
    # Monotone: sorting the map sorts the transformed map the same way.
    order = maps.argsort(dim=1)
    assert (out.gather(1, order).diff(dim=1) >= 0).all()


def test_known_values() -> None:
    x = torch.tensor([0.0, 0.0625, 1.0, -0.0625])
    torch.testing.assert_close(transform_targets(x, "power:0.25"), torch.tensor([0, 0.5, 1, -0.5]))
    torch.testing.assert_close(transform_targets(x, "sqrt"), torch.tensor([0, 0.25, 1, -0.25]))
    assert transform_targets(x, "none") is x
    assert parse_transform(" power:0.5 ") == ("power", 0.5)


@pytest.mark.parametrize("spec", ["power", "power:0", "power:2", "log1p:-1", "cube", "sqrt:2", 3])
def test_bad_names_are_refused_with_the_choices(spec: object) -> None:
    with pytest.raises(ValueError, match="target_transform"):
        parse_transform(spec)  # type: ignore[arg-type]
