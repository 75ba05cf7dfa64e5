"""Losses of the contrastive heads (`text2brain.models.contrastive.losses`), with a DDP check.

The DDP test spawns 2 CPU processes (gloo) with *unequal* local batches and checks that the mean
of the per-rank losses, the gradients w.r.t. each rank's inputs and the DDP-averaged parameter
gradients equal a single process on the concatenated batch (see the module doc of `losses` for
why the loss is not multiplied by the world size).
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from text2brain import lorentz
from text2brain.models.contrastive import losses

# -- learnable scalars -----------------------------------------------------------------------------


def test_scalar_initial_values_and_no_weight_decay() -> None:
    curvature, alpha, logit_scale = (
        losses.LearnableCurvature(2.0),
        losses.ModalityScale(64),
        losses.LogitScale(),
    )
    assert curvature().item() == pytest.approx(2.0)
    assert alpha().item() == pytest.approx(1 / 8)
    assert logit_scale().item() == pytest.approx(1 / 0.07)
    for module in (curvature, alpha, logit_scale):
        (param,) = module.parameters()
        # base.configure_optimizers: no decay for ndim < 2 or no_weight_decay
        assert param.ndim == 0 and param.no_weight_decay
        assert module().dtype == torch.float32
    fixed = losses.LearnableCurvature(learnable=False)
    assert list(fixed.parameters()) == [] and fixed().item() == pytest.approx(1.0)


def test_scalars_are_clamped_in_place_and_can_come_back() -> None:
    curvature = losses.LearnableCurvature(1.0)
    (curvature() * curvature()).backward()  # two calls in one graph (text and brain lifts)
    assert curvature.log_value.grad.item() == pytest.approx(2.0)
    curvature.log_value.grad = None
    with torch.no_grad():
        curvature.log_value.fill_(-10.0)  # as if the optimiser pushed c below c0 / 10
    value = curvature()
    assert value.item() == pytest.approx(0.1)
    assert curvature.log_value.item() == pytest.approx(math.log(0.1))  # the parameter itself
    (-value).backward()  # a loss that wants c larger: gradient flows at the bound
    assert curvature.log_value.grad.item() < 0
    with torch.no_grad():
        curvature.log_value.fill_(10.0)
    assert curvature().item() == pytest.approx(10.0)
    alpha, logit_scale = losses.ModalityScale(4), losses.LogitScale()
    with torch.no_grad():
        alpha.log_value.fill_(3.0)
        logit_scale.log_value.fill_(9.0)
    assert alpha().item() == pytest.approx(1.0)
    assert logit_scale().item() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="outside"):
        losses.ClampedExpScalar(20.0, 0.1, 10.0)


# -- logits and InfoNCE ----------------------------------------------------------------------------


def test_clip_loss_equals_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 1.0, 0.3], [-0.4, 2.5, 0.2]])
    rows = [
        -logits[i, i].item() + math.log(sum(math.exp(v) for v in logits[i].tolist()))
        for i in range(3)
    ]
    cols = [
        -logits[i, i].item() + math.log(sum(math.exp(v) for v in logits[:, i].tolist()))
        for i in range(3)
    ]
    expected = (sum(rows) / 3 + sum(cols) / 3) / 2
    assert losses.clip_loss(logits).item() == pytest.approx(expected, rel=1e-6)
    assert losses.infonce(logits).item() == pytest.approx(sum(rows) / 3, rel=1e-6)
    assert losses.infonce(logits, torch.tensor([1, 1, 1])).item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([1, 1, 1])).item()
    )


def test_logits() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g)
    a[0] = 0.0
    cos = losses.cosine_logits(a, b, 10.0)
    torch.testing.assert_close(cos, 10 * F.cosine_similarity(a[:, None], b[None], dim=-1))
    assert torch.all(cos[0] == 0)  # a zero row has no direction: logits 0, not NaN
    c, scale = torch.tensor(0.5), torch.tensor(3.0)
    torch.testing.assert_close(
        losses.lorentz_logits(a, b, c, scale), -3 * lorentz.pairwise_dist(a, b, c)
    )
    # Angle logits take MERU's closed form (fast for training batches): the stable angle to
    # float32 rounding, and 0 for a point at the origin as there.
    torch.testing.assert_close(
        losses.lorentz_logits(a, b, c, scale, kind="angle"),
        -3 * lorentz.pairwise_exterior_angle(a, b, c),
        atol=1e-4,
        rtol=1e-4,
    )
    with pytest.raises(ValueError, match="kind"):
        losses.lorentz_logits(a, b, c, scale, kind="cosine")


def test_losses_compute_in_fp32_under_autocast() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 8, generator=g, requires_grad=True)
    b = torch.randn(6, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = nn.Linear(8, 8)(a)  # bf16 under autocast, as an encoder's output would be
        assert features.dtype == torch.bfloat16
        x, y = lorentz.exp_map0(features, 1.0), lorentz.exp_map0(b, 1.0)
        values = [
            losses.clip_loss(losses.lorentz_logits(x, y, 1.0, 10.0)),
            losses.clip_loss(losses.cosine_logits(features, b, 10.0)),
            losses.global_clip_loss(x, y, lambda p, q: losses.lorentz_logits(p, q, 1.0, 10.0)),
            losses.entailment_loss(x, y, 1.0),
            losses.ordering_loss(x, y, 1.0),
        ]
    for value in values:
        assert value.dtype == torch.float32 and torch.isfinite(value)
    torch.autograd.grad(sum(values), a)


def test_global_clip_loss_without_ddp_is_clip_loss() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    assert losses.gather_with_grad(a) is a and losses.world_size() == 1

    def similarity(p, q):
        return losses.lorentz_logits(p, q, 1.0, 5.0, kind="angle")  # asymmetric

    expected = (
        F.cross_entropy(similarity(a, b), torch.arange(5))
        + F.cross_entropy(similarity(a, b).T, torch.arange(5))
    ) / 2
    torch.testing.assert_close(losses.global_clip_loss(a, b, similarity), expected)


# -- entailment and hierarchy ----------------------------------------------------------------------


def test_entailment_loss_known_values_and_directions() -> None:
    c = 1.0
    parent = torch.tensor([[0.5, 0.0], [0.0, 2.0]])
    child = torch.tensor([[3.0, 0.0], [0.0, 5.0]])  # farther out on each parent's ray
    assert losses.entailment_loss(parent, child, c).item() == 0.0
    # the other direction: a child nearer the origin on the same ray is at angle pi
    apertures = lorentz.half_aperture(child, c)
    assert losses.entailment_loss(child, parent, c).item() == pytest.approx(
        (math.pi - apertures).mean().item()
    )
    opposite = -child
    expected = (math.pi - lorentz.half_aperture(parent, c)).mean().item()
    assert losses.entailment_loss(parent, opposite, c).item() == pytest.approx(expected)
    narrower = losses.entailment_loss(parent, parent.flip(0), c, aperture_scale=0.5)
    assert narrower > losses.entailment_loss(parent, parent.flip(0), c)
    empty = torch.zeros(0, 2, requires_grad=True)
    value = losses.entailment_loss(empty, empty, c)
    assert value.item() == 0.0
    value.backward()  # keeps the graph: no unused-parameter trouble under DDP
    # gradient descent moves a child outside the cone towards the cone's axis
    outside = torch.tensor([[3.0, 3.0], [0.0, 5.0]], requires_grad=True)
    losses.entailment_loss(parent, outside, c).backward()
    assert outside.grad[0, 1] > 0 and torch.isfinite(outside.grad).all()


def test_hierarchy_losses_over_index_pairs() -> None:
    c = 1.0
    article = torch.tensor([1.0, 0.0])
    embeddings = torch.stack([article, 2 * article, 0.5 * article, torch.tensor([0.0, 4.0])])
    parent_index, child_index = torch.tensor([0, 0, 0]), torch.tensor([1, 2, 3])
    result = losses.hierarchy_losses(embeddings, parent_index, child_index, c, margin=0.1)
    angle = lorentz.exterior_angle(embeddings[[0, 0, 0]], embeddings[1:], c)
    aperture = lorentz.half_aperture(article, c)
    assert result.entailment.item() == pytest.approx(F.relu(angle - aperture).mean().item())
    d0 = lorentz.dist0(embeddings, c)
    expected_order = F.relu(d0[0] - d0[1:] + 0.1).mean().item()  # only the nearer table counts
    assert result.ordering.item() == pytest.approx(expected_order)
    assert losses.ordering_loss(embeddings[:1], embeddings[1:2], c).item() == 0.0
    no_pairs = torch.tensor([], dtype=torch.long)
    none = losses.hierarchy_losses(embeddings, no_pairs, no_pairs, c)
    assert none.entailment.item() == 0.0 and none.ordering.item() == 0.0


# -- DDP: 2 gloo processes against one process ----------------------------------------------------

SIZES = (5, 3)  # unequal local batches on purpose
KINDS = ("distance", "angle", "cosine")


def _ddp_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(sum(SIZES), 6, generator=g), torch.randn(sum(SIZES), 7, generator=g)


def _ddp_model() -> nn.ModuleDict:
    torch.manual_seed(0)  # identical parameters on every rank, as DDP broadcasts them
    return nn.ModuleDict(
        {
            "text": nn.Linear(6, 4),
            "brain": nn.Linear(7, 4),
            "text_alpha": losses.ModalityScale(4),
            "brain_alpha": losses.ModalityScale(4),
            "curvature": losses.LearnableCurvature(),
            "logit_scale": losses.LogitScale(),
        }
    )


def _ddp_loss(model: nn.ModuleDict, x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    scale = model["logit_scale"]()
    a, b = model["text"](x), model["brain"](y)
    if kind == "cosine":
        return losses.global_clip_loss(a, b, lambda p, q: losses.cosine_logits(p, q, scale))
    c = model["curvature"]()
    a = lorentz.exp_map0(model["text_alpha"]() * a, c)
    b = lorentz.exp_map0(model["brain_alpha"]() * b, c)
    return losses.global_clip_loss(a, b, lambda p, q: losses.lorentz_logits(p, q, c, scale, kind))


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        start = sum(SIZES[:rank])
        rows = slice(start, start + SIZES[rank])
        x_all, y_all = _ddp_data()
        results = {}
        for kind in KINDS:
            model = _ddp_model()
            x = x_all[rows].clone().requires_grad_(True)
            y = y_all[rows].clone().requires_grad_(True)
            gathered = losses.gather_with_grad(x)
            loss = _ddp_loss(model, x, y, kind)
            loss.backward()
            results[kind] = {
                "loss": loss.detach(),
                "gathered": gathered.detach(),
                "x_grad": x.grad,
                "y_grad": y.grad,
                "params": {name: p.grad for name, p in model.named_parameters()},
            }
        torch.save(results, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gloo_matches_single_process(tmp_path: Path) -> None:
    world = len(SIZES)
    # fork, not spawn: a spawned child re-imports this module, hence text2brain.models and
    # Lightning (~7 s on this machine); the worker limits itself to one thread, as DataLoader
    # workers do, so the inherited OpenMP state is harmless.
    mp.start_processes(
        _ddp_worker,
        args=(world, _free_port(), str(tmp_path)),
        nprocs=world,
        join=True,
        start_method="fork",
    )
    per_rank = [torch.load(tmp_path / f"{rank}.pt") for rank in range(world)]
    x_all, y_all = _ddp_data()
    for kind in KINDS:
        model = _ddp_model()
        x, y = x_all.clone().requires_grad_(True), y_all.clone().requires_grad_(True)
        loss = _ddp_loss(model, x, y, kind)
        loss.backward()
        ranks = [results[kind] for results in per_rank]
        for r in ranks:
            torch.testing.assert_close(r["gathered"], x_all)  # rank order, unequal sizes
        # the mean of the per-rank losses is the global loss
        mean_loss = sum(r["loss"] for r in ranks) / world
        torch.testing.assert_close(mean_loss, loss.detach(), msg=kind)
        # each rank's input gradients are world x the single-process ones (DDP divides by world)
        torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]) / world, x.grad)
        torch.testing.assert_close(torch.cat([r["y_grad"] for r in ranks]) / world, y.grad)
        # DDP's averaged parameter gradients equal the single-process gradients
        for name, p in model.named_parameters():
            if p.grad is None:  # unused by this kind (the cosine head has no curvature)
                assert all(r["params"][name] is None for r in ranks)
                continue
            averaged = sum(r["params"][name] for r in ranks) / world
            torch.testing.assert_close(averaged, p.grad, msg=f"{kind}: {name}")
