"""Lorentz maths (`text2brain.lorentz`): against geoopt in float64, known values, and numerics.

geoopt is the reference, not a dependency of the code: `geoopt.Lorentz(k)` has curvature -1/k
(so k = 1/c), stores the time coordinate at index 0 and is used in float64 as its docs advise.
Its k must be passed as a float64 tensor: from a Python float it becomes a float32 parameter and
every distance is then off by ~1e-7.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from text2brain import lorentz

with warnings.catch_warnings():  # geoopt's import compiles TorchScript, deprecated in torch 2.x
    warnings.simplefilter("ignore", DeprecationWarning)
    import geoopt
    from geoopt.manifolds.lorentz import math as geoopt_math

CURVATURES = (0.1, 1.0, 10.0)  # c0 / 10, c0, 10 c0: the learnable curvature's range for c0 = 1


def manifold(c: float) -> geoopt.Lorentz:
    return geoopt.Lorentz(k=torch.tensor(1.0 / c, dtype=torch.float64))


def ambient(x: torch.Tensor, c: float) -> torch.Tensor:
    """geoopt's coordinates of our points: time component first."""
    return torch.cat([lorentz.time_component(x, c).unsqueeze(-1), x], -1)


def random_points(n: int, dim: int, c: float, max_radius: float = 4.0, seed: int = 0):
    """float64 points with distances to the origin spread over [0, max_radius], one at 0."""
    g = torch.Generator().manual_seed(seed)
    tangent = torch.randn(n, dim, generator=g, dtype=torch.float64)
    radius = torch.rand(n, 1, generator=g, dtype=torch.float64) * max_radius
    tangent = tangent / tangent.norm(dim=-1, keepdim=True) * radius / math.sqrt(c)
    tangent[0] = 0.0
    return lorentz.exp_map0(tangent, c)


# -- against geoopt (float64) ------------------------------------------------------------------


@pytest.mark.parametrize("c", CURVATURES)
def test_points_lie_on_geoopt_hyperboloid(c: float) -> None:
    x = random_points(16, 5, c)
    assert manifold(c).check_point_on_manifold(ambient(x, c), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(
        lorentz.lorentz_inner(x, x, c), torch.full((16,), -1.0 / c, dtype=torch.float64)
    )


@pytest.mark.parametrize("c", CURVATURES)
def test_inner_product_and_distances_match_geoopt(c: float) -> None:
    x, y = random_points(12, 5, c, seed=1), random_points(9, 5, c, seed=2)
    m, ax, ay = manifold(c), ambient(x, c), ambient(y, c)
    pair_x, pair_y = x[:9], y
    torch.testing.assert_close(
        lorentz.lorentz_inner(pair_x, pair_y, c), geoopt_math.inner(ax[:9], ay)
    )
    torch.testing.assert_close(lorentz.dist(pair_x, pair_y, c), m.dist(ax[:9], ay))
    # geoopt has no pairwise distance: broadcast its elementwise one.
    expected = m.dist(ax.unsqueeze(1), ay.unsqueeze(0))
    torch.testing.assert_close(lorentz.pairwise_dist(x, y, c), expected)
    torch.testing.assert_close(lorentz.dist0(x, c), m.dist0(ax))
    # fp32 against the float64 reference, at these moderate radii
    torch.testing.assert_close(
        lorentz.pairwise_dist(x.float(), y.float(), c), expected.float(), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("c", CURVATURES)
def test_exp_map_at_origin_matches_geoopt(c: float) -> None:
    g = torch.Generator().manual_seed(3)
    v = torch.randn(10, 4, generator=g, dtype=torch.float64) * 3 / math.sqrt(c)
    v[0] = 0.0
    m = manifold(c)
    tangent = torch.cat([torch.zeros(10, 1, dtype=torch.float64), v], -1)  # time part 0
    lifted = m.expmap0(tangent)
    x = lorentz.exp_map0(v, c)
    torch.testing.assert_close(x, lifted[:, 1:])
    torch.testing.assert_close(lorentz.time_component(x, c), lifted[:, 0])


@pytest.mark.parametrize("c", CURVATURES)
def test_exterior_angle_matches_tangent_vectors_and_reference_formula(c: float) -> None:
    x, y = random_points(10, 4, c, seed=4)[1:], random_points(10, 4, c, seed=5)[1:]
    m, ax, ay = manifold(c), ambient(x, c), ambient(y, c)
    # geoopt: angle at x between the outward radial direction -log_x(O) and log_x(y)
    origin = ambient(torch.zeros_like(x), c)
    outward, towards_y = -m.logmap(ax, origin), m.logmap(ax, ay)
    cos = m.inner(ax, outward, towards_y) / (
        m.inner(ax, outward, outward).sqrt() * m.inner(ax, towards_y, towards_y).sqrt()
    )
    torch.testing.assert_close(lorentz.exterior_angle(x, y, c), torch.acos(cos))
    # REFERENCE.md section 6: acos((y_t + L x_t) / (|x| sqrt(L^2 - 1))), L = c <x, y>_L
    big_l = c * lorentz.lorentz_inner(x, y, c)
    numerator = lorentz.time_component(y, c) + big_l * lorentz.time_component(x, c)
    reference = torch.acos(numerator / (x.norm(dim=-1) * (big_l**2 - 1).sqrt()))
    torch.testing.assert_close(lorentz.exterior_angle(x, y, c), reference)
    pairwise = lorentz.pairwise_exterior_angle(x, y, c)
    torch.testing.assert_close(pairwise.diagonal(), reference)
    torch.testing.assert_close(pairwise[2, 5], lorentz.exterior_angle(x[2], y[5], c))


# -- known values --------------------------------------------------------------------------------


def test_known_angles_and_apertures() -> None:
    c = 2.0
    x = torch.tensor([0.6, -0.8, 0.0])
    assert lorentz.exterior_angle(x, 3 * x, c).item() == pytest.approx(0.0, abs=1e-6)
    assert lorentz.exterior_angle(x, -x, c).item() == pytest.approx(math.pi, abs=1e-6)
    assert lorentz.exterior_angle(x, 0.5 * x, c).item() == pytest.approx(math.pi, abs=1e-6)
    assert lorentz.exterior_angle(x, torch.zeros(3), c).item() == pytest.approx(math.pi)
    # undefined at the origin and at y = x: 0 by convention (inside the cone)
    assert lorentz.exterior_angle(torch.zeros(3), x, c).item() == 0.0
    assert lorentz.exterior_angle(x, x, c).item() == 0.0
    # near the origin the exterior angle tends to the angle at the origin
    y = torch.tensor([0.0, 1.0, 0.0])
    angle_at_origin = math.acos(-0.8)
    assert lorentz.exterior_angle(1e-6 * x, y, c).item() == pytest.approx(angle_at_origin)
    # half-aperture asin(2K / (sqrt(c)|x|)), just under pi/2 near the origin
    assert lorentz.half_aperture(x, c).item() == pytest.approx(math.asin(0.2 / math.sqrt(2)))
    assert lorentz.half_aperture(x, c, min_radius=0.2).item() == pytest.approx(
        math.asin(0.4 / math.sqrt(2))
    )
    near = lorentz.half_aperture(torch.zeros(2, 3), c)
    assert torch.all(near < math.pi / 2) and torch.all(near > math.pi / 2 - 2e-3)


def test_zero_vectors_map_to_the_origin_with_identity_derivative() -> None:
    zero = torch.zeros(5)
    assert torch.equal(lorentz.exp_map0(zero, 1.5), zero)
    jacobian = torch.autograd.functional.jacobian(lambda v: lorentz.exp_map0(v, 1.5), zero)
    torch.testing.assert_close(jacobian, torch.eye(5))
    assert lorentz.time_component(zero, 4.0).item() == pytest.approx(0.5)
    assert lorentz.dist(zero, zero, 1.0).item() == pytest.approx(0.0, abs=1e-12)


def test_distance_is_stable_where_the_textbook_formula_cancels() -> None:
    """fp32 at norm 1e4: -c<x,x>_L should be 1 but its rounding error is ~8 (ulp of 1e8), so
    acosh(-c<x,y>_L) loses every digit; the polar form keeps them."""
    points = torch.tensor([[1234.5678, -9876.54321, 321.123], [7071.1, 7071.0, 13.7]])
    textbook_error = (-lorentz.lorentz_inner(points, points, 1.0) - 1).abs()
    assert textbook_error.max().item() > 0.5
    assert lorentz.dist(points, points, 1.0).max().item() < 1e-6
    assert lorentz.pairwise_dist(points, points, 1.0).diagonal().max().item() < 1e-6
    # on one ray, at |x| ~ 1e4 and half that: d = asinh(|x|) - asinh(|x| / 2) ~ ln 2
    norm = points.double().norm(dim=-1)
    expected = torch.asinh(norm) - torch.asinh(norm / 2)
    torch.testing.assert_close(
        lorentz.dist(points, points / 2, 1.0).double(), expected, rtol=1e-5, atol=0.0
    )


def test_python_curvature_must_be_positive() -> None:
    with pytest.raises(ValueError, match="curvature"):
        lorentz.dist(torch.ones(2), torch.zeros(2), 0.0)


# -- properties: norms 0..1e4, fp32 and bf16 autocast ---------------------------------------------

NORMS = st.one_of(
    st.floats(0.0, 1e4, allow_nan=False),
    st.floats(-30.0, 4.0).map(lambda e: 10.0**e),  # log-uniform down to 1e-30
    st.sampled_from([0.0, 1e4]),
)
MODES = ("fp32", "autocast-bf16", "bf16-inputs")


@st.composite
def point_pairs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Two (4, dim) fp32 batches with norms in [0, 1e4]; y sometimes repeats rows of x."""
    dim = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    points = []
    for _ in range(2):
        norms = torch.tensor(draw(st.lists(NORMS, min_size=4, max_size=4)))
        directions = torch.nn.functional.normalize(torch.randn(4, dim, generator=g), dim=-1)
        points.append(directions * norms.unsqueeze(-1))
    x, y = points
    if draw(st.booleans()):
        y[:2] = x[:2]
    return x, y, draw(st.sampled_from(CURVATURES))


def _apply(mode: str, fn, *tensors: torch.Tensor):
    if mode == "bf16-inputs":
        return fn(*(t.bfloat16() for t in tensors))
    if mode == "autocast-bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(*tensors)
    return fn(*tensors)


def _all_outputs(x: torch.Tensor, y: torch.Tensor, c: float) -> dict[str, torch.Tensor]:
    return {
        "time": lorentz.time_component(x, c),
        "inner": lorentz.lorentz_inner(x, y, c),
        "dist": lorentz.dist(x, y, c),
        "pairwise_dist": lorentz.pairwise_dist(x, y, c),
        "dist0": lorentz.dist0(x, c),
        "exp_map0": lorentz.exp_map0(x, c),
        "half_aperture": lorentz.half_aperture(x, c),
        "exterior_angle": lorentz.exterior_angle(x, y, c),
        "pairwise_angle": lorentz.pairwise_exterior_angle(x, y, c),
    }


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=40, deadline=None)
@given(pair=point_pairs())
def test_no_nan_or_inf_and_fp32_outputs_and_finite_gradients(mode: str, pair) -> None:
    x, y, c = pair
    x.requires_grad_(True)
    y.requires_grad_(True)
    outputs = _apply(mode, lambda a, b: _all_outputs(a, b, c), x, y)
    for name, value in outputs.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value).all(), name
    for name, value in outputs.items():
        grads = torch.autograd.grad(value.sum(), (x, y), allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads), name


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=40, deadline=None)
@given(pair=point_pairs())
def test_distance_properties(mode: str, pair) -> None:
    x, y, c = pair
    same = _apply(mode, lambda a: lorentz.dist(a, a, c), x)
    assert same.max().item() < 1e-6
    assert _apply(mode, lambda a: lorentz.pairwise_dist(a, a, c), x).diagonal().max() < 1e-6
    d_xy = _apply(mode, lambda a, b: lorentz.dist(a, b, c), x, y)
    torch.testing.assert_close(d_xy, _apply(mode, lambda a, b: lorentz.dist(b, a, c), x, y))
    pairwise = _apply(mode, lambda a, b: lorentz.pairwise_dist(a, b, c), x, y)
    torch.testing.assert_close(
        pairwise, _apply(mode, lambda a, b: lorentz.pairwise_dist(b, a, c), x, y).T
    )
    torch.testing.assert_close(pairwise.diagonal(), d_xy, rtol=1e-5, atol=1e-5)
    assert (d_xy >= 0).all()


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=40, deadline=None)
@given(pair=point_pairs())
def test_exp_map_clamp_and_cone_ranges(mode: str, pair) -> None:
    x, y, c = pair
    if mode == "bf16-inputs":  # compare with what the functions actually received
        x, y = x.bfloat16().float(), y.bfloat16().float()
    # exp_map0 clamps sqrt(c)|v| at asinh(2**15): lifted points have sqrt(c)|x| <= 2**15
    lifted = _apply(mode, lambda a: lorentz.exp_map0(a, c), x)
    assert (math.sqrt(c) * lifted.norm(dim=-1) <= 2.0**15 * (1 + 1e-3)).all()
    aperture = _apply(mode, lambda a: lorentz.half_aperture(a, c), x)
    assert ((aperture > 0) & (aperture < math.pi / 2)).all()
    for fn in (lorentz.exterior_angle, lorentz.pairwise_exterior_angle):
        angle = _apply(mode, lambda a, b, fn=fn: fn(a, b, c), x, y)
        assert ((angle >= 0) & (angle <= math.pi + 1e-6)).all()


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.0])
def test_fast_pairwise_angle_matches_the_stable_one_and_its_gradient_is_exact(
    scale: float,
) -> None:
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(5, 4, dtype=torch.float64, generator=generator) * scale).requires_grad_()
    y = (torch.randn(6, 4, dtype=torch.float64, generator=generator) * scale).requires_grad_()
    c = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    fast = lorentz.pairwise_exterior_angle_fast(x, y, c)
    assert torch.allclose(fast, lorentz.pairwise_exterior_angle(x, y, c), atol=1e-9)
    assert torch.autograd.gradcheck(lorentz.pairwise_exterior_angle_fast, (x, y, c))


def test_fast_pairwise_angle_is_zero_with_no_gradient_at_the_origin() -> None:
    x = torch.tensor([[0.0, 0.0], [0.3, -0.2]], requires_grad=True)
    y = torch.tensor([[0.5, 0.1], [0.3, -0.2]], requires_grad=True)
    angle = lorentz.pairwise_exterior_angle_fast(x, y, torch.tensor(1.0))
    assert angle[0].tolist() == [0.0, 0.0] and float(angle[1, 1].detach()) == 0.0
    angle.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert x.grad[0].tolist() == [0.0, 0.0]
