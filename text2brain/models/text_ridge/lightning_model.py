"""The text-ridge head in the zoo: the readout's closed-form fit (maths: torch_model).

Text2Brain without its decoder: the training-mean map plus a reduced-rank ridge readout of
the embedding (text2brain.models.readout), fitted in closed form on the training articles'
texts, each paired with its article's map on the transformed scale (text2brain.models.targets).
Why a head of its own: on NeuroQuery the readout is where all of Text2Brain's score comes from
(its decoder, trained for epochs, adds nothing measurable; see checkpoints/README.md), so the
readout alone fits in a minute what the full model trains for, and its checkpoint holds the
readout's two factors rather than a decoder.

The penalty is chosen by leave-one-out squared error (`alpha_selection: loo`) or by the
validation split's Dice-AUC (`validation`), the metric the zoo compares on. Several texts of
one article (its title, its keywords, its abstract) share its map, so a left-out text still
has its siblings in the fit and leave-one-out favours small penalties; the validation titles
are held-out articles.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from text2brain.data.datamodule import FIT_SOURCES
from text2brain.metrics import dice_auc_from_curve, dice_curve
from text2brain.models.closed_form import ClosedFormModule
from text2brain.models.settings import TextEncoderSettings
from text2brain.models.targets import parse_transform, scaled_targets
from text2brain.models.text_head import TextEncoderHead
from text2brain.models.text_ridge.torch_model import TextRidgeMaths, checked_rank
from text2brain.text import check_texts

log = logging.getLogger(__name__)

ALPHA_SELECTIONS = ("loo", "validation")


class TextRidge(TextRidgeMaths, TextEncoderHead, ClosedFormModule):
    """The mean map plus a ridge readout of a frozen encoder's embedding; nothing trained.

    Args:
        text: the text encoder, kept frozen (text2brain.models.settings.TextEncoderSettings).
        sources: the training texts paired with their article's map: "title", "keywords"
            (an article's keywords joined in one text) and "abstract"
            (text2brain.data.datamodule.FIT_SOURCES).
        target_transform: the monotone transform of the max-normalised maps that the fit
            sees ("none", "sqrt", "power:P", "log1p:C"); predictions are on that scale.
        rank: directions kept of the readout (reduced-rank ridge); None: the full rank.
        alpha: a fixed penalty, relative to the mean squared singular value of the centred
            embeddings; None: chosen by `alpha_selection` over `alpha_grid`.
        alpha_selection: "loo" (leave-one-out squared error) or "validation" (Dice-AUC of
            the validation titles; the head's own validation score is then optimistic by
            the selection, its test score is not).
        alpha_grid: relative penalties to choose from (on NeuroQuery validation Dice-AUC
            peaks at 0.3, within 0.0001 from 0.3 to 1).
    """

    def __init__(
        self,
        text: TextEncoderSettings = TextEncoderSettings(freeze_embeddings=True, freeze_layers=6),
        sources: Sequence[str] = ("title", "keywords", "abstract"),
        target_transform: str = "power:0.1",
        rank: int | None = 32,
        alpha: float | None = None,
        alpha_selection: str = "validation",
        alpha_grid: Sequence[float] = (0.03, 0.1, 0.3, 1.0, 3.0),
    ) -> None:
        super().__init__(text=text)
        parse_transform(target_transform)  # a bad name fails here, not at fit
        if alpha_selection not in ALPHA_SELECTIONS:
            raise ValueError(
                f"alpha_selection must be one of {ALPHA_SELECTIONS}, got {alpha_selection!r}"
            )
        if not sources or not set(sources) <= set(FIT_SOURCES):
            raise ValueError(f"sources must be some of {FIT_SOURCES}, got {list(sources)}")
        alphas = [alpha] if alpha is not None else list(alpha_grid)
        if not alphas or not all(a is not None and a > 0 for a in alphas):
            raise ValueError(f"alpha and alpha_grid must be > 0, got {alphas}")
        self.sources = tuple(sources)
        self.rank = checked_rank(rank)
        self.target_transform = target_transform
        self.alphas = alphas

    def normalise_target(self, target: Tensor) -> Tensor:
        return scaled_targets(target, self.target_transform)

    # -- the fit ------------------------------------------------------------------------------
    def fit_closed_form(self, datamodule: Any) -> None:
        self.attach_embedding_cache(build=True)
        _, maps = datamodule.article_maps("train")
        targets = self.training_targets(maps, residual=True)  # sets mean_map
        embeddings, rows = self.readout_inputs(datamodule, self.sources)
        if len(self.alphas) == 1 or self.hparams.alpha_selection == "loo":
            fit = self.fit_readout_from(embeddings, rows, targets, self.alphas)
            self.alpha.fill_(fit.alpha)
            return
        titles, val_maps = datamodule.titled_article_maps("val")
        if not len(titles):
            raise ValueError("alpha_selection 'validation' needs validation articles with titles")
        queries = self.encode_texts(titles)
        val_maps = torch.from_numpy(np.asarray(val_maps, np.float32))
        fits = self.fit_readout_path(embeddings, rows, targets, self.alphas)
        scores = []
        for fit in fits:
            self.use_readout(fit)
            pred = self.readout_maps(queries.to(self.readout_in.device)).cpu() + self.mean_map.cpu()
            scores.append(float(dice_auc_from_curve(dice_curve(pred, val_maps)).mean()))
        best = int(np.argmax(scores))
        if best in (0, len(self.alphas) - 1):
            warnings.warn(
                f"text_ridge: the best alpha ({self.alphas[best]}) is at the edge of its grid "
                f"{self.alphas}: a wider grid may score higher",
                stacklevel=2,
            )
        self.use_readout(fits[best])
        self.alpha.fill_(fits[best].alpha)
        log.info(
            "text_ridge: readout fitted on %d training texts, relative alpha %g chosen by "
            "validation Dice-AUC %.5f over %s (%s)",
            len(embeddings),
            self.alphas[best],
            scores[best],
            self.alphas,
            ", ".join(f"{s:.5f}" for s in scores),
        )

    # -- prediction ---------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.maps_of(self.encode_texts(list(batch["text"])))

    @torch.inference_mode()
    def predict_texts(self, texts: list[str]) -> Tensor:
        return self.forward({"text": check_texts(texts, allow_empty=False)})
