"""The ensemble head: registered heads' maps, each normalised per map, in a weighted sum.

Nothing is trained: at fit the members are loaded from their checkpoints or exports (any
registered head), they predict the validation split's titles, and the weights are the point of
a simplex grid (step `weight_step`) with the best validation Dice-AUC, unless given. The
ensemble's validation score is therefore optimistic by that choice (and by any choice its
members made on the same split); its test score is not. The maths, shared with the
Lightning-free `EnsembleInference`, is text2brain.models.ensemble.torch_model.

A fitted ensemble is one checkpoint: the members are submodules, so their weights are in its
state dict, and what each keeps outside its state dict (hyper-parameters, class path, brain
space, its own "text2brain" entries such as a vocabulary or a retrieval bank) is in the
ensemble's "text2brain" section under "members". Loading rebuilds every member from there,
registered heads only, as text2brain.checkpoint builds any head, before the weights are
loaded; the member paths in the hyper-parameters are read at fit only.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from text2brain.checkpoint import model_from_checkpoint, read_model_file
from text2brain.metrics import dice_auc_from_curve, dice_curve
from text2brain.models.closed_form import ClosedFormModule
from text2brain.models.ensemble.torch_model import EnsembleMaths, combined, simplex_grid
from text2brain.models.head import BrainMapHead

log = logging.getLogger(__name__)

#: Rows of the validation table in the log (best first; each member alone is always shown).
LOGGED_ROWS = 10


class Ensemble(EnsembleMaths, ClosedFormModule):
    """A weighted sum of registered heads' per-map normalised maps, weights chosen on validation.

    Args:
        members: name -> the checkpoint (.ckpt) or export folder of a registered head (any
            kind). Read at fit only; the fitted ensemble's checkpoint holds the members.
        normalise: how each member's map is put on a common scale: "zscore" (mean 0, standard
            deviation 1 across voxels) or "rank" (voxel ranks, ties averaged, scaled to
            [-1, 1]). A constant map (a term head's all-zero map for a text without a known
            term) becomes all zeros either way: the other members decide that text's map.
        weight_step: the weights' grid: every vector of non-negative multiples of it that sums
            to 1 (1/n for an integer n).
        weights: name -> weight (non-negative, summing to 1) instead of choosing them.
    """

    def __init__(
        self,
        members: dict[str, str],
        normalise: str = "zscore",
        weight_step: float = 0.1,
        weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.configure(members, normalise, weight_step, weights)
        self.hparams["members"] = {name: os.fspath(path) for name, path in members.items()}

    # -- the fit ------------------------------------------------------------------------------
    def fit_closed_form(self, datamodule: Any) -> None:
        self.load_members()
        texts, targets = validation_pairs(datamodule)
        if not texts and self.given_weights is None:
            raise ValueError(
                "the ensemble chooses its weights on the validation split, which is empty: "
                "give weights, or use data with validation articles"
            )
        with torch.inference_mode():
            maps = torch.stack([self._member_maps(name, texts) for name in self.member_names])
            grid = (
                simplex_grid(len(self.member_names), self.steps)
                if self.given_weights is None
                else torch.tensor([self.given_weights], dtype=torch.float64)
            )
            targets = targets.to(maps.device)
            scores = torch.tensor(
                [
                    float(dice_auc_from_curve(dice_curve(combined(maps, w), targets)).mean())
                    if texts
                    else math.nan
                    for w in grid.float().to(maps.device)
                ],
                dtype=torch.float64,
            )
        best = int(torch.nan_to_num(scores, nan=-math.inf).argmax())
        self.weight_grid = grid.float().to(self.device)
        self.validation_scores = scores.float().to(self.device)
        self.member_weights = grid[best].float().to(self.device)
        self._report(grid, scores, best, len(texts))

    def load_members(self) -> None:
        """Load every member from its path (`members`), checked against the data's space."""
        members: dict[str, BrainMapHead] = {}
        records: dict[str, dict[str, Any]] = {}
        for name in self.member_names:
            source = self.hparams.members[name]
            try:
                path, ckpt = read_model_file(source)
                member = model_from_checkpoint(path, ckpt)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"ensemble member {name!r}: {err}") from err
            except ValueError as err:
                raise ValueError(f"ensemble member {name!r}: {err}") from err
            self._check_space(name, member, f"from {str(source)!r}")
            members[name] = member
            records[name] = {
                "hyper_parameters": dict(ckpt["hyper_parameters"]),
                "text2brain": dict(ckpt["text2brain"]),
            }
            log.info("ensemble: member %r is %s from %s", name, type(member).__name__, path)
        self.members = nn.ModuleDict(members).to(self.device).train(self.training)
        self.member_records = records

    def _report(self, grid: Tensor, scores: Tensor, best: int, n_texts: int) -> None:
        names, chosen = self.member_names, grid[best].tolist()
        order = sorted(range(len(grid)), key=lambda i: -float(scores[i].nan_to_num(-math.inf)))
        shown = order[:LOGGED_ROWS] + [i for i in order[LOGGED_ROWS:] if grid[i].max() == 1]
        log.info(
            "ensemble: weights %s by validation Dice-AUC (%d titles), best first, and each "
            "member alone:\n  %s  val Dice-AUC\n%s",
            "given" if self.given_weights is not None else f"on a grid of step 1/{self.steps}",
            n_texts,
            " ".join(names),
            "\n".join(
                f"  {' '.join(f'{w:.3f}' for w in grid[i].tolist())}  {float(scores[i]):.4f}"
                for i in shown
            ),
        )
        log.info("ensemble: weights %s", self.weights_by_member)
        if self.given_weights is None and len(names) > 1:
            alone = [n for n, w in zip(names, chosen, strict=True) if w == 1]
            unused = [n for n, w in zip(names, chosen, strict=True) if w == 0]
            if alone:
                warnings.warn(
                    f"ensemble: member {alone[0]!r} alone scores best on validation (weight 1, "
                    f"the edge of the grid): the other members {unused} add nothing at step "
                    f"1/{self.steps}",
                    stacklevel=3,
                )
            elif unused:
                warnings.warn(
                    f"ensemble: members {unused} get weight 0 (the edge of the grid): they add "
                    f"nothing on validation at step 1/{self.steps}",
                    stacklevel=3,
                )

    # -- checkpoint ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        self.save_members(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.load_members_from(checkpoint)


def validation_pairs(datamodule: Any) -> tuple[list[str], Tensor]:
    """The validation split's evaluation texts (titles) and article maps, float32, in order."""
    _, maps = datamodule.article_maps("val")
    articles = datamodule.corpus.articles
    texts = [datamodule.sampler.evaluation(articles[i]).text for i in datamodule.indices_of("val")]
    return texts, torch.from_numpy(np.asarray(maps, dtype=np.float32))
