"""Ridge regression of every voxel on term features, one alpha by efficient leave-one-out.

No Lightning here. With an unpenalised intercept, centre the features, Xc = X - 1 mu^T, and
the targets, Yc = Y - 1 ybar^T. One symmetric eigendecomposition of the p x p centred Gram
matrix, Xc^T Xc = V diag(s2) V^T, gives the hat matrix for every penalty alpha at once:

    H(alpha) = 1 1^T / n + P diag(1 / (s2 + alpha)) P^T,   P = Xc V   (n x r),

so the leave-one-out residual of document i at every voxel is e_i / (1 - H_ii), with
e = Yc - P diag(1 / (s2 + alpha)) P^T Yc: one matrix product per alpha, no refit and no loop
over voxels or documents. Working with P rather than the left singular vectors (P / s) never
divides by a singular value, so null directions (terms that always co-occur) need no cut-off.
The alpha with the smallest mean squared leave-one-out error is chosen; the error is computed
on a random subset of voxels when `loo_voxels` is set (maps are smooth, so a few thousand
voxels rank the alphas as all of them do, at a fraction of the cost). The coefficients for all
voxels are then B = V diag(1 / (s2 + alpha)) V^T Xc^T Yc.

The eigendecomposition and the products run in float32 torch (multi-threaded LAPACK/BLAS; a
float64 eigendecomposition of a 5,000-term Gram matrix is ~5x slower on a CPU): eigenvalue
errors are ~1e-7 of the largest, far below any useful alpha.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from text2brain.models.components.terms import as_torch_csr

log = logging.getLogger(__name__)

#: Default penalties searched, 0.1 .. 1000 in half decades (TF-IDF rows have unit norm; on
#: NeuroQuery the leave-one-out error is smallest near 30 and flat within a decade of it).
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 3, 9))


@dataclass
class RidgeFit:
    """Coefficients (n_features, n_targets), intercept (n_targets,), the chosen alpha and the
    mean leave-one-out squared error of every alpha tried."""

    coef: Tensor
    intercept: Tensor
    alpha: float
    alphas: list[float]
    loo_errors: list[float]


class CentredGramSpectrum:
    """Eigendecomposition of the centred Gram matrix of sparse features, and P = Xc V."""

    def __init__(self, features: sp.csr_matrix) -> None:
        n = features.shape[0]
        if n < 2:
            raise ValueError(f"ridge regression needs at least 2 documents, got {n}")
        self.n = n
        self.features = sp.csr_matrix(features, dtype=np.float64)
        self.mean = np.asarray(self.features.mean(axis=0)).ravel()
        gram = (self.features.T @ self.features).toarray() - n * np.outer(self.mean, self.mean)
        s2, vectors = torch.linalg.eigh(torch.from_numpy(gram).float())
        self.s2 = s2.clamp_min(0.0)
        self.vectors = vectors
        # P = Xc V = X V - 1 (mu^T V), the sparse product multi-threaded in torch.
        projected = as_torch_csr(self.features) @ vectors
        self.projected = projected - torch.from_numpy(self.mean).float() @ vectors

    def loo_errors(self, targets: Tensor, alphas: Sequence[float]) -> list[float]:
        """Mean squared leave-one-out error of each alpha; `targets` (n, m), any m."""
        centred = targets - targets.mean(dim=0)
        weights = self.projected.T @ centred  # (r, m), shared by every alpha
        squared = self.projected.square()
        errors = []
        for alpha in alphas:
            inverse = 1.0 / (self.s2 + alpha)
            leverage = 1.0 / self.n + squared @ inverse
            residual = centred - self.projected @ (inverse[:, None] * weights)
            loo = residual / (1.0 - leverage)[:, None]
            errors.append(float(loo.square().mean()))
        return errors

    def coefficients(self, targets: Tensor, alpha: float, chunk: int = 4096) -> RidgeFit:
        """Ridge coefficients and intercept for all targets (n, n_targets) at `alpha`.

        Xc^T Yc = X^T Y - (X^T 1) ybar^T is formed chunk by chunk of targets, so the centred
        targets are never copied whole.
        """
        inverse = 1.0 / (self.s2 + alpha)
        solve = (self.vectors * inverse) @ self.vectors.T  # (p, p) = (Xc^T Xc + alpha I)^-1
        transposed = as_torch_csr(self.features.T)
        column_sums = torch.from_numpy(np.asarray(self.features.sum(axis=0)).ravel()).float()
        target_mean = targets.mean(dim=0)
        coef = torch.empty(self.features.shape[1], targets.shape[1])
        for start in range(0, targets.shape[1], chunk):
            part = slice(start, start + chunk)
            cross = transposed @ targets[:, part].contiguous()
            cross -= column_sums[:, None] * target_mean[part][None, :]
            coef[:, part] = solve @ cross
        intercept = target_mean - torch.from_numpy(self.mean).float() @ coef
        return RidgeFit(coef, intercept, float(alpha), [float(alpha)], [])


def fit_ridge_loo(
    features: sp.csr_matrix,
    targets: np.ndarray | Tensor,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    loo_targets: int | None = 1000,
    seed: int = 0,
) -> RidgeFit:
    """Ridge of every target column on `features` (n, p), alpha by leave-one-out.

    Args:
        features: sparse (n_documents, n_features).
        targets: (n_documents, n_targets), e.g. one brain map per row.
        alphas: penalties to try (at least one, all > 0).
        loo_targets: choose alpha on this many target columns drawn at random (None: all).
        seed: seed of that draw.
    """
    alphas = [float(a) for a in alphas]
    if not alphas or min(alphas) <= 0:
        raise ValueError(f"alphas must be a non-empty list of positive numbers, got {alphas}")
    targets = torch.as_tensor(targets, dtype=torch.float32)
    if targets.shape[0] != features.shape[0]:
        raise ValueError(
            f"features have {features.shape[0]} rows but targets have {targets.shape[0]}"
        )
    spectrum = CentredGramSpectrum(features)
    columns = targets
    if loo_targets is not None and loo_targets < targets.shape[1]:
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(targets.shape[1], generator=generator)[:loo_targets]
        columns = targets[:, chosen.sort().values]
    errors = spectrum.loo_errors(columns, alphas)
    best = int(np.argmin(errors))
    if len(alphas) > 1 and best in (0, len(alphas) - 1):
        log.warning(
            "leave-one-out chose alpha=%g at the edge of the grid %s; widen `alphas`",
            alphas[best],
            alphas,
        )
    fit = spectrum.coefficients(targets, alphas[best])
    fit.alphas, fit.loo_errors = alphas, errors
    return fit
