"""The Neurosynth-style head: its tiny config, the association test against scipy on tiny
problems (chi-square, FDR, spheres, active counts) and its options on the synthetic corpus."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats
import torch
from model_configs import tiny_terms
from synthetic import small_space, topic_region

from text2brain.models import model_class
from text2brain.models.neurosynth.association import (
    chi_square_z,
    count_active,
    fdr_threshold,
    sphere_activation,
)

pytestmark = pytest.mark.usefixtures("one_thread")


#: The Neurosynth-style head's tiny config (model_configs.tiny_configs gathers it).
TINY_CONFIGS = {"neurosynth": tiny_terms}


# -- association test ----------------------------------------------------------------------------
def test_chi_square_z_matches_scipy() -> None:
    tables = [(12, 8, 5, 75), (3, 17, 30, 50), (10, 10, 40, 40), (0, 20, 20, 60)]  # a+b = 20
    a = torch.tensor([t[0] for t in tables])
    n_about = 20
    active = torch.tensor([t[0] + t[2] for t in tables])
    z = chi_square_z(a, n_about, active, 100)
    for value, (ta, tb, tc, td) in zip(z.tolist(), tables, strict=True):
        chi2 = scipy.stats.chi2_contingency([[ta, tb], [tc, td]], correction=False).statistic
        assert abs(value) == pytest.approx(math.sqrt(chi2))
        assert np.sign(value) == np.sign(ta * td - tb * tc)
    # Empty margins (no active study at a voxel, or every study about the query): z = 0.
    assert chi_square_z(torch.tensor([0]), 20, torch.tensor([0]), 100).item() == 0
    assert chi_square_z(torch.tensor([7]), 100, torch.tensor([7]), 100).item() == 0


def test_fdr_threshold_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    z = torch.from_numpy(np.concatenate([rng.normal(0, 1, 900), rng.normal(4, 1, 100)]))
    kept = fdr_threshold(z, 0.01)
    p = 2 * scipy.stats.norm.sf(np.abs(z.numpy()))
    significant = scipy.stats.false_discovery_control(p) <= 0.01
    assert np.array_equal(kept.numpy() != 0, significant)
    assert torch.equal(kept[significant], z[significant])
    assert not fdr_threshold(torch.zeros(10, dtype=torch.float64), 0.01).any()
    with pytest.raises(ValueError, match="q must be in"):
        fdr_threshold(z, 1.5)


def test_spheres_hold_the_voxels_within_the_radius() -> None:
    space = small_space()
    xyz = np.array([[0.0, 0.0, 0.0], [5.3, -7.1, 2.2], [-20.0, 0.0, 0.0]])
    active = sphere_activation(space, np.array([0, 1, 1]), xyz, 2, radius_mm=6.0)
    centres = space.affine[:3, :3] @ np.argwhere(space.mask).T + space.affine[:3, 3:4]
    distance = np.linalg.norm(centres.T[None] - xyz[:, None], axis=-1)
    within = distance <= 6.0
    assert np.array_equal(active[0], within[0])
    assert np.array_equal(active[1], within[1] | within[2])
    assert (
        active[0].sum() == 19
    )  # a voxel centre, its 6 face (4 mm) and 12 edge (5.7 mm) neighbours


def test_count_active_on_sparse_rows() -> None:
    rng = np.random.default_rng(0)
    active = rng.random((50, 37)) < 0.3
    active[4] = False  # a study without any active voxel
    csr = sp.csr_matrix(active)
    pointer, voxels = torch.from_numpy(csr.indptr), torch.from_numpy(csr.indices)
    rows = torch.tensor([1, 4, 9, 33, 49])
    counts = count_active(pointer, voxels, rows, 37)
    assert counts.tolist() == active[rows.numpy()].sum(0).tolist()
    assert count_active(pointer, voxels, rows[:0], 37).tolist() == [0] * 37


def test_neurosynth_options(fit_closed_form: Callable[..., Any]) -> None:
    spheres = fit_closed_form("neurosynth", fdr_q=None)
    gaussian = fit_closed_form("neurosynth", fdr_q=None, activation="map")
    thresholded = fit_closed_form("neurosynth", fdr_q=1e-6)
    z_spheres, z_maps = spheres.predict_texts(["vision"]), gaussian.predict_texts(["vision"])
    assert not torch.equal(z_spheres, z_maps)
    assert (z_spheres != 0).sum() > (thresholded.predict_texts(["vision"]) != 0).sum()
    # A two-word query uses the union of the studies about either word.
    union = spheres.predict_texts(["vision audition"])[0].numpy()
    assert (union[topic_region(spheres.space, "vision")] > 0).all()
    assert (union[topic_region(spheres.space, "audition")] > 0).all()
    with pytest.raises(ValueError, match="activation must be one of"):
        model_class("neurosynth")(activation="cubes")
