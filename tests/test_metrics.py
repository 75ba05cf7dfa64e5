"""Tests for text2brain.metrics against brute-force references written with plain numpy."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from text2brain.metrics import (
    DICE_THRESHOLDS,
    DiceAt,
    DiceAUC,
    VoxelPearson,
    dice_auc_from_curve,
    dice_curve,
    map_metrics,
    pairwise_pearson,
    threshold_k,
    tiebreak_order,
    voxel_pearson,
    voxel_ranks,
)

# --------------------------------------------------------------------------------------------
# Brute-force reference
# --------------------------------------------------------------------------------------------


def brute_k(fraction: float, n: int) -> int:
    """Round half up on the decimal value, at least 1."""
    return max(1, int(Decimal(str(fraction)) * n + Decimal("0.5")))


def brute_top(values: np.ndarray, k: int, order: np.ndarray | None) -> set[int]:
    """Top-k voxel indices; ties broken by position in ``order`` (earlier ranks higher)."""
    n = len(values)
    position = np.arange(n) if order is None else np.argsort(order)  # position[v] in order
    ranked = sorted(range(n), key=lambda v: (-float(values[v]), int(position[v])))
    return set(ranked[:k])


def brute_curve(p: np.ndarray, t: np.ndarray, seed: int | None) -> np.ndarray:
    n = p.shape[1]
    if seed is None:
        p_order = t_order = None
    else:
        p_order, t_order = (o.numpy() for o in tiebreak_order(n, seed))
    out = np.zeros((p.shape[0], len(DICE_THRESHOLDS)))
    for b in range(p.shape[0]):
        for j, x in enumerate(DICE_THRESHOLDS):
            k = brute_k(x, n)
            inter = brute_top(p[b], k, p_order) & brute_top(t[b], k, t_order)
            out[b, j] = 2 * len(inter) / (k + k)
    return out


def brute_auc(curve: np.ndarray) -> np.ndarray:
    x = np.array(DICE_THRESHOLDS)
    return ((curve[:, 1:] + curve[:, :-1]) / 2 * np.diff(x)).sum(axis=1)


def continuous_maps(batch: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(batch, n, generator=gen)
    preds = target + torch.randn(batch, n, generator=gen)
    return preds, target


# --------------------------------------------------------------------------------------------
# k and tie-break orders
# --------------------------------------------------------------------------------------------


def test_thresholds_grid() -> None:
    assert len(DICE_THRESHOLDS) == 26
    assert DICE_THRESHOLDS[0] == pytest.approx(0.05) and DICE_THRESHOLDS[-1] == pytest.approx(0.30)
    assert np.allclose(np.diff(DICE_THRESHOLDS), 0.01)


@pytest.mark.parametrize(
    ("fraction", "n", "k"),
    [(0.05, 100, 5), (0.05, 10, 1), (0.15, 10, 2), (0.01, 10, 1), (0.29, 100, 29),
     (0.05, 28542, 1427), (0.30, 28542, 8563), (1.0, 7, 7)],
)  # fmt: skip
def test_threshold_k(fraction: float, n: int, k: int) -> None:
    assert threshold_k(fraction, n) == k == brute_k(fraction, n)


def test_threshold_k_matches_brute_on_grid() -> None:
    for n in range(1, 300):
        for x in DICE_THRESHOLDS:
            assert threshold_k(x, n) == brute_k(x, n)


def test_tiebreak_order_is_seeded_random_permutation() -> None:
    a_pred, a_target = tiebreak_order(500, seed=3)
    b_pred, b_target = tiebreak_order(500, seed=3)
    assert torch.equal(a_pred, b_pred) and torch.equal(a_target, b_target)
    for order in (a_pred, a_target):
        assert torch.equal(order.sort().values, torch.arange(500))
        assert not torch.equal(order, torch.arange(500))
    assert not torch.equal(a_pred, a_target)
    assert not torch.equal(a_pred, tiebreak_order(500, seed=4)[0])


def test_voxel_ranks_ties_follow_order() -> None:
    maps = torch.tensor([[0.0, 2.0, 0.0, -0.0, 1.0, 0.0]])
    order = torch.tensor([5, 3, 0, 4, 1, 2])
    ranks = voxel_ranks(maps, order)[0].tolist()
    # value order: 1 (2.0), 4 (1.0), then the zeros (-0.0 included) in `order`: 5, 3, 0, 2
    assert ranks == [4, 0, 5, 3, 1, 2]


# --------------------------------------------------------------------------------------------
# Dice curve against brute force
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "n", "seed"), [(3, 40, 0), (2, 57, 1), (1, 10, 2), (4, 123, 3)])
def test_dice_curve_matches_brute_force_without_ties(batch: int, n: int, seed: int) -> None:
    preds, target = continuous_maps(batch, n, seed)
    curve = dice_curve(preds, target)
    expected = brute_curve(preds.numpy(), target.numpy(), seed=None)  # no ties: order irrelevant
    assert curve.shape == (batch, 26) and curve.dtype == torch.float32
    np.testing.assert_allclose(curve.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(dice_auc_from_curve(curve).numpy(), brute_auc(expected), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_dice_curve_matches_brute_force_with_ties(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    # few distinct values and mostly zeros: ties everywhere, including inside the top 30%
    target = torch.randint(0, 3, (4, 60), generator=gen).float()
    target[target == 1] = 0.0
    preds = torch.randint(0, 4, (4, 60), generator=gen).float()
    curve = dice_curve(preds, target, generator_seed=seed)
    expected = brute_curve(preds.numpy(), target.numpy(), seed=seed)
    np.testing.assert_allclose(curve.numpy(), expected, atol=1e-6)

    metric = DiceAUC(generator_seed=seed)
    metric.update(preds, target)
    np.testing.assert_allclose(metric.per_sample().numpy(), brute_auc(expected), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(st.integers(-2, 2), min_size=2, max_size=40).flatmap(
        lambda t: st.tuples(
            st.just(t), st.lists(st.integers(-2, 2), min_size=len(t), max_size=len(t))
        )
    ),
    seed=st.integers(0, 5),
)
def test_dice_curve_brute_force_property(data: tuple[list[int], list[int]], seed: int) -> None:
    target = torch.tensor([data[0]], dtype=torch.float32)
    preds = torch.tensor([data[1]], dtype=torch.float32)
    curve = dice_curve(preds, target, generator_seed=seed)
    expected = brute_curve(preds.numpy(), target.numpy(), seed=seed)
    np.testing.assert_allclose(curve.numpy(), expected, atol=1e-6)
    auc = dice_auc_from_curve(curve)
    assert ((auc >= 0) & (auc <= 0.25 + 1e-6)).all()


# --------------------------------------------------------------------------------------------
# No spatial bias in tie-breaking
# --------------------------------------------------------------------------------------------


def test_tie_selection_is_uniform_over_positions() -> None:
    n, k, n_seeds = 40, 10, 200
    constant = torch.zeros(1, n)
    hits = torch.zeros(n)
    for seed in range(n_seeds):
        for order in tiebreak_order(n, seed):
            hits += (voxel_ranks(constant, order)[0] < k).float()
    freq = hits / (2 * n_seeds)  # expected k / n = 0.25 everywhere
    # index-order tie-breaking would give 1.0 for the first k voxels and 0.0 elsewhere
    assert (freq - k / n).abs().max() < 0.12
    assert abs(freq[:k].mean() - k / n) < 0.05
    assert abs(freq[: n // 2].mean() - freq[n // 2 :].mean()) < 0.05


def test_dice_of_tied_target_is_chance_wherever_the_prediction_is() -> None:
    """All-tied target: a block prediction scores ~k/n whatever its position (index-order
    tie-breaking would give 1 to the first block and 0 to the others)."""
    n = 200
    k = threshold_k(0.10, n)
    target = torch.zeros(n // k, n)
    preds = torch.zeros(n // k, n)
    for b in range(n // k):
        preds[b, b * k : (b + 1) * k] = 1.0
    col = DICE_THRESHOLDS.index(0.10)
    dice = torch.stack([dice_curve(preds, target, seed)[:, col] for seed in range(100)])
    mean_per_block = dice.mean(dim=0)
    assert ((mean_per_block - k / n).abs() < 0.05).all()


def test_constant_prediction_is_not_rewarded_on_sparse_target() -> None:
    """A flat prediction must score at chance on a sparse target, not copy its tie order."""
    n = 1000
    target = torch.zeros(1, n)
    target[0, torch.randperm(n, generator=torch.Generator().manual_seed(0))[:10]] = 1.0
    preds = torch.zeros(1, n)
    col = DICE_THRESHOLDS.index(0.30)
    dice = torch.stack([dice_curve(preds, target, seed)[0, col] for seed in range(20)])
    assert abs(float(dice.mean()) - 0.30) < 0.05  # chance: k / n


# --------------------------------------------------------------------------------------------
# Sanity values
# --------------------------------------------------------------------------------------------


def test_perfect_and_inverted_prediction() -> None:
    _, target = continuous_maps(3, 200, 5)
    perfect = dice_curve(target, target)
    assert torch.equal(perfect, torch.ones(3, 26))
    assert torch.allclose(dice_auc_from_curve(perfect), torch.full((3,), 0.25), atol=1e-6)
    # top 30% of -target is the bottom 30% of target: disjoint
    inverted = dice_auc_from_curve(dice_curve(-target, target))
    assert torch.equal(inverted, torch.zeros(3))
    metric = DiceAUC()
    metric.update(target, target)
    assert float(metric.compute()) == pytest.approx(0.25, abs=1e-6)


def test_auc_within_bounds_on_random_maps() -> None:
    preds, target = continuous_maps(16, 300, 9)
    auc = dice_auc_from_curve(dice_curve(preds, target))
    assert ((auc >= 0) & (auc <= 0.25)).all()
    assert 0.05 < float(auc.mean()) < 0.25  # correlated maps do better than chance (~0.045)


def test_one_dimensional_input_is_a_batch_of_one() -> None:
    preds, target = continuous_maps(1, 50, 11)
    assert torch.equal(dice_curve(preds[0], target[0]), dice_curve(preds, target))
    assert torch.equal(voxel_pearson(preds[0], target[0]), voxel_pearson(preds, target))


def test_seed_determinism() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, (3, 80), generator=gen).float()
    preds = torch.randint(0, 2, (3, 80), generator=gen).float()
    assert torch.equal(dice_curve(preds, target, 5), dice_curve(preds, target, 5))
    curves = {tuple(dice_curve(preds, target, s).flatten().tolist()) for s in range(5)}
    assert len(curves) > 1


# --------------------------------------------------------------------------------------------
# Metric classes
# --------------------------------------------------------------------------------------------


def test_accumulation_equals_single_update() -> None:
    preds, target = continuous_maps(7, 90, 12)
    split, whole = DiceAUC(), DiceAUC()
    split.update(preds[:2], target[:2])
    split.update(preds[2:3], target[2:3])
    split.update(preds[3:], target[3:])
    whole.update(preds, target)
    assert split.per_sample().shape == (7,)
    assert torch.equal(split.per_sample(), whole.per_sample())
    assert torch.equal(split.per_sample_curves(), whole.per_sample_curves())
    assert split.per_sample_curves().shape == (7, 26)
    assert torch.allclose(split.curve(), whole.per_sample_curves().mean(0))
    assert torch.allclose(split.compute(), whole.compute())
    assert torch.allclose(whole.compute(), dice_auc_from_curve(dice_curve(preds, target)).mean())

    split_r, whole_r = VoxelPearson(), VoxelPearson()
    split_r.update(preds[:4], target[:4])
    split_r.update(preds[4:], target[4:])
    whole_r.update(preds, target)
    assert split_r.per_sample().shape == (7,)
    assert torch.allclose(split_r.per_sample(), whole_r.per_sample())
    assert torch.allclose(split_r.compute(), whole_r.compute())


def test_reset_clears_samples() -> None:
    preds, target = continuous_maps(3, 30, 13)
    metric = DiceAUC()
    metric.update(preds, target)
    metric.reset()
    assert metric.per_sample().shape == (0,)
    metric.update(preds[:1], target[:1])
    assert metric.per_sample().shape == (1,)


def test_dice_at_matches_curve_column() -> None:
    preds, target = continuous_maps(5, 150, 14)
    curve = dice_curve(preds, target)
    for fraction in (0.05, 0.10, 0.20, 0.30):
        metric = DiceAt(fraction)
        metric.update(preds, target)
        col = curve[:, DICE_THRESHOLDS.index(fraction)]
        assert torch.equal(metric.per_sample(), col)
        assert torch.allclose(metric.compute(), col.mean())
    off_grid = DiceAt(0.5)
    off_grid.update(preds, target)
    expected = dice_curve(preds, target, thresholds=(0.5,))[:, 0]
    assert torch.equal(off_grid.per_sample(), expected)
    with pytest.raises(ValueError, match="fraction"):
        DiceAt(0.0)


def test_invalid_inputs_raise() -> None:
    preds, target = continuous_maps(2, 20, 15)
    bad = preds.clone()
    bad[0, 3] = float("nan")
    for fn in (dice_curve, voxel_pearson, DiceAUC().update, VoxelPearson().update):
        with pytest.raises(ValueError, match="NaN"):
            fn(bad, target)
    inf = preds.clone()
    inf[1, 0] = float("inf")
    with pytest.raises(ValueError, match="infinite"):
        dice_curve(inf, target)
    with pytest.raises(ValueError, match="target"):
        dice_curve(preds, bad)
    with pytest.raises(ValueError, match="same shape"):
        dice_curve(preds, target[:, :10])
    with pytest.raises(ValueError, match="same shape"):
        DiceAUC().update(preds, target[:1])
    with pytest.raises(ValueError, match="2-D"):
        dice_curve(preds.reshape(2, 4, 5), target.reshape(2, 4, 5))


def test_bf16_and_half_inputs() -> None:
    preds, target = continuous_maps(3, 64, 16)
    for dtype in (torch.bfloat16, torch.float16):
        p, t = preds.to(dtype), target.to(dtype)
        curve = dice_curve(p, t)
        assert curve.dtype == torch.float32
        assert torch.equal(curve, dice_curve(p.float(), t.float()))
        metric = DiceAUC()
        metric.update(p, t)
        assert metric.compute().dtype == torch.float32
        r = voxel_pearson(p, t)
        assert r.dtype == torch.float32
        assert torch.allclose(r, voxel_pearson(p.float(), t.float()))


# --------------------------------------------------------------------------------------------
# Pearson
# --------------------------------------------------------------------------------------------


def test_pearson_matches_numpy() -> None:
    preds, target = continuous_maps(6, 100, 17)
    r = voxel_pearson(preds, target)
    expected = [np.corrcoef(p, t)[0, 1] for p, t in zip(preds.numpy(), target.numpy(), strict=True)]
    np.testing.assert_allclose(r.numpy(), expected, atol=1e-5)
    metric = VoxelPearson()
    metric.update(preds, target)
    assert float(metric.compute()) == pytest.approx(float(np.mean(expected)), abs=1e-5)


def test_pearson_constant_map_is_zero() -> None:
    preds, target = continuous_maps(3, 100, 18)
    preds[0] = 0.3  # constant prediction (mean not exactly representable)
    target[1] = 0.0  # constant target
    r = voxel_pearson(preds, target)
    assert r[0] == 0 and r[1] == 0
    assert torch.isfinite(r).all() and r[2] != 0


# --------------------------------------------------------------------------------------------
# Collection
# --------------------------------------------------------------------------------------------


def test_map_metrics_keys_and_values() -> None:
    preds, target = continuous_maps(6, 120, 19)
    collection = map_metrics("val/")
    collection.update(preds[:3], target[:3])
    collection.update(preds[3:], target[3:])
    out = collection.compute()
    assert set(out) == {
        "val/dice_auc", "val/dice@5", "val/dice@10", "val/dice@20", "val/dice@30", "val/pearson"
    }  # fmt: skip
    curve = dice_curve(preds, target)
    assert torch.allclose(out["val/dice_auc"], dice_auc_from_curve(curve).mean())
    for percent in (5, 10, 20, 30):
        col = curve[:, DICE_THRESHOLDS.index(percent / 100)]
        assert torch.allclose(out[f"val/dice@{percent}"], col.mean())
        # per-sample values stay reachable on every member of the shared compute group
        assert torch.equal(collection[f"dice@{percent}"].per_sample(), col)
    assert torch.allclose(out["val/pearson"], voxel_pearson(preds, target).mean())
    assert collection["dice_auc"].per_sample().shape == (6,)

    train = map_metrics("train/")
    assert set(train(preds, target)) == {k.replace("val/", "train/") for k in out}


def test_pairwise_pearson_matches_corrcoef() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(size=(6, 40))
    b = 0.5 * a + rng.normal(size=(6, 40))
    expected = [np.corrcoef(a[i], b[i])[0, 1] for i in range(6)]
    np.testing.assert_allclose(pairwise_pearson(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(pairwise_pearson(a, a), 1.0)
    np.testing.assert_allclose(pairwise_pearson(a, -3 * a + 1), -1.0)
    np.testing.assert_allclose(
        pairwise_pearson(a.astype(np.float32), b.astype(np.float32)), expected, rtol=1e-5
    )
    constant = pairwise_pearson(np.ones((1, 40)), b[:1])
    assert np.isnan(constant).all()
