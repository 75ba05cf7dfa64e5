"""A linear readout from text embeddings to masked maps, fitted in closed form (ridge).

Why: the transposed-CNN decoder learns slowly by gradient descent (the paper trained for 2,000
epochs on a GPU); on a CPU budget of a few hundred steps it does not leave the corpus-mean
floor. Ridge regression of the training maps on the frozen encoder's embeddings of the training
titles is the best linear map for the starting encoder, computed in seconds, and already beats
the floor. The Text2Brain head adds it to its prediction (`readout: ridge`), so training starts
from it and the decoder and the fine-tuned encoder learn what it misses.

The penalty is chosen by efficient leave-one-out from one thin SVD of the centred embeddings,
Xc = U diag(s) V^T (n x d, d the embedding size): for every alpha the hat matrix is
H = 1 1^T / n + U diag(s^2 / (s^2 + alpha)) U^T, so the leave-one-out residuals of all
documents at all (sampled) voxels are (Yc - U diag(s^2 / (s^2 + alpha)) U^T Yc) / (1 - H_ii),
with no refit.

A rank limit (reduced-rank ridge) keeps only the r directions of the fitted training maps
that carry most of their variance: the weight W becomes W V_r V_r^T, with V_r the top right
singular vectors of the fitted values Xc W, found from the small (d x n_voxels) matrix
(Xc^T Xc)^(1/2) W. Why: training maps share few spatial modes, so the discarded directions are
mostly fitted noise. On NeuroQuery (MiniLM titles) rank 32 scores higher on validation than the
full rank 384 and stores 12x fewer numbers. No Lightning here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: Penalties searched, relative to the mean squared singular value of the centred embeddings
#: (so the grid does not depend on the encoder's output scale).
RELATIVE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 1, 9))


@dataclass
class RidgeReadout:
    """maps ~ (embeddings @ weight_in) @ weight_out + bias, the weight factored at its rank.

    `alpha` is the penalty the leave-one-out chose; without a rank limit `weight_in` is the
    identity.
    """

    weight_in: Tensor  # (d, rank)
    weight_out: Tensor  # (rank, n_voxels)
    bias: Tensor  # (n_voxels,)
    alpha: float
    loo_errors: dict[float, float]

    @property
    def weight(self) -> Tensor:
        """The (d, n_voxels) weight."""
        return self.weight_in @ self.weight_out


def fit_ridge_readout(
    embeddings: Tensor,
    targets: Tensor,
    relative_alphas: Sequence[float] = RELATIVE_ALPHAS,
    loo_voxels: int | None = 4096,
    seed: int = 0,
    rank: int | None = None,
) -> RidgeReadout:
    """Ridge of every target column on the embeddings, alpha by leave-one-out.

    Args:
        embeddings: (n, d) float tensor, one row per training text.
        targets: (n, n_voxels) float tensor, the maps (or map residuals) to predict.
        relative_alphas: penalties, in units of the mean squared singular value.
        loo_voxels: score the alphas on this many random voxels (all when None): maps are
            smooth, so a few thousand voxels rank the penalties as all of them do.
        seed: seed of the voxel sample.
        rank: keep this many directions of the fitted maps (reduced-rank ridge); None keeps
            all d.
    """
    if embeddings.ndim != 2 or targets.ndim != 2 or len(embeddings) != len(targets):
        raise ValueError(
            f"embeddings (n, d) and targets (n, v) must have the same n; got "
            f"{tuple(embeddings.shape)} and {tuple(targets.shape)}"
        )
    if len(embeddings) < 3:
        raise ValueError(f"a ridge readout needs at least 3 training texts, got {len(embeddings)}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int or None, got {rank!r}")
    if not relative_alphas or min(relative_alphas) <= 0:
        raise ValueError(f"relative_alphas must be positive, got {list(relative_alphas)}")
    x = embeddings.double()
    x_mean = x.mean(0)
    # In float64 row block by row block: a float64 copy of all the maps (2.3 GB on NeuroQuery)
    # would be the fit's peak memory.
    y_mean = sum(block.double().sum(0) for block in targets.split(1024)) / len(targets)
    u, s, vt = torch.linalg.svd(x - x_mean, full_matrices=False)
    s2 = s.square()
    scale = float(s2.mean())
    leverage_base = 1.0 / len(x)

    columns = torch.arange(targets.shape[1])
    if loo_voxels is not None and loo_voxels < targets.shape[1]:
        generator = torch.Generator().manual_seed(seed)
        columns = torch.randperm(targets.shape[1], generator=generator)[:loo_voxels]
    y_sample = targets[:, columns].double() - y_mean[columns]
    projected = u.T @ y_sample  # (d, sampled voxels)
    errors: dict[float, float] = {}
    for relative in relative_alphas:
        shrink = s2 / (s2 + relative * scale)
        residual = y_sample - u @ (shrink[:, None] * projected)
        leverage = leverage_base + (u.square() * shrink).sum(1)
        errors[float(relative)] = float(((residual / (1 - leverage)[:, None]) ** 2).mean())
    best = min(errors, key=errors.__getitem__)

    # weight = V diag(s / (s^2 + alpha)) U^T Yc, in voxel chunks to bound memory.
    factor = (vt.T * (s / (s2 + best * scale))).float()  # (d, d)
    u32 = u.float()
    weight = torch.empty(x.shape[1], targets.shape[1])
    for start in range(0, targets.shape[1], 8192):
        block = targets[:, start : start + 8192].float() - y_mean[start : start + 8192].float()
        weight[:, start : start + 8192] = factor @ (u32.T @ block)
    if rank is None or rank >= x.shape[1]:
        weight_in, weight_out = torch.eye(x.shape[1]), weight
    else:
        # Fitted values Xc W = U (diag(s) V^T W): their right singular vectors are those of
        # the small factor in brackets.
        _, _, directions = torch.linalg.svd((s[:, None] * vt).float() @ weight, full_matrices=False)
        weight_out = directions[:rank].contiguous()  # (rank, n_voxels), orthonormal rows
        weight_in = weight @ weight_out.T  # (d, rank)
    bias = (y_mean - x_mean @ (weight_in @ weight_out).double()).float()
    return RidgeReadout(weight_in, weight_out, bias, best * scale, errors)
