"""The NeuroQuery-style baseline in the zoo (Dockes et al., eLife 2020)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from text2brain.brain import BrainSpace
from text2brain.models.components.term_head import TermHead
from text2brain.models.neuroquery.smoothing import nmf_term_embeddings, smooth_queries
from text2brain.models.ridge import DEFAULT_ALPHAS, fit_ridge
from text2brain.models.targets import parse_transform, scaled_targets

log = logging.getLogger(__name__)

#: How the ridge coefficients are stored (they are used in float32).
COEF_DTYPES = {"float16": torch.float16, "float32": torch.float32}


class NeuroQuery(TermHead):
    """TF-IDF of vocabulary terms -> ridge regression to every voxel of the article map.

    Fitted in closed form on the training split: one ridge penalty for all voxels, chosen by
    efficient leave-one-out over `alphas` (text2brain.models.ridge), and term
    embeddings from NMF of the training TF-IDF that smooth each query towards co-occurring
    terms (text2brain.models.neuroquery.smoothing). A query's map is the regression's
    prediction, on the scale of the training maps; z-scoring it across voxels, as NeuroQuery
    shows its maps, is monotone and leaves the rank-based metric unchanged, so it is skipped.

    Args:
        **kwargs: TermHead's arguments (vocabulary, synonyms, data_dir, document_fields,
            min_documents, unknown_query).
        alphas: ridge penalties to choose from (default: 0.1 .. 1000, 9 values).
        loo_voxels: choose alpha on this many random voxels (None: all voxels).
        smoothing_weight: w in (1 - w) x + w x N (NeuroQuery: 0.1; 0 turns smoothing off).
        smoothing_components: NMF components of the term embeddings.
        nmf_iterations: multiplicative-update iterations of the NMF.
        coef_dtype: "float16" rounds the fitted coefficients to half precision and stores
            them so, halving the checkpoint (on NeuroQuery 273 instead of 546 MB; validation
            Dice-AUC unchanged to 6 decimals); prediction computes in float32 either way.
        seed: seed of the voxel draw and of the NMF start.
        target_transform: "none" (NeuroQuery's own method: the raw article maps) or a
            transform of the max-scaled maps ("sqrt", "power:P", "log1p:C";
            text2brain.models.targets), as the zoo's ridge heads fit: a variant to report
            beside the baseline, never as it.
    """

    fitted_buffers = (*TermHead.fitted_buffers, "coef", "term_embeddings")

    def __init__(
        self,
        alphas: list[float] | None = None,
        loo_voxels: int | None = 1000,
        smoothing_weight: float = 0.1,
        smoothing_components: int = 100,
        nmf_iterations: int = 50,
        coef_dtype: str = "float16",
        seed: int = 0,
        target_transform: str = "none",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        parse_transform(target_transform)  # a bad name fails here, not at fit
        if alphas is not None and (not alphas or min(alphas) <= 0):
            raise ValueError(f"alphas must be a non-empty list of positive numbers, got {alphas}")
        if loo_voxels is not None and loo_voxels < 1:
            raise ValueError(f"loo_voxels must be >= 1 or None, got {loo_voxels}")
        if not 0 <= smoothing_weight <= 1:
            raise ValueError(f"smoothing_weight must be in [0, 1], got {smoothing_weight}")
        if smoothing_components < 1 or nmf_iterations < 1:
            raise ValueError("smoothing_components and nmf_iterations must be >= 1")
        if coef_dtype not in COEF_DTYPES:
            raise ValueError(f"coef_dtype must be one of {sorted(COEF_DTYPES)}, got {coef_dtype!r}")

    @property
    def alphas(self) -> list[float]:
        return list(self.hparams.alphas or DEFAULT_ALPHAS)

    def build(self, space: BrainSpace) -> None:
        super().build(space)
        self.register_buffer("coef", torch.zeros(0, space.n_voxels))
        self.register_buffer("intercept", torch.zeros(space.n_voxels))
        self.register_buffer("term_embeddings", torch.zeros(0, self.hparams.smoothing_components))
        self.register_buffer("alpha", torch.zeros(()))
        #: Mean squared leave-one-out error of each of `alphas` (kept for the record).
        self.register_buffer("loo_errors", torch.zeros(len(self.alphas)))

    def fit_terms(self, features: sp.csr_matrix, datamodule: Any, indices: np.ndarray) -> None:
        hp = self.hparams
        _, maps = datamodule.article_maps("train")
        if hp.target_transform != "none":
            maps = np.concatenate(
                [
                    self.normalise_target(torch.from_numpy(np.asarray(maps[s : s + 1024]))).numpy()
                    for s in range(0, len(maps), 1024)
                ]
            )
        fit = fit_ridge(features, maps, self.alphas, loo_voxels=hp.loo_voxels, seed=hp.seed)
        log.info(
            "NeuroQuery: alpha %g chosen by leave-one-out (errors %s over alphas %s)",
            fit.alpha,
            np.round(fit.loo_errors, 8).tolist(),
            fit.alphas,
        )
        embeddings = nmf_term_embeddings(
            features, hp.smoothing_components, hp.nmf_iterations, hp.seed
        )
        stored = fit.coef.to(COEF_DTYPES[hp.coef_dtype])
        if not torch.isfinite(stored).all():
            raise ValueError(
                f"ridge coefficients overflow {hp.coef_dtype} (largest magnitude "
                f"{float(fit.coef.abs().max()):.3g}): use coef_dtype float32"
            )
        self.coef = stored.float().to(self.device)  # exactly what the checkpoint will hold
        self.intercept = fit.intercept.to(self.device)
        self.alpha = torch.tensor(fit.alpha, device=self.device)
        self.loo_errors = torch.tensor(fit.loo_errors, device=self.device)
        self.term_embeddings = torch.from_numpy(embeddings).float().to(self.device)

    def normalise_target(self, target: Tensor) -> Tensor:
        """The raw maps (NeuroQuery's targets), or with `target_transform` the max-scaled maps
        through it (the training-mean map and the losses follow)."""
        if self.hparams.target_transform == "none":
            return target
        return scaled_targets(target, self.hparams.target_transform)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        state["coef"] = state["coef"].to(COEF_DTYPES[self.hparams.coef_dtype])

    def predict_known(self, features: Tensor) -> Tensor:
        smoothed = smooth_queries(features, self.term_embeddings, self.hparams.smoothing_weight)
        return self.intercept + smoothed @ self.coef
