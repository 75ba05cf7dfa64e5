"""Neurosynth-style association test (no Lightning): which voxels are active more often in
the studies about a term than in the other studies.

Each study is a binary map (voxels within a sphere around its peaks, or its Gaussian map
above a threshold). For a set S of studies "about" a query, each voxel has a 2x2 table of
studies, about (S or not) x active (yes or no):

    a = |S & active|    b = |S & inactive|    c = |rest & active|    d = |rest & inactive|

and the chi-square statistic of independence (1 degree of freedom, no continuity correction)
chi2 = N (ad - bc)^2 / ((a+b)(c+d)(a+c)(b+d)) gives the signed z = sign(ad - bc) sqrt(chi2):
positive where activation is more frequent in S. Voxels with an empty margin get z = 0.
Only a and |S| depend on the query: the per-voxel active counts of all studies are fixed,
and a is a histogram of the active voxels of the studies in S (kept sparse, row by study).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import erfc
from torch import Tensor

from text2brain.brain import BrainSpace


def chi_square_z(about_active: Tensor, n_about: int, active: Tensor, n_studies: int) -> Tensor:
    """Signed z of the 2x2 chi-square test at every voxel (float64).

    Args:
        about_active: per voxel, studies that are about the query and active (a).
        n_about: studies about the query (a + b).
        active: per voxel, active studies among all (a + c).
        n_studies: all studies (N).
    """
    a = about_active.double()
    b = n_about - a
    c = active.double() - a
    d = (n_studies - n_about) - c
    cross = a * d - b * c
    margins = float(n_about) * float(n_studies - n_about) * active.double()
    margins = margins * (n_studies - active.double())
    chi2 = n_studies * cross.square() / torch.where(margins > 0, margins, 1.0)
    return torch.where(margins > 0, torch.sign(cross) * chi2.sqrt(), 0.0)


def fdr_threshold(z: Tensor, q: float) -> Tensor:
    """`z` with voxels that do not survive Benjamini-Hochberg FDR at level `q` set to 0.

    p-values are two-sided normal tails of z (the chi-square with 1 df), over all voxels.
    """
    if not 0 < q < 1:
        raise ValueError(f"FDR level q must be in (0, 1), got {q}")
    p = erfc(np.abs(z.cpu().numpy()) / math.sqrt(2.0))
    order = np.sort(p)
    below = order <= q * np.arange(1, len(p) + 1) / len(p)
    if not below.any():
        return torch.zeros_like(z)
    cutoff = order[np.flatnonzero(below)[-1]]
    return torch.where(torch.from_numpy(p <= cutoff).to(z.device), z, 0.0)


def sphere_activation(
    space: BrainSpace,
    rows: np.ndarray,
    xyz: np.ndarray,
    n_rows: int,
    radius_mm: float,
    chunk: int = 20_000,
) -> np.ndarray:
    """Binary maps (n_rows, n_voxels): voxels whose centre lies within `radius_mm` of one of
    the row's peaks (exact peak positions, MNI mm; `rows[i]` is the row of peak `xyz[i]`)."""
    if radius_mm <= 0:
        raise ValueError(f"radius_mm must be > 0, got {radius_mm}")
    voxel_size = space.voxel_size
    reach = np.ceil(radius_mm / voxel_size).astype(np.int64)
    axes = [np.arange(-r, r + 2) for r in reach]  # around floor(ijk): one more on the high side
    offsets = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    masked_index = np.full(space.mask.size, -1, dtype=np.int64)
    masked_index[np.flatnonzero(space.mask)] = np.arange(space.n_voxels)
    shape = np.asarray(space.shape)
    active = np.zeros((n_rows, space.n_voxels), dtype=bool)
    for start in range(0, len(xyz), chunk):
        ijk = space.mm_to_voxel(xyz[start : start + chunk])
        candidates = np.floor(ijk).astype(np.int64)[:, None, :] + offsets[None, :, :]
        distance2 = (((candidates - ijk[:, None, :]) * voxel_size) ** 2).sum(axis=-1)
        inside = ((candidates >= 0) & (candidates < shape)).all(axis=-1)
        near = inside & (distance2 <= radius_mm**2)
        peak, candidate = np.nonzero(near)
        flat = np.ravel_multi_index(tuple(candidates[peak, candidate].T), space.shape)
        voxel = masked_index[flat]
        brain = voxel >= 0
        active[rows[start : start + chunk][peak[brain]], voxel[brain]] = True
    return active


def gather_rows(pointer: Tensor, values: Tensor, rows: Tensor) -> Tensor:
    """The values of `rows` of a CSR layout (row r holds values[pointer[r]:pointer[r + 1]]),
    concatenated, without a Python loop over rows."""
    starts = pointer[rows]
    lengths = pointer[rows + 1] - starts
    before = torch.cumsum(lengths, 0) - lengths  # where each row starts in the output
    positions = torch.repeat_interleave(starts - before, lengths)
    return values[positions + torch.arange(len(positions), device=values.device)]


def count_active(pointer: Tensor, voxels: Tensor, rows: Tensor, n_voxels: int) -> Tensor:
    """Per voxel, how many of the studies `rows` are active there (int64); study r's active
    voxels are voxels[pointer[r]:pointer[r + 1]]."""
    return torch.bincount(gather_rows(pointer, voxels, rows).long(), minlength=n_voxels)
