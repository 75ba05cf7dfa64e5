"""The Neurosynth-style baseline in the zoo (Yarkoni et al. 2011; "association test" maps)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from text2brain.brain import BrainSpace
from text2brain.models.components.term_head import TermHead
from text2brain.models.neurosynth.association import (
    chi_square_z,
    count_active,
    fdr_threshold,
    gather_rows,
    sphere_activation,
)

ACTIVATIONS = ("sphere", "map")


class Neurosynth(TermHead):
    """Association test between "the study is about the query" and "the voxel is active".

    Studies about a term are the training articles whose TF-IDF for it is at least
    `about_threshold` (Neurosynth: 0.001); a query of several terms uses the union of the
    studies about any of them. Each voxel gets the signed z of a 2x2 chi-square test against
    all other training studies (text2brain.models.neurosynth.association), optionally
    thresholded by FDR. The binary study maps are kept sparse (the active voxels of each
    study), so a query costs one histogram of its studies' active voxels.

    Args:
        **kwargs: TermHead's arguments (vocabulary, synonyms, data_dir, document_fields,
            min_documents, unknown_query).
        about_threshold: TF-IDF (unit-norm rows) from which a study is about a term.
        activation: "sphere": voxels within `radius_mm` of a peak (Neurosynth); "map": the
            article's Gaussian map at or above `map_threshold` times its maximum.
        radius_mm: sphere radius.
        map_threshold: fraction of the map's maximum (0.3 is about where an isolated 9 mm
            FWHM peak falls to at 6 mm).
        fdr_q: Benjamini-Hochberg level of the published maps (Neurosynth: 0.01); voxels that
            do not survive are 0. None keeps every z (more voxels to rank for the Dice metric).
    """

    fitted_buffers = (
        *TermHead.fitted_buffers,
        "active_pointer",
        "active_voxels",
        "about_pointer",
        "about_studies",
    )

    def __init__(
        self,
        about_threshold: float = 0.001,
        activation: str = "sphere",
        radius_mm: float = 6.0,
        map_threshold: float = 0.3,
        fdr_q: float | None = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not 0 < about_threshold < 1:
            raise ValueError(f"about_threshold must be in (0, 1), got {about_threshold}")
        if radius_mm <= 0:
            raise ValueError(f"radius_mm must be > 0, got {radius_mm}")
        if not 0 < map_threshold <= 1:
            raise ValueError(f"map_threshold must be in (0, 1], got {map_threshold}")
        if fdr_q is not None and not 0 < fdr_q < 1:
            raise ValueError(f"fdr_q must be in (0, 1) or None, got {fdr_q}")

    def build(self, space: BrainSpace) -> None:
        super().build(space)
        self.register_buffer("active_pointer", torch.zeros(1, dtype=torch.long))
        self.register_buffer("active_voxels", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("active_count", torch.zeros(space.n_voxels, dtype=torch.long))
        self.register_buffer("about_pointer", torch.zeros(1, dtype=torch.long))
        self.register_buffer("about_studies", torch.zeros(0, dtype=torch.long))

    def fit_terms(self, features: sp.csr_matrix, datamodule: Any, indices: np.ndarray) -> None:
        hp = self.hparams
        if hp.activation == "sphere":
            row_of = np.full(len(datamodule.corpus), -1, dtype=np.int64)
            row_of[indices] = np.arange(len(indices))
            peaks = datamodule.peaks
            rows = row_of[peaks.article]
            kept = rows >= 0
            active = sphere_activation(
                self.space, rows[kept], peaks.xyz[kept], len(indices), hp.radius_mm
            )
        else:
            _, maps = datamodule.article_maps("train")
            active = maps >= hp.map_threshold * maps.max(axis=1, keepdims=True)
        about = sp.csc_matrix(features >= hp.about_threshold)
        active = sp.csr_matrix(active)
        self.active_pointer = torch.from_numpy(active.indptr.astype(np.int64)).to(self.device)
        self.active_voxels = torch.from_numpy(active.indices.astype(np.int32)).to(self.device)
        self.active_count = torch.from_numpy(
            np.bincount(active.indices, minlength=active.shape[1])
        ).to(self.device)
        self.about_pointer = torch.from_numpy(about.indptr.astype(np.int64)).to(self.device)
        self.about_studies = torch.from_numpy(about.indices.astype(np.int64)).to(self.device)

    def studies_about(self, terms: Tensor) -> Tensor:
        """Training studies about any of the feature columns `terms` (sorted, unique)."""
        return torch.unique(gather_rows(self.about_pointer, self.about_studies, terms))

    def predict_known(self, features: Tensor) -> Tensor:
        n_studies = len(self.active_pointer) - 1
        maps = []
        for row in features:  # one test per query: each has its own set of studies
            studies = self.studies_about(torch.nonzero(row).ravel())
            about_active = count_active(
                self.active_pointer, self.active_voxels, studies, len(self.active_count)
            )
            z = chi_square_z(about_active, len(studies), self.active_count, n_studies)
            if self.hparams.fdr_q is not None:
                z = fdr_threshold(z, self.hparams.fdr_q)
            maps.append(z.float())
        return torch.stack(maps)
