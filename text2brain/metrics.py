"""Evaluation metrics shared by every model in the zoo.

All metrics take masked maps: float tensors of shape ``(batch, n_voxels)`` (or ``(n_voxels,)``,
a batch of one), one value per in-brain voxel.

Dice-AUC (Text2Brain paper, supplement A)
    ``Dice(x) = 2|P(x) ∩ T(x)| / (|P(x)| + |T(x)|)`` where ``P(x)`` / ``T(x)`` are the top
    ``x``-fraction most activated voxels of the predicted / target map. Both sets hold exactly
    ``k(x)`` voxels, so ``Dice(x) = |P ∩ T| / k``. It is evaluated at ``DICE_THRESHOLDS``
    (0.05, 0.06, ..., 0.30) and the AUC is the trapezoid area under ``Dice(x)`` with ``x`` as a
    fraction, so it lies in ``[0, 0.25]``.

Rounding of ``k``
    ``k(x) = max(1, floor(x * n_voxels + 1/2))`` (round half up), computed exactly on the decimal
    value of ``x`` (``Fraction(repr(x))``) so that e.g. ``0.05 * 100`` is 5, never 4 or 6 through
    float error.

Ties
    Target maps are often sparse, so many voxels tie (usually at 0) within the top 30%. Breaking
    ties by voxel index would favour one end of the brain, so ties are broken by a fixed random
    order of the voxels drawn from a seeded CPU generator (``tiebreak_order``): among equal values
    the voxel that comes earlier in the order ranks higher. Predictions and targets get two
    *independent* orders from the same generator: with one shared order, a constant (or
    zero-padded) prediction would pick exactly the same tied voxels as a sparse target and score
    far above chance; with independent orders, tied voxels carry no information, as they should.
    The consequence is that a perfect prediction of a target that has ties inside the top 30%
    scores below 1 on the tied part (its ties are resolved independently).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "DICE_THRESHOLDS",
    "DiceAUC",
    "DiceAt",
    "VoxelPearson",
    "dice_auc_from_curve",
    "dice_curve",
    "map_metrics",
    "threshold_k",
    "tiebreak_order",
    "voxel_pearson",
    "voxel_ranks",
]

#: Fractions of the mask at which Dice is evaluated: 0.05, 0.06, ..., 0.30 (26 values).
DICE_THRESHOLDS: tuple[float, ...] = tuple(p / 100 for p in range(5, 31))

#: Fractions logged as ``dice@<percent>`` by ``map_metrics``.
LOGGED_DICE_FRACTIONS: tuple[float, ...] = (0.05, 0.10, 0.20, 0.30)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _as_float(x: Tensor) -> Tensor:
    """Cast to a dtype that ranks and sums safely: half/bf16/int/bool -> float32, keep fp32/64."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.to(torch.float32)


def _check_finite(x: Tensor, name: str) -> None:
    """Raise if ``x`` has NaN/inf: they would rank arbitrarily and give a meaningless score."""
    if bool(torch.isfinite(x).all()):  # one device sync per call; skip with validate_args=False
        return
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    raise ValueError(
        f"{name} must be finite, but it contains {n_nan} NaN and {n_inf} infinite value(s)"
    )


def _prepare(preds: Tensor, target: Tensor, validate: bool = True) -> tuple[Tensor, Tensor]:
    """Check shapes, make both 2-D ``(batch, n_voxels)`` and floating point."""
    if not isinstance(preds, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"preds and target must be tensors, got {type(preds).__name__} and "
            f"{type(target).__name__}"
        )
    if preds.shape != target.shape:
        raise ValueError(
            f"preds and target must have the same shape, got {tuple(preds.shape)} and "
            f"{tuple(target.shape)}"
        )
    if preds.ndim == 1:
        preds, target = preds.unsqueeze(0), target.unsqueeze(0)
    if preds.ndim != 2:
        raise ValueError(
            f"maps must be 1-D (n_voxels,) or 2-D (batch, n_voxels), got shape {tuple(preds.shape)}"
        )
    if preds.shape[1] == 0:
        raise ValueError("maps must have at least one voxel")
    preds, target = _as_float(preds), _as_float(target)
    if validate:
        _check_finite(preds, "preds")
        _check_finite(target, "target")
    return preds, target


# --------------------------------------------------------------------------------------------
# Ranking and Dice
# --------------------------------------------------------------------------------------------


def threshold_k(fraction: float, n_voxels: int) -> int:
    """Number of voxels in the top ``fraction`` of a mask of ``n_voxels`` voxels.

    ``max(1, floor(fraction * n_voxels + 1/2))`` computed exactly on the decimal value of
    ``fraction``, capped at ``n_voxels``; at least 1 so Dice is always defined.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if n_voxels < 1:
        raise ValueError(f"n_voxels must be >= 1, got {n_voxels}")
    exact = Fraction(repr(float(fraction))) * n_voxels + Fraction(1, 2)
    return min(n_voxels, max(1, math.floor(exact)))


@lru_cache(maxsize=32)
def _cpu_orders(n_voxels: int, seed: int) -> Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    preds_order = torch.randperm(n_voxels, generator=gen)
    target_order = torch.randperm(n_voxels, generator=gen)
    return torch.stack([preds_order, target_order])


def tiebreak_order(n_voxels: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The random voxel orders used to break ties: ``(preds_order, target_order)``.

    Each is a permutation of ``range(n_voxels)`` (int64, CPU) drawn from
    ``torch.Generator().manual_seed(seed)``: first the one for predictions, then the one for
    targets. Among voxels of equal value, the one appearing earlier in the order ranks higher.
    Drawn on the CPU so that the order does not depend on the device the maps live on.
    """
    if n_voxels < 1:
        raise ValueError(f"n_voxels must be >= 1, got {n_voxels}")
    orders = _cpu_orders(int(n_voxels), int(seed)).clone()
    return orders[0], orders[1]


def voxel_ranks(maps: Tensor, order: Tensor) -> Tensor:
    """Rank of every voxel within its row: 0 = most activated, ties broken by ``order``.

    ``maps`` is ``(batch, n_voxels)``; ``order`` is a voxel permutation, ``(n_voxels,)`` shared by
    all rows or ``(batch, n_voxels)``. Permuting the voxel axis by ``order`` and then doing a
    *stable* descending sort is the same as sorting by (value desc, position in ``order`` asc),
    in O(n log n) once per map, with no Python loop.
    """
    if maps.ndim != 2:
        raise ValueError(f"maps must be 2-D (batch, n_voxels), got shape {tuple(maps.shape)}")
    batch, n_voxels = maps.shape
    order = order.to(device=maps.device, dtype=torch.long).expand(batch, n_voxels)
    permuted = maps.gather(1, order)
    permuted = permuted + 0.0  # -0.0 -> +0.0: radix sorts would otherwise split the zero ties
    sorted_pos = torch.argsort(permuted, dim=1, descending=True, stable=True)
    voxel_at_rank = order.gather(1, sorted_pos)
    rank_values = torch.arange(n_voxels, device=maps.device).expand(batch, n_voxels)
    return torch.empty_like(voxel_at_rank).scatter_(1, voxel_at_rank, rank_values)


def _thresholds_ks(thresholds: Sequence[float], n_voxels: int) -> list[int]:
    return [threshold_k(x, n_voxels) for x in thresholds]


def _dice_curve_with_orders(
    preds: Tensor, target: Tensor, orders: Tensor, ks: Sequence[int]
) -> Tensor:
    """Dice at every ``k`` in ``ks`` for each row; inputs already checked and 2-D.

    A voxel is in both top-k sets iff ``max(rank_pred, rank_target) < k``, so one bincount of that
    max per row plus a cumulative sum gives the intersection size for every k at once (O(n)).
    """
    batch, n_voxels = preds.shape
    both = torch.cat([preds, target.to(preds.dtype)], dim=0)
    row_orders = orders.to(both.device).repeat_interleave(batch, dim=0)  # (2 * batch, n)
    ranks = voxel_ranks(both, row_orders)
    worst = torch.maximum(ranks[:batch], ranks[batch:])
    offsets = torch.arange(batch, device=worst.device).unsqueeze(1) * n_voxels
    counts = torch.bincount((worst + offsets).reshape(-1), minlength=batch * n_voxels)
    at_most = counts.view(batch, n_voxels).cumsum(dim=1)  # at_most[:, j] = #{max rank <= j}
    k = torch.tensor(list(ks), device=worst.device, dtype=torch.long)
    intersection = at_most.index_select(1, k - 1)
    return intersection.to(torch.float32) / k.to(torch.float32)


def dice_curve(
    preds: Tensor,
    target: Tensor,
    generator_seed: int = 0,
    thresholds: Sequence[float] = DICE_THRESHOLDS,
) -> Tensor:
    """Per-sample Dice at each threshold: ``(batch, len(thresholds))`` float32.

    Stateless; ties are broken by ``tiebreak_order(n_voxels, generator_seed)``. Raises
    ``ValueError`` on non-finite values or mismatched / non 1-D or 2-D shapes.
    """
    preds, target = _prepare(preds, target)
    n_voxels = preds.shape[1]
    orders = _cpu_orders(n_voxels, int(generator_seed)).to(preds.device)
    return _dice_curve_with_orders(preds, target, orders, _thresholds_ks(thresholds, n_voxels))


def dice_auc_from_curve(curve: Tensor, thresholds: Sequence[float] = DICE_THRESHOLDS) -> Tensor:
    """Trapezoid area under Dice(x), x as a fraction: ``(batch,)``; at most 0.25 on the default
    grid."""
    x = torch.tensor(list(thresholds), dtype=curve.dtype, device=curve.device)
    if curve.shape[-1] != x.numel():
        raise ValueError(
            f"curve has {curve.shape[-1]} values per sample but there are {x.numel()} thresholds"
        )
    return torch.trapezoid(curve, x=x, dim=-1)


# --------------------------------------------------------------------------------------------
# Pearson
# --------------------------------------------------------------------------------------------


def voxel_pearson(preds: Tensor, target: Tensor, validate: bool = True) -> Tensor:
    """Per-sample Pearson r across voxels, ``(batch,)`` float32.

    A sample whose predicted or target map is constant has no defined correlation; it gets
    r = 0 (no linear agreement) instead of NaN so that one flat map cannot turn a mean into NaN.
    """
    preds, target = _prepare(preds, target, validate=validate)
    preds = preds.to(torch.promote_types(preds.dtype, target.dtype))
    target = target.to(preds.dtype)
    pc = preds - preds.mean(dim=1, keepdim=True)
    tc = target - target.mean(dim=1, keepdim=True)
    num = (pc * tc).sum(dim=1)
    den = pc.square().sum(dim=1).sqrt() * tc.square().sum(dim=1).sqrt()
    # Test constancy on the raw values: centring by a rounded mean leaves tiny non-zero residues.
    constant = (preds.amax(dim=1) == preds.amin(dim=1)) | (target.amax(dim=1) == target.amin(dim=1))
    degenerate = constant | (den == 0)
    r = num / torch.where(degenerate, torch.ones_like(den), den)
    r = torch.where(degenerate, torch.zeros_like(r), r).clamp(-1.0, 1.0)
    return r.to(torch.float32)


# --------------------------------------------------------------------------------------------
# torchmetrics classes
# --------------------------------------------------------------------------------------------


class _SampleMetric(Metric):
    """Keeps one row of values per sample (``cat`` reduction) so paired tests across models can
    use the per-sample numbers; ``_gathered`` syncs across processes like ``compute`` does."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def _gathered(self, name: str) -> Tensor:
        """Concatenated per-sample state, gathered over all processes (a collective under DDP:
        call it on every rank, as ``compute``)."""
        if self._is_synced:
            return self._cat(getattr(self, name))
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self._to_sync,
            should_unsync=self._should_unsync,
        ):
            return self._cat(getattr(self, name))

    def _cat(self, state: list[Tensor] | Tensor) -> Tensor:
        if isinstance(state, Tensor):
            return state
        if len(state) == 0:
            return self._empty()
        return dim_zero_cat(state)

    def _empty(self) -> Tensor:
        return torch.empty(0, device=self.device)


class _DiceCurveMetric(_SampleMetric):
    """Shared state and update of every Dice metric: the per-sample Dice curve.

    All Dice metrics with the same thresholds and seed hold identical states, so a
    ``MetricCollection`` can put them in one compute group and rank each batch only once.
    """

    plot_lower_bound = 0.0

    def __init__(
        self,
        thresholds: Sequence[float] = DICE_THRESHOLDS,
        generator_seed: int = 0,
        validate_args: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.thresholds = tuple(float(x) for x in thresholds)
        if not self.thresholds:
            raise ValueError("at least one threshold is needed")
        for x in self.thresholds:
            if not 0.0 < x <= 1.0:
                raise ValueError(f"thresholds must be in (0, 1], got {x}")
        self.generator_seed = int(generator_seed)
        self.validate_args = bool(validate_args)
        # Tie-break orders, per (n_voxels, device); not a state: it is derived from the seed.
        self._orders: dict[tuple[int, torch.device], Tensor] = {}
        self.add_state("curves", default=[], dist_reduce_fx="cat")

    def _orders_for(self, n_voxels: int, device: torch.device) -> Tensor:
        key = (n_voxels, device)
        if key not in self._orders:
            self._orders[key] = _cpu_orders(n_voxels, self.generator_seed).to(device)
        return self._orders[key]

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Append the Dice curves of this batch (no host transfer of the maps)."""
        preds, target = _prepare(preds, target, validate=self.validate_args)
        n_voxels = preds.shape[1]
        orders = self._orders_for(n_voxels, preds.device)
        ks = _thresholds_ks(self.thresholds, n_voxels)
        self.curves.append(_dice_curve_with_orders(preds, target, orders, ks))

    def _empty(self) -> Tensor:
        return torch.empty(0, len(self.thresholds), device=self.device)

    def per_sample_curves(self) -> Tensor:
        """Dice curve of every sample seen so far: ``(n_samples, len(thresholds))``."""
        return self._gathered("curves")

    def curve(self) -> Tensor:
        """Mean Dice curve over samples: ``(len(thresholds),)``."""
        return self.per_sample_curves().mean(dim=0)


class DiceAUC(_DiceCurveMetric):
    """Mean over samples of the area under the Dice curve (0.05..0.30), in ``[0, 0.25]``.

    ``per_sample()`` gives the per-sample AUCs, ``per_sample_curves()`` / ``curve()`` the curves.
    """

    plot_upper_bound = 0.25

    def __init__(self, generator_seed: int = 0, validate_args: bool = True, **kwargs) -> None:
        super().__init__(DICE_THRESHOLDS, generator_seed, validate_args, **kwargs)

    def per_sample(self) -> Tensor:
        """Dice-AUC of every sample seen so far: ``(n_samples,)``."""
        return dice_auc_from_curve(self.per_sample_curves(), self.thresholds)

    def compute(self) -> Tensor:
        """Mean Dice-AUC (NaN before any sample)."""
        return self.per_sample().mean()


class DiceAt(_DiceCurveMetric):
    """Mean Dice at one fraction of the mask, e.g. ``DiceAt(0.10)``.

    A fraction on the ``DICE_THRESHOLDS`` grid keeps the whole curve as state (identical to
    ``DiceAUC``'s, so they share one compute group); any other fraction in (0, 1] keeps only
    its own column.
    """

    plot_upper_bound = 1.0

    def __init__(
        self, fraction: float, generator_seed: int = 0, validate_args: bool = True, **kwargs
    ) -> None:
        fraction = float(fraction)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        on_grid = [i for i, x in enumerate(DICE_THRESHOLDS) if math.isclose(x, fraction)]
        thresholds = DICE_THRESHOLDS if on_grid else (fraction,)
        super().__init__(thresholds, generator_seed, validate_args, **kwargs)
        self.fraction = fraction
        self._column = on_grid[0] if on_grid else 0

    def per_sample(self) -> Tensor:
        """Dice at ``fraction`` of every sample seen so far: ``(n_samples,)``."""
        return self.per_sample_curves()[:, self._column]

    def compute(self) -> Tensor:
        """Mean Dice at ``fraction`` (NaN before any sample)."""
        return self.per_sample().mean()


class VoxelPearson(_SampleMetric):
    """Mean over samples of the Pearson r between predicted and target map across voxels.

    A constant predicted or target map counts as r = 0 for that sample (see ``voxel_pearson``).
    """

    plot_lower_bound = -1.0
    plot_upper_bound = 1.0

    def __init__(self, validate_args: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.validate_args = bool(validate_args)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Append this batch's per-sample correlations."""
        self.values.append(voxel_pearson(preds, target, validate=self.validate_args))

    def per_sample(self) -> Tensor:
        """Pearson r of every sample seen so far: ``(n_samples,)``."""
        return self._gathered("values")

    def compute(self) -> Tensor:
        """Mean Pearson r (NaN before any sample)."""
        return self.per_sample().mean()


def _dice_name(fraction: float) -> str:
    return f"dice@{round(fraction * 100)}"


def map_metrics(prefix: str, generator_seed: int = 0) -> MetricCollection:
    """The collection every model logs: ``dice_auc``, ``dice@5``, ``dice@10``, ``dice@20``,
    ``dice@30`` and ``pearson``, each name prefixed by ``prefix`` (e.g. ``"val/dice@10"``).

    The Dice metrics form one declared compute group, so each batch is ranked once for all five.
    """
    dice: dict[str, Metric] = {"dice_auc": DiceAUC(generator_seed=generator_seed)}
    for fraction in LOGGED_DICE_FRACTIONS:
        dice[_dice_name(fraction)] = DiceAt(fraction, generator_seed=generator_seed)
    metrics: dict[str, Metric] = {**dice, "pearson": VoxelPearson()}
    return MetricCollection(metrics, prefix=prefix, compute_groups=[list(dice), ["pearson"]])


def pairwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r between two (n, v) arrays (nan where a row is constant)."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / denom
