"""Ridge regression of many targets on the same features, one penalty chosen by leave-one-out.

Why one module: the Text2Brain readout (dense text embeddings -> maps) and the NeuroQuery-style
head (sparse TF-IDF of terms -> maps) fit the same model, every voxel regressed on the same
features with one penalty for all, chosen by efficient leave-one-out. They differ only in the
input (dense or sparse), the precision, how the penalty grid is scaled and the readout's rank
limit, which are options here. No Lightning here.

The maths. With an unpenalised intercept, centre the features, Xc = X - 1 mu^T (n x p), and the
targets, Yc = Y - 1 ybar^T (n x m). Write Xc^T Xc = V diag(s2) V^T and P = Xc V (n x k). For
every penalty alpha the hat matrix is

    H(alpha) = 1 1^T / n + P diag(1 / (s2 + alpha)) P^T,

so the leave-one-out residual of sample i at every target is e_i / (1 - H_ii), with
e = Yc - P diag(1 / (s2 + alpha)) P^T Yc: one matrix product per alpha, no refit and no loop
over samples or targets. Working with P rather than the left singular vectors (P / s) never
divides by a singular value, so null directions (terms that always co-occur) need no cut-off.
The alpha with the smallest mean squared leave-one-out error is chosen, and the coefficients of
all targets are B = V diag(1 / (s2 + alpha)) V^T Xc^T Yc = V diag(1 / (s2 + alpha)) P^T Yc.

The spectrum: dense features by a thin SVD of Xc (k = min(n, p), P = U diag(s)), accurate and
cheap for a few hundred embedding dimensions; sparse features by the eigendecomposition of the
p x p centred Gram matrix X^T X - n mu mu^T (k = p), which never forms Xc densely.

Penalties are absolute or, with `relative=True`, in units of the mean squared singular value
of Xc, trace(Xc^T Xc) / min(n, p), so that the grid does not depend on the features' scale
(an encoder's output norm). The leave-one-out error can be scored on a random subset of the
targets (`loo_voxels`): maps are smooth, so a few thousand voxels rank the penalties as all of
them do, at a fraction of the cost. A chosen penalty at either end of the grid is warned about:
the best one may lie outside it.

A rank limit r (reduced-rank ridge) keeps only the r directions of the fitted values that carry
most of their variance: B becomes B V_r V_r^T, with V_r the top right singular vectors of the
fitted values Xc B = P V^T B, found from the small (k x m) matrix diag(s) V^T B (P^T P =
diag(s2)). Why: brain maps share few spatial modes, so the discarded directions are mostly
fitted noise; on NeuroQuery (MiniLM titles) a rank-32 readout scores higher on validation than
the full rank 384 and stores 12x fewer numbers.

Precision: `dtype` is that of the spectrum and the leave-one-out errors; float64 for a few
hundred dense dimensions, float32 for a Gram matrix of thousands of terms (its float64
eigendecomposition is ~5x slower on a CPU; eigenvalue errors are ~1e-7 of the largest, far below
any useful alpha). The products over all targets run in float32, chunk by chunk of targets,
either way: a float64 copy of all maps (2.3 GB on NeuroQuery) would be the fit's peak memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from text2brain.models.components.terms import as_torch_csr

#: Default absolute penalties, 0.1 .. 1000 in half decades: TF-IDF rows have unit norm, and on
#: NeuroQuery the leave-one-out error is smallest near 30 and flat within a decade of it.
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 3, 9))

#: Relative penalties (`relative=True`), 0.001 .. 10 in half decades of the mean squared
#: singular value: the grid of the Text2Brain readout, whatever the encoder's output scale.
RELATIVE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 1, 9))

#: Target columns per chunk of the all-target products (n x 4096 float32 at a time).
_CHUNK = 4096
#: Samples per block of the leave-one-out residuals (8192 x 4096 float64: 268 MB at a time).
_ROW_BLOCK = 8192


@dataclass
class RidgeFit:
    """targets ~ features @ coef + intercept, at the penalty the leave-one-out chose.

    coef: (p, m) float32; with a rank limit r < p it is `factors[0] @ factors[1]`.
    intercept: (m,) float32.
    alpha: the chosen penalty, absolute (for a relative grid: relative value x scale).
    alphas: the absolute penalties tried, in the order given; loo_errors: the mean squared
        leave-one-out error of each (on the sampled targets).
    factors: with a rank limit r < p, (p, r) and (r, m) with orthonormal rows; else None.
    """

    coef: Tensor
    intercept: Tensor
    alpha: float
    alphas: list[float]
    loo_errors: list[float]
    factors: tuple[Tensor, Tensor] | None = None

    def factored(self) -> tuple[Tensor, Tensor]:
        """coef as (p, r) @ (r, m): the rank-limited factors, or the identity and coef."""
        if self.factors is not None:
            return self.factors
        return torch.eye(self.coef.shape[0]), self.coef


class _CentredSpectrum:
    """The spectrum of the centred features: V (p, k), s2 (k,), P = Xc V (n, k), and their
    mean mu (p,) in float64; for dense features also U (n, k) and s (k,) of the thin SVD, for
    sparse ones X^T and the column sums, which the coefficients use instead of P."""

    def __init__(self, features: Tensor | sp.spmatrix, dtype: torch.dtype) -> None:
        self.n, self.p = features.shape
        self.sparse = sp.issparse(features)
        if self.sparse:
            csr = sp.csr_matrix(features, dtype=np.float64)
            mean = np.asarray(csr.mean(axis=0)).ravel()
            gram = (csr.T @ csr).toarray() - self.n * np.outer(mean, mean)
            s2, self.vectors = torch.linalg.eigh(torch.from_numpy(gram).to(dtype))
            self.s2 = s2.clamp_min(0.0)
            self.mean = torch.from_numpy(mean)
            # P = X V - 1 (mu^T V); in float32 the sparse product runs in torch (multi-threaded).
            if dtype == torch.float32:
                product = as_torch_csr(csr) @ self.vectors
            else:
                product = torch.from_numpy(csr @ self.vectors.numpy())
            self.projected = product - self.mean.to(dtype) @ self.vectors
            self.transposed = as_torch_csr(csr.T)
            self.column_sums = torch.from_numpy(np.asarray(csr.sum(axis=0)).ravel()).float()
        else:
            x = features.double()
            self.mean = x.mean(0)
            u, self.singular, vt = torch.linalg.svd((x - self.mean).to(dtype), full_matrices=False)
            self.vectors, self.s2 = vt.T, self.singular.square()
            self.projected, self.left = u * self.singular, u.float()

    def loo_errors(
        self, sample: Tensor, mean: Tensor, alphas: Sequence[float], rows: Tensor | None = None
    ) -> list[float]:
        """Mean squared leave-one-out error of each alpha, on the targets `sample` (n, c) (with
        `rows`: the distinct targets, sample i's being ``sample[rows[i]]``) centred by `mean`
        (c,). Row block by row block: with many samples (several texts per article) the
        (n, c) residuals of all rows at once would take gigabytes."""
        blocks = [slice(start, start + _ROW_BLOCK) for start in range(0, self.n, _ROW_BLOCK)]

        def centred(block: slice) -> Tensor:
            part = sample[block] if rows is None else sample[rows[block]]
            return part.to(self.projected.dtype) - mean.to(self.projected.dtype)

        # (k, c), shared by every alpha
        weights = sum(self.projected[block].T @ centred(block) for block in blocks)
        totals = [0.0] * len(alphas)
        for block in blocks:
            projected, targets = self.projected[block], centred(block)
            squared = projected.square()
            for i, alpha in enumerate(alphas):
                inverse = 1.0 / (self.s2 + alpha)
                leverage = 1.0 / self.n + squared @ inverse
                residual = targets - projected @ (inverse[:, None] * weights)
                totals[i] += float((residual / (1.0 - leverage)[:, None]).square().sum())
        return [total / (self.n * sample.shape[1]) for total in totals]

    def coefficients(
        self,
        targets: Tensor,
        target_mean: Tensor,
        alphas: Sequence[float],
        rows: Tensor | None = None,
    ) -> list[Tensor]:
        """B (p, m) float32 for all `targets` at each of `alphas`, chunk by chunk of targets;
        the product with the targets, the costly part, is formed once for all alphas.

        Dense: B = [V diag(s / (s2 + alpha))] U^T Yc. Sparse: B = [V diag(1 / (s2 + alpha))
        V^T] (X^T Y - (X^T 1) ybar^T), a sparse product rather than a dense (n, p) one. The
        bracket is formed in `dtype`, the products over targets in float32.

        `targets` is (n, m), or with `rows` (n,) the distinct targets, sample i's being
        ``targets[rows[i]]`` (dense features only): U's rows of the samples that share a
        target are summed first, U^T Y[rows] = (A^T U)^T Y with A the sample -> target
        incidence, so the repeated targets are never copied.
        """
        if self.sparse:  # (Xc^T Xc + alpha I)^-1, (p, p)
            solves = [
                ((self.vectors * (1.0 / (self.s2 + a))) @ self.vectors.T).float() for a in alphas
            ]
        else:  # (p, k)
            solves = [(self.vectors * (self.singular / (self.s2 + a))).float() for a in alphas]
        left = self.transposed if self.sparse else self.left.T  # (p or k, n)
        row_sums = self.column_sums if self.sparse else self.left.sum(0)
        if rows is not None:  # dense only (fit_ridge checks): sum U's rows per target
            left = torch.zeros(len(targets), self.left.shape[1]).index_add_(0, rows, self.left).T
        coefs = [torch.empty(self.p, targets.shape[1]) for _ in alphas]
        for start in range(0, targets.shape[1], _CHUNK):
            part = slice(start, start + _CHUNK)
            rhs = left @ targets[:, part].float().contiguous()
            rhs -= row_sums[:, None] * target_mean[part].float()[None, :]
            for coef, solve in zip(coefs, solves, strict=True):
                coef[:, part] = solve @ rhs
        return coefs

    def reduce_rank(self, coef: Tensor, rank: int) -> tuple[Tensor, Tensor]:
        """(p, rank) and (rank, m) factors of B V_r V_r^T, V_r (m, rank) the top right singular
        vectors of the fitted values Xc B, i.e. of diag(s) V^T B."""
        small = (self.s2.sqrt()[:, None] * self.vectors.T).float() @ coef
        _, _, directions = torch.linalg.svd(small, full_matrices=False)
        if len(directions) < rank:
            raise ValueError(
                f"rank {rank} is more than the {len(directions)} directions the fitted values "
                f"have ({self.n} samples, {self.p} features, {coef.shape[1]} targets)"
            )
        weight_out = directions[:rank].contiguous()  # orthonormal rows
        return coef @ weight_out.T, weight_out


def fit_ridge(
    features: Tensor | np.ndarray | sp.spmatrix,
    targets: Tensor | np.ndarray,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    relative: bool = False,
    loo_voxels: int | None = 1000,
    seed: int = 0,
    rank: int | None = None,
    dtype: torch.dtype = torch.float32,
    target_rows: Tensor | np.ndarray | None = None,
) -> RidgeFit:
    """Ridge of every target column on `features`, one alpha for all by leave-one-out.

    Args:
        features: (n, p), dense (tensor or array) or scipy sparse; one row per sample.
        targets: (n, m), e.g. one brain map per row.
        alphas: penalties to try (at least one, all > 0).
        relative: `alphas` are in units of the mean squared singular value of the centred
            features rather than absolute.
        loo_voxels: score the alphas on this many target columns drawn at random (None: all).
        seed: seed of that draw.
        rank: keep this many directions of the fitted values (reduced-rank ridge); None or p
            keeps all.
        dtype: torch.float32 or torch.float64, the precision of the spectrum and of the
            leave-one-out errors; the coefficients are float32 either way.
        target_rows: (n,) ints: sample i's target is ``targets[target_rows[i]]``, so many
            samples can share one target (several texts of one article) without a copy of
            the repeated rows; None: row i of `targets` (then (n, m)). Dense features only.

    Warns (`warnings.warn`) when the chosen alpha is the smallest or the largest of a grid of
    more than one.
    """
    return _fit(
        features,
        targets,
        alphas,
        relative=relative,
        loo_voxels=loo_voxels,
        seed=seed,
        rank=rank,
        dtype=dtype,
        target_rows=target_rows,
        every_alpha=False,
    )[0]


def fit_ridge_path(
    features: Tensor | np.ndarray | sp.spmatrix,
    targets: Tensor | np.ndarray,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    relative: bool = False,
    loo_voxels: int | None = 1000,
    seed: int = 0,
    rank: int | None = None,
    dtype: torch.dtype = torch.float32,
    target_rows: Tensor | np.ndarray | None = None,
) -> list[RidgeFit]:
    """`fit_ridge` at every one of `alphas`, in their order: one fit each (its `alpha` that
    penalty; `loo_errors` those of all), sharing the spectrum and the product of the targets
    with it, the costly parts. For choosing the penalty by another score than leave-one-out
    (text-ridge's validation Dice-AUC): a fit per penalty would repeat them. The arguments
    are `fit_ridge`'s; about len(alphas) x (p x m) float32 of coefficients are held at once.
    """
    return _fit(
        features,
        targets,
        alphas,
        relative=relative,
        loo_voxels=loo_voxels,
        seed=seed,
        rank=rank,
        dtype=dtype,
        target_rows=target_rows,
        every_alpha=True,
    )


def _fit(
    features: Tensor | np.ndarray | sp.spmatrix,
    targets: Tensor | np.ndarray,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    relative: bool = False,
    loo_voxels: int | None = 1000,
    seed: int = 0,
    rank: int | None = None,
    dtype: torch.dtype = torch.float32,
    target_rows: Tensor | np.ndarray | None = None,
    every_alpha: bool,
) -> list[RidgeFit]:
    """The fit of `fit_ridge` (the leave-one-out's alpha) or of `fit_ridge_path` (all)."""
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise ValueError("alphas is empty: give at least one ridge penalty")
    if not all(a > 0 and np.isfinite(a) for a in alphas):
        raise ValueError(f"alphas must be positive and finite, got {alphas}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if loo_voxels is not None and (isinstance(loo_voxels, bool) or loo_voxels < 1):
        raise ValueError(f"loo_voxels must be a positive int or None, got {loo_voxels!r}")
    if not sp.issparse(features):
        features = torch.as_tensor(features)
    targets = torch.as_tensor(targets)  # no copy: a float32 copy of all maps costs GBs
    if not targets.is_floating_point():
        targets = targets.float()
    if len(features.shape) != 2 or targets.ndim != 2:
        raise ValueError(
            f"features (n, p) and targets (n, m) must be 2-d, got shapes "
            f"{tuple(features.shape)} and {tuple(targets.shape)}"
        )
    n, p = features.shape
    rows = None
    if target_rows is not None:
        if sp.issparse(features):
            raise ValueError("target_rows needs dense features; give sparse ones one row each")
        rows = torch.as_tensor(np.asarray(target_rows)).long()
        if rows.shape != (n,):
            raise ValueError(
                f"target_rows must have one entry per feature row ({n}), got "
                f"shape {tuple(rows.shape)}"
            )
        if n and (rows.min() < 0 or rows.max() >= targets.shape[0]):
            raise ValueError(f"target_rows must index the {targets.shape[0]} targets' rows")
    elif targets.shape[0] != n:
        raise ValueError(f"features have {n} rows but targets have {targets.shape[0]}")
    if n < 2:
        raise ValueError(f"ridge regression needs at least 2 samples, got {n}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int or None, got {rank!r}")
    if rank is not None and rank > p:
        raise ValueError(f"rank {rank} is larger than the number of features, {p}")

    spectrum = _CentredSpectrum(features, dtype)
    scale = float(spectrum.s2.sum()) / min(n, p) if relative else 1.0
    absolute = [a * scale for a in alphas]
    # ybar in float64 row block by row block, not through a float64 copy of all targets; each
    # target weighted by how many samples it serves (1 each without target_rows).
    counts = torch.ones(len(targets), dtype=torch.float64)
    if rows is not None:
        counts = torch.bincount(rows, minlength=len(targets)).double()
    starts = range(0, len(targets), 1024)
    target_mean = (
        sum(
            counts[s : s + 1024] @ block.double()
            for s, block in zip(starts, targets.split(1024), strict=True)
        )
        / n
    )
    columns = torch.arange(targets.shape[1])
    if loo_voxels is not None and loo_voxels < targets.shape[1]:
        generator = torch.Generator().manual_seed(seed)
        columns = torch.randperm(targets.shape[1], generator=generator)[:loo_voxels].sort().values
    sample = targets if len(columns) == targets.shape[1] else targets[:, columns]
    errors = spectrum.loo_errors(sample, target_mean[columns], absolute, rows)
    chosen = list(range(len(alphas))) if every_alpha else [int(np.argmin(errors))]
    if not every_alpha and len(alphas) > 1 and alphas[chosen[0]] in (min(alphas), max(alphas)):
        _warn_edge(alphas, chosen[0], relative, scale)

    fits = []
    coefs = spectrum.coefficients(targets, target_mean, [absolute[i] for i in chosen], rows)
    for index, coef in zip(chosen, coefs, strict=True):
        factors = None
        if rank is not None and rank < p:
            factors = spectrum.reduce_rank(coef, rank)
            coef = factors[0] @ factors[1]
        intercept = torch.empty(targets.shape[1])
        for start in range(0, targets.shape[1], _CHUNK):
            part = slice(start, start + _CHUNK)
            intercept[part] = (target_mean[part] - spectrum.mean @ coef[:, part].double()).float()
        fits.append(RidgeFit(coef, intercept, absolute[index], absolute, errors, factors))
    return fits


def _warn_edge(alphas: list[float], best: int, relative: bool, scale: float) -> None:
    edge = "smallest" if alphas[best] == min(alphas) else "largest"
    units = f" x the mean squared singular value {scale:.4g}" if relative else ""
    warnings.warn(
        f"ridge: leave-one-out chose alpha {alphas[best]:g}{units}, the {edge} of the grid "
        f"{[float(f'{a:.4g}') for a in alphas]}: the best penalty may lie outside it; widen "
        "the grid",
        stacklevel=4,
    )
