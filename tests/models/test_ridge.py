"""The ridge module (text2brain.models.ridge) against brute force on tiny problems.

Leave-one-out errors against refitting without each sample, coefficients against the normal
equations, dense and sparse input, float32 and float64, the reduced-rank factors, the
edge-of-grid warning and the errors for bad input.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from text2brain.models import ridge
from text2brain.models.ridge import RELATIVE_ALPHAS, RidgeFit, fit_ridge, fit_ridge_path

ALPHAS = [0.01, 0.3, 2.0, 30.0]


def _normal_equations(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and intercept of ridge with an unpenalised intercept, in float64."""
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc = x - mean_x
    coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - mean_y))
    return coef, mean_y - mean_x @ coef


def _refit_loo_error(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """Mean squared error of predicting each sample from a fit on all the others."""
    residuals = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        coef, intercept = _normal_equations(x[keep], y[keep], alpha)
        residuals.append(y[i] - (x[i] @ coef + intercept))
    return float(np.mean(np.square(residuals)))


def _problem(n: int = 14, p: int = 6, m: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sparse-looking features with two identical columns (a null direction of Xc^T Xc)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, p)) * (rng.random((n, p)) < 0.5)
    x[:, p - 1] = x[:, p - 2]
    y = x @ rng.standard_normal((p, m)) + 0.5 * rng.standard_normal((n, m))
    return x, y


def _quiet_fit(*args: object, **kwargs: object) -> RidgeFit:
    """fit_ridge without its edge-of-grid warning (tests of other things on tiny grids)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ridge: leave-one-out chose")
        return fit_ridge(*args, **kwargs)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_loo_errors_and_coefficients_match_brute_force(sparse: bool, dtype: torch.dtype) -> None:
    x, y = _problem()
    fit = _quiet_fit(sp.csr_matrix(x) if sparse else x, y, ALPHAS, loo_voxels=None, dtype=dtype)
    brute = [_refit_loo_error(x, y, alpha) for alpha in ALPHAS]
    tolerance = 1e-9 if dtype == torch.float64 else 1e-4
    assert fit.loo_errors == pytest.approx(brute, rel=tolerance)
    assert fit.alphas == ALPHAS and fit.alpha == ALPHAS[int(np.argmin(brute))]
    coef, intercept = _normal_equations(x, y, fit.alpha)
    assert fit.coef.dtype == fit.intercept.dtype == torch.float32
    assert fit.coef.numpy() == pytest.approx(coef, abs=1e-5)
    assert fit.intercept.numpy() == pytest.approx(intercept, abs=1e-5)
    assert fit.factors is None


def test_relative_alphas_are_in_units_of_the_mean_squared_singular_value() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=generator, dtype=torch.float64)
    y = x @ torch.randn(4, 6, generator=generator, dtype=torch.float64)
    y += 0.3 * torch.randn(30, 6, generator=generator, dtype=torch.float64)
    relative = [0.01, 0.3, 3.0]
    fit = _quiet_fit(x, y, relative, relative=True, loo_voxels=None, dtype=torch.float64)
    scale = float(torch.linalg.svdvals(x - x.mean(0)).square().mean())
    assert fit.alphas == pytest.approx([r * scale for r in relative], rel=1e-12)
    brute = [_refit_loo_error(x.numpy(), y.numpy(), alpha) for alpha in fit.alphas]
    assert fit.loo_errors == pytest.approx(brute, rel=1e-9)
    assert fit.loo_errors[1] < fit.loo_errors[2]  # a heavy penalty underfits this data
    # With fewer samples than features the mean runs over the min(n, p) singular values.
    wide = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    fit = _quiet_fit(wide, y[:5], [1.0], relative=True, loo_voxels=None)
    singular = torch.linalg.svdvals(wide - wide.mean(0))  # 5 of them
    assert fit.alpha == pytest.approx(float(singular.square().mean()))


def test_dense_and_sparse_input_give_the_same_fit() -> None:
    x, y = _problem(n=40, p=12, m=20, seed=2)
    dense = _quiet_fit(x, y, ALPHAS, loo_voxels=5, dtype=torch.float64)
    sparse = _quiet_fit(sp.csr_matrix(x), y, ALPHAS, loo_voxels=5, dtype=torch.float64)
    assert dense.alpha == sparse.alpha
    assert dense.loo_errors == pytest.approx(sparse.loo_errors, rel=1e-9)
    assert torch.allclose(dense.coef, sparse.coef, atol=1e-6)
    # The intercepts come back as float32: the two paths differ by up to 1e-4 on an AVX2-only
    # EPYC (1e-6 on Zen 4 and Sapphire Rapids).
    assert torch.allclose(dense.intercept, sparse.intercept, atol=5e-4)
    # A tensor, an array and a float32 tensor of the same features fit alike.
    same = _quiet_fit(torch.from_numpy(x).float(), y, ALPHAS, loo_voxels=5, dtype=torch.float64)
    assert torch.allclose(same.coef, dense.coef, atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_float32_and_float64_are_close(sparse: bool) -> None:
    x, y = _problem(n=200, p=30, m=50, seed=3)
    features = sp.csr_matrix(x) if sparse else x
    single = _quiet_fit(features, y, ALPHAS, loo_voxels=None, dtype=torch.float32)
    double = _quiet_fit(features, y, ALPHAS, loo_voxels=None, dtype=torch.float64)
    assert single.alpha == double.alpha
    assert single.loo_errors == pytest.approx(double.loo_errors, rel=1e-5)
    scale = float(double.coef.abs().max())
    # float32 eigenvalues are exact to ~1e-7 of the largest: 1e-4 of it in the smallest
    # directions, here s2_max / alpha ~ 1e3.
    assert float((single.coef - double.coef).abs().max()) < 1e-4 * scale
    assert torch.allclose(single.intercept, double.intercept, atol=1e-5)


def test_loo_on_a_voxel_subset() -> None:
    x, y = _problem(n=20, p=4, m=50, seed=1)
    features = sp.csr_matrix(x)
    grid = [0.1, 1.0, 10.0]
    fit = _quiet_fit(features, y, grid, loo_voxels=10, seed=3)
    assert fit.coef.shape == (4, 50) and fit.intercept.shape == (50,) and len(fit.loo_errors) == 3
    # The subset scores the alphas; the coefficients are those of every voxel all the same.
    every = _quiet_fit(features, y, [fit.alpha], loo_voxels=None)
    assert torch.allclose(fit.coef, every.coef) and torch.allclose(fit.intercept, every.intercept)
    assert _quiet_fit(features, y, grid, loo_voxels=10, seed=3).loo_errors == fit.loo_errors
    assert _quiet_fit(features, y, grid, loo_voxels=10, seed=4).loo_errors != fit.loo_errors
    whole = _quiet_fit(features, y, grid, loo_voxels=None)
    assert _quiet_fit(features, y, grid, loo_voxels=50).loo_errors == whole.loo_errors


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_an_alpha_at_either_edge_of_the_grid_is_warned_about(sparse: bool) -> None:
    rng = np.random.default_rng(4)
    x = rng.random((60, 5))
    features = sp.csr_matrix(x) if sparse else x
    grid = [1e-4, 1e-2, 1.0, 100.0, 1e4]
    exact = x @ rng.standard_normal((5, 8))  # no noise: the smallest penalty wins
    with pytest.warns(UserWarning, match=r"alpha 0\.0001, the smallest of the grid \[0\.0001,"):
        assert fit_ridge(features, exact, grid).alpha == 1e-4
    noise = rng.standard_normal((60, 8))  # unrelated to x: the largest penalty wins
    with pytest.warns(UserWarning, match=r"alpha 10000, the largest of the grid .*10000\.0\]"):
        assert fit_ridge(features, noise, grid).alpha == 1e4
    # Relative grids name the unit; the edge is by value, whatever the order of the grid.
    with pytest.warns(UserWarning, match=r"alpha 0\.0001 x the mean squared singular value"):
        fit_ridge(features, exact, grid[::-1], relative=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_ridge(features, exact, [1e-4])  # a grid of one has no edge to widen
        middle = fit_ridge(features, exact + 0.3 * noise, RELATIVE_ALPHAS, relative=True)
        assert middle.alpha not in (min(middle.alphas), max(middle.alphas))


def test_reduced_rank_keeps_the_top_directions_of_the_fitted_values() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(200, 12, generator=generator, dtype=torch.float64)
    # Maps from 2 spatial modes driven by the features, plus noise in every voxel.
    modes = torch.randn(2, 50, generator=generator, dtype=torch.float64)
    y = x[:, :2] @ modes + 0.5 * torch.randn(200, 50, generator=generator, dtype=torch.float64)
    full = fit_ridge(x, y, [0.01], relative=True, loo_voxels=None, dtype=torch.float64)
    weight_in, weight_out = full.factored()
    assert torch.equal(weight_in, torch.eye(12)) and torch.equal(weight_out, full.coef)
    low = fit_ridge(x, y, [0.01], relative=True, loo_voxels=None, rank=2, dtype=torch.float64)
    assert low.alpha == full.alpha and low.factored() is low.factors
    weight_in, weight_out = low.factors
    assert weight_in.shape == (12, 2) and weight_out.shape == (2, 50)
    assert torch.allclose(weight_out @ weight_out.T, torch.eye(2), atol=1e-5)
    assert torch.allclose(low.coef, weight_in @ weight_out)
    # Brute force: the rank-2 truncation of the full fit's centred fitted values.
    xc = x - x.mean(0)
    u, s, vt = torch.linalg.svd(xc @ full.coef.double(), full_matrices=False)
    assert torch.allclose(xc @ low.coef.double(), (u[:, :2] * s[:2]) @ vt[:2], atol=1e-4)
    # The intercept is that of the reduced coefficients.
    expected = y.mean(0) - x.mean(0) @ low.coef.double()
    assert torch.allclose(low.intercept.double(), expected, atol=1e-5)
    # The 2 true modes are what the rank-2 fit keeps: it recovers them better than the full
    # rank, which also fits the noise.
    truth = x[:, :2] @ modes
    error = {
        name: float(((x @ f.coef.double() + f.intercept - truth) ** 2).mean())
        for name, f in (("full", full), ("low", low))
    }
    assert error["low"] < error["full"]
    # Sparse input factors alike; a rank of p keeps everything.
    sparse = fit_ridge(
        sp.csr_matrix(x.numpy()), y, [low.alpha], loo_voxels=None, rank=2, dtype=torch.float64
    )
    assert torch.allclose(sparse.coef, low.coef, atol=1e-5)
    assert fit_ridge(x, y, [0.01], relative=True, rank=12).factors is None


def test_bad_input_is_named() -> None:
    x, y = _problem(n=20, p=4, m=5)
    with pytest.raises(ValueError, match="features have 20 rows but targets have 19"):
        fit_ridge(x, y[:19])
    with pytest.raises(ValueError, match="features have 20 rows but targets have 19"):
        fit_ridge(sp.csr_matrix(x), y[:19])
    with pytest.raises(ValueError, match="alphas is empty"):
        fit_ridge(x, y, [])
    for bad in ([0.0, 1.0], [-1.0], [float("nan")]):
        with pytest.raises(ValueError, match="alphas must be positive"):
            fit_ridge(x, y, bad)
    with pytest.raises(ValueError, match="rank 5 is larger than the number of features, 4"):
        fit_ridge(x, y, rank=5)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="rank must be a positive int or None"):
            fit_ridge(x, y, rank=bad)
    with pytest.raises(ValueError, match="rank 3 is more than the 2 directions"):
        fit_ridge(x, y[:, :2], [1.0], rank=3)  # 2 targets: fitted values of rank 2 at most
    with pytest.raises(ValueError, match="loo_voxels must be a positive int"):
        fit_ridge(x, y, loo_voxels=0)
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        fit_ridge(x, y, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"must be 2-d, got shapes \(20, 4\) and \(20,\)"):
        fit_ridge(x, y[:, 0])
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        fit_ridge(x[:1], y[:1])


def test_target_rows_fit_as_the_copied_targets_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several samples sharing one target (texts of one article): the same penalty, errors
    and coefficients as the fit on the repeated rows, with the leave-one-out in row blocks."""
    monkeypatch.setattr(ridge, "_ROW_BLOCK", 7)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(50, 8, generator=generator, dtype=torch.float64)
    targets = torch.randn(20, 300, generator=generator)
    rows = torch.randint(0, 20, (50,), generator=generator)
    options = {"loo_voxels": 100, "rank": 4, "dtype": torch.float64}
    copied = fit_ridge(features, targets[rows], [0.1, 1.0, 10.0, 100.0], **options)
    shared = fit_ridge(features, targets, [0.1, 1.0, 10.0, 100.0], target_rows=rows, **options)
    assert shared.alpha == copied.alpha
    np.testing.assert_allclose(shared.loo_errors, copied.loo_errors, rtol=1e-10)
    torch.testing.assert_close(shared.coef, copied.coef, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.intercept, copied.intercept, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_the_path_holds_the_fit_of_every_alpha(sparse: bool) -> None:
    """`fit_ridge_path`: one fit per penalty, in order, each the fit `fit_ridge` gives with that
    penalty alone (with a reduced rank and shared targets too); no penalty is chosen, so none
    at a grid's edge is warned about."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(40, 8, generator=generator, dtype=torch.float64)
    targets = torch.randn(25, 200, generator=generator)
    rows = torch.randint(0, 25, (40,), generator=generator)
    if sparse:
        features, targets, rows = sp.csr_matrix(features.numpy()), targets[rows], None
    options = {"relative": True, "loo_voxels": 50, "rank": 3, "target_rows": rows}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = fit_ridge_path(features, targets, ALPHAS, **options)
    assert [fit.alpha for fit in path] == path[0].alphas and len(path) == len(ALPHAS)
    for alpha, fit in zip(ALPHAS, path, strict=True):
        alone = fit_ridge(features, targets, [alpha], **options)
        assert fit.alpha == pytest.approx(alone.alpha)
        torch.testing.assert_close(fit.coef, alone.coef)
        torch.testing.assert_close(fit.intercept, alone.intercept)
        torch.testing.assert_close(fit.factored()[1], alone.factored()[1])
    best = fit_ridge(features, targets, ALPHAS, **options)  # the path's loo errors choose it
    torch.testing.assert_close(path[int(np.argmin(path[0].loo_errors))].coef, best.coef)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (torch.zeros(49, dtype=torch.long), "one entry per feature row"),
        (torch.full((50,), 20), "must index the 20 targets"),
    ],
)
def test_bad_target_rows_are_refused(rows: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_ridge(torch.randn(50, 8), torch.randn(20, 30), [1.0], target_rows=rows)
