"""Losses of the contrastive heads: CLIP (Euclidean) and MNM (Lorentz), as plain functions.

Nothing here knows about Lightning; the heads compose these pieces:

* learnable positive scalars (`ClampedExpScalar` and its three flavours): curvature ``c``,
  per-modality scale ``alpha`` applied before `exp_map0`, logit scale;
* logits: `cosine_logits` (CLIP) and `lorentz_logits` (-distance, or -exterior angle);
* `clip_loss` (symmetric InfoNCE on one logits matrix) and `global_clip_loss` (the same with the
  negatives of every DDP rank, through `gather_with_grad`);
* `entailment_loss` (text <-> brain, the caller picks the parent) and `hierarchy_losses`
  (article-average map -> its table maps, with the ordering penalty).

Every function computes in at least fp32, even under bf16 autocast (`at_least_fp32`).

DDP and the loss scale
    `global_clip_loss` scores each rank's *local* rows against the *gathered* global batch, and
    `gather_with_grad` sums, in backward, the gradients every rank computed for each shard and
    hands each rank those of its own shard. Each rank's loss is its share of the global loss,
    ``sum over local rows of CE * world_size / global_batch``, so the mean over ranks is the
    single-process loss on the concatenated batch, and after DDP's gradient averaging every
    parameter gradient is exactly the single-process one. The loss is therefore **not**
    multiplied by the world size. (The other design, each rank computing the full
    global-by-global loss with the other ranks' embeddings as constants, needs the loss times
    world size for the encoders but then counts the curvature and logit scale, which act after
    the gather, world-size times over: no single factor is right for both.) The raw gradient of
    a rank's loss w.r.t. its own inputs is world-size times the single-process one; DDP's
    averaging divides it back. tests/models/contrastive/test_losses.py checks all of this with
    2 gloo processes. `entailment_loss` / `hierarchy_losses` are local means: with equal per-rank
    batch sizes (DistributedSampler) DDP's averaging makes them global means.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from text2brain import lorentz
from text2brain.lorentz import Curvature, at_least_fp32

# -- learnable scalars -----------------------------------------------------------------------------


class ClampedExpScalar(nn.Module):
    """A positive scalar learned through its log and kept in ``[low, high]``.

    The 0-d log parameter carries ``no_weight_decay = True`` (the base optimiser also skips
    every parameter with ``ndim < 2``). The log is clamped *in place* at each call, as MERU
    does: the parameter never leaves the box, and a gradient pointing back inside moves it at
    once. A functional clamp would give zero gradient outside the box while Adam's momentum
    kept pushing the raw value further out, so a scalar that touched a bound could stay there.
    With ``learnable=False`` the log is a buffer (a fixed value, e.g. a fixed curvature).
    """

    def __init__(
        self,
        init: float,
        low: float | None = None,
        high: float | None = None,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        if init <= 0:
            raise ValueError(f"init must be > 0, got {init}")
        if low is not None and high is not None and not low <= init <= high:
            raise ValueError(f"init {init} is outside [{low}, {high}]")
        self.log_low = None if low is None else math.log(low)
        self.log_high = None if high is None else math.log(high)
        log_init = torch.tensor(math.log(init))
        if learnable:
            self.log_value = nn.Parameter(log_init)
            self.log_value.no_weight_decay = True  # type: ignore[attr-defined]
        else:
            self.register_buffer("log_value", log_init)

    def forward(self) -> Tensor:
        """The current value ``exp(log_value)`` (0-d, fp32), after clamping the log."""
        if self.log_low is not None or self.log_high is not None:
            with torch.no_grad():
                self.log_value.clamp_(self.log_low, self.log_high)
        return self.log_value.float().exp()

    def extra_repr(self) -> str:
        low = "-" if self.log_low is None else f"{math.exp(self.log_low):.4g}"
        high = "-" if self.log_high is None else f"{math.exp(self.log_high):.4g}"
        return f"value={self.log_value.exp().item():.4g}, bounds=[{low}, {high}]"


class LearnableCurvature(ClampedExpScalar):
    """Curvature ``c`` of the Lorentz space (curvature ``-c``), init `c0`, in ``[c0/10, 10 c0]``.

    Log it: a known failure of re-implementations is ``c`` collapsing to its lower bound.
    """

    def __init__(self, c0: float = 1.0, learnable: bool = True) -> None:
        super().__init__(c0, c0 / 10, c0 * 10, learnable)


class ModalityScale(ClampedExpScalar):
    """Per-modality scale ``alpha`` applied to features before `exp_map0`: init ``1/sqrt(dim)``.

    Keeps the lifted norms moderate at initialisation, whatever the feature size; capped at 1.
    """

    def __init__(self, dim: int, learnable: bool = True) -> None:
        super().__init__(dim**-0.5, None, 1.0, learnable)


class LogitScale(ClampedExpScalar):
    """Inverse temperature of the InfoNCE logits: init ``1/0.07`` (CLIP), capped at 100."""

    def __init__(self, init: float = 1 / 0.07, high: float = 100.0, learnable: bool = True) -> None:
        super().__init__(init, None, high, learnable)


# -- logits ----------------------------------------------------------------------------------------


@at_least_fp32
def cosine_logits(a: Tensor, b: Tensor, scale: Tensor | float) -> Tensor:
    """CLIP logits ``scale * cos(a_i, b_j)``: (N, d), (M, d) -> (N, M). Zero rows give 0."""
    return scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)


LORENTZ_LOGITS = ("distance", "angle")


@at_least_fp32
def lorentz_logits(
    a: Tensor, b: Tensor, c: Curvature, scale: Tensor | float, kind: str = "distance"
) -> Tensor:
    """Logits between points on the hyperboloid: (N, d), (M, d) -> (N, M).

    ``kind="distance"``: ``-scale * d(a_i, b_j)`` (MERU). ``kind="angle"``: ``-scale *``
    exterior angle at ``a_i`` of (origin, ``a_i``, ``b_j``), i.e. how far ``b_j`` is from the
    axis of ``a_i``'s entailment cone; it rewards ``b_j`` lying on ``a_i``'s ray at any
    distance, so it does not pull the two modalities onto each other (the hyperbolic
    "accept the modality gap" idea). It is asymmetric: `a` holds the cone apexes (parents).
    """
    if kind == "distance":
        return -scale * lorentz.pairwise_dist(a, b, c)
    if kind == "angle":  # MERU's closed form: 10x fewer passes over a 4096 x 4096 batch
        return -scale * lorentz.pairwise_exterior_angle_fast(a, b, c)
    raise ValueError(f"kind must be one of {LORENTZ_LOGITS}, got {kind!r}")


# -- InfoNCE ---------------------------------------------------------------------------------------


@at_least_fp32
def infonce(logits: Tensor, targets: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of each row's softmax against its target column (default: diagonal)."""
    if targets is None:
        targets = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, targets)


@at_least_fp32
def clip_loss(logits: Tensor) -> Tensor:
    """Symmetric InfoNCE (CLIP) of a square logits matrix whose matching pairs are on the diagonal.

    ``(CE(rows of logits) + CE(rows of logits.T)) / 2``: a -> b retrieval and b -> a retrieval.
    """
    return (infonce(logits) + infonce(logits.transpose(0, 1))) / 2


# -- distributed -----------------------------------------------------------------------------------


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of DDP processes (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if _distributed() else 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 (any per-rank sizes); backward returns the local shard's gradient
    summed over ranks (each rank's loss uses every shard)."""

    @staticmethod
    def forward(ctx, tensor: Tensor, sizes: list[int], rank: int) -> Tensor:  # type: ignore[override]
        longest = max(sizes)
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.start = sum(sizes[:rank])
        ctx.size = sizes[rank]
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)  # every rank's gradient for every shard (gloo has no reduce_scatter)
        return grad[ctx.start : ctx.start + ctx.size], None, None


def _gather(tensor: Tensor) -> tuple[Tensor, int, int]:
    """`gather_with_grad` (tensor), the global index of its first row, the global row count."""
    if not _distributed():
        return tensor, 0, tensor.shape[0]
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    rank = dist.get_rank()
    gathered = _GatherWithGrad.apply(tensor, counts, rank)
    return gathered, sum(counts[:rank]), sum(counts)


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` (N_rank, ...) from every DDP rank along dim 0, in rank order.

    Gradients flow back to the local shard: the backward pass sums the gradients that all ranks
    computed for each shard, so contrastive negatives are global and gradients exact (module
    doc). Per-rank sizes may differ. Identity when torch.distributed is not initialised.
    """
    return _gather(tensor)[0]


Similarity = Callable[[Tensor, Tensor], Tensor]


@at_least_fp32
def global_clip_loss(a: Tensor, b: Tensor, similarity: Similarity) -> Tensor:
    """Symmetric InfoNCE between paired rows of `a` and `b` with negatives from every rank.

    ``similarity(a_rows, b_rows)`` gives the (len(a_rows), len(b_rows)) logits, `a` always
    first (so asymmetric logits, e.g. angle-based, keep their parent/child roles). Each rank
    scores its local rows against the gathered global batch (local-by-global logits) and
    returns ``(sum of local CE) * world_size / global_batch``: without DDP this is
    ``clip_loss(similarity(a, b))``; with DDP the mean over ranks is that of the global batch
    and DDP's gradient averaging gives the single-process gradients (module doc).
    """
    a_all, start, total = _gather(a)
    b_all, _, _ = _gather(b)
    if a_all is a:
        return clip_loss(similarity(a, b))
    targets = torch.arange(start, start + a.shape[0], device=a.device)
    a_to_b = F.cross_entropy(similarity(a, b_all), targets, reduction="sum")
    b_to_a = F.cross_entropy(similarity(a_all, b).transpose(0, 1), targets, reduction="sum")
    return (a_to_b + b_to_a) / 2 * world_size() / total


# -- hierarchy -------------------------------------------------------------------------------------


def _mean(values: Tensor) -> Tensor:
    """Mean that is 0 (and keeps the graph) for an empty tensor, where ``mean`` gives NaN."""
    return values.sum() / max(values.numel(), 1)


@at_least_fp32
def entailment_loss(
    parent: Tensor,
    child: Tensor,
    c: Curvature,
    min_radius: float = lorentz.MIN_RADIUS,
    aperture_scale: float = 1.0,
) -> Tensor:
    """How far each child lies outside its parent's entailment cone, averaged over pairs.

    ``mean(relu(exterior_angle(parent, child) - aperture_scale * half_aperture(parent)))``
    over paired rows (N, d), (N, d); 0 for N = 0. The caller picks the parent: text -> brain
    is ``entailment_loss(text, brain, c)``, brain -> text ``entailment_loss(brain, text, c)``.
    `aperture_scale` < 1 narrows the cones (HyCoCLIP uses its own multiplier for intra-modal
    part -> whole pairs).
    """
    angle = lorentz.exterior_angle(parent, child, c)
    aperture = aperture_scale * lorentz.half_aperture(parent, c, min_radius)
    return _mean(F.relu(angle - aperture))


@at_least_fp32
def ordering_loss(parent: Tensor, child: Tensor, c: Curvature, margin: float = 0.0) -> Tensor:
    """Penalty for a parent that is not nearer the origin than its child, averaged over pairs.

    ``mean(relu(d0(parent) - d0(child) + margin))``: broader maps near the origin (where cones
    are wide), their specific parts farther out. 0 for no pairs.
    """
    return _mean(F.relu(lorentz.dist0(parent, c) - lorentz.dist0(child, c) + margin))


class HierarchyLosses(NamedTuple):
    """The two intra-brain hierarchy terms, each weighted (or switched off) by the head."""

    entailment: Tensor
    ordering: Tensor


@at_least_fp32
def hierarchy_losses(
    embeddings: Tensor,
    parent_index: Tensor,
    child_index: Tensor,
    c: Curvature,
    min_radius: float = lorentz.MIN_RADIUS,
    aperture_scale: float = 1.0,
    margin: float = 0.0,
) -> HierarchyLosses:
    """Intra-brain hierarchy: an article-average map embedding is the parent of its table maps.

    `embeddings` (N, d) are the batch's brain maps on the hyperboloid (article averages and
    table maps together); pair ``k`` says ``embeddings[parent_index[k]]`` (article average)
    entails ``embeddings[child_index[k]]`` (one of its tables). Returns the `entailment_loss`
    and the `ordering_loss` over the pairs (both 0 when there are none).
    """
    parent = embeddings[parent_index]
    child = embeddings[child_index]
    return HierarchyLosses(
        entailment_loss(parent, child, c, min_radius, aperture_scale),
        ordering_loss(parent, child, c, margin),
    )


@at_least_fp32
def centroid_loss(points: Tensor, c: Curvature, target: float) -> Tensor:
    """MNM's official "entailment" term for one modality: how far the batch's Lorentzian
    centroid (`lorentz.centroid`) lies from a target distance to the origin,
    ``|d0(centroid(points)) - target|`` (points (n, d); 0 for n = 0). The official code passes
    its targets through acos and ignores the curvature there; the distances are used here."""
    if len(points) == 0:
        return points.new_zeros(())
    return (lorentz.dist0(lorentz.centroid(points, c), c) - target).abs()


@at_least_fp32
def breadth_ordering_loss(
    points: Tensor,
    breadth: Tensor,
    c: Curvature,
    min_ratio: float = 1.5,
    partners: int = 16,
    generator: torch.Generator | None = None,
) -> Tensor:
    """MNM's official intra-brain hierarchy: a broader map may not lie farther from the origin.

    For pairs (i, j) whose breadths (`features.map_breadth`) differ by at least `min_ratio`
    (i broader), the penalty ``relu(log(t_i / t_j))`` with ``t`` the time component (the
    official code's form). The official code sums over every pair of the batch (it grows with
    the batch); here each point is compared with `partners` random others and the penalty is
    averaged over the pairs that qualify, so its weight does not depend on the batch size.
    Points (n, d), breadth (n,) -> a scalar (0 without a qualifying pair).
    """
    n = len(points)
    if n < 2:
        return points.new_zeros(())
    i = torch.arange(n, device=points.device).repeat_interleave(partners)
    j = torch.randint(0, n, (n * partners,), device=points.device, generator=generator)
    broader = breadth[i] >= min_ratio * breadth[j]
    log_t = lorentz.time_component(points, c).log()
    return _mean(F.relu(log_t[i] - log_t[j])[broader])
