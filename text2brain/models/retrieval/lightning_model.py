"""The retrieval head: a text's map is the weighted mean of its nearest training articles' maps.

The classic retrieval meta-analysis, with a sentence encoder instead of term matching: the
frozen text encoder embeds every training title once (the embedding cache), a query's
cosine similarities to them pick the `k` nearest articles, and their max-scaled maps, through
the head's target transform (text2brain.models.targets), are averaged with weights
``softmax(similarity / temperature)``; predictions are on that transformed scale. Why the
transform: Dice-AUC reads which voxels rank in a map's top 5-30%, and a mean of maps raised to
a small power counts how many neighbours activate a voxel more than how strongly (close to a
vote), where a mean of max-scaled maps follows the few strongest peaks. Nothing is trained:
`k` and the temperature are chosen in closed form, at fit, by validation Dice-AUC over a grid
(so the head's own validation score is optimistic by the selection; its test score is not).

The training articles are a `RetrievalBank` (text2brain.models.contrastive.retrieval), as the
contrastive heads keep theirs: ids, titles, keywords, title embeddings (float16) and the
articles' peaks, from which the maps a query needs are rebuilt (about 14 MB on NeuroQuery
where the dense maps took 680 MB; text2brain.models.retrieval.torch_model). The bank's titles
also answer `related_articles`, as the contrastive heads' banks do.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from text2brain.metrics import dice_auc_from_curve, dice_curve
from text2brain.models.closed_form import ClosedFormModule
from text2brain.models.contrastive.bank import training_bank
from text2brain.models.contrastive.retrieval import compact_embeddings
from text2brain.models.retrieval.torch_model import K_GRID, TEMPERATURE_GRID, RetrievalMaths
from text2brain.models.settings import TextEncoderSettings
from text2brain.models.text_head import TextEncoderHead

log = logging.getLogger(__name__)


class Retrieval(RetrievalMaths, TextEncoderHead, ClosedFormModule):
    """Nearest training articles by title embedding; their maps' softmax-weighted mean.

    Args:
        text: the text encoder, kept frozen (text2brain.models.settings.TextEncoderSettings).
        k_grid: numbers of nearest articles to choose from by validation Dice-AUC.
        temperature_grid: softmax temperatures (on cosine similarity) to choose from.
        k, temperature: fixed values instead of choosing them (None: choose).
        target_transform: the monotone transform of the max-scaled maps that are averaged
            ("none", "sqrt", "power:P", "log1p:C"; text2brain.models.targets).
    """

    fitted_buffers = ("validation_scores",)
    inference_only = False

    def __init__(
        self,
        text: TextEncoderSettings = TextEncoderSettings(freeze_embeddings=True, freeze_layers=6),
        k_grid: Sequence[int] = K_GRID,
        temperature_grid: Sequence[float] = TEMPERATURE_GRID,
        k: int | None = None,
        temperature: float | None = None,
        target_transform: str = "power:0.1",
    ) -> None:
        super().__init__(text=text)
        self.configure(k_grid, temperature_grid, k, temperature, target_transform)

    def text_vectors(self, texts: list[str]) -> Tensor:
        return self.encode_texts(texts)

    # -- the fit ------------------------------------------------------------------------------
    def fit_closed_form(self, datamodule: Any) -> None:
        self.attach_embedding_cache(build=True)
        bank = training_bank(datamodule)
        _, titled = datamodule.article_texts("train", ("title",))  # warns of untitled ones
        if len(titled) < len(bank):
            bank = bank.subset(titled)
        embeddings = F.normalize(self.encode_texts(bank.titles).float().cpu(), dim=1)
        # Stored float16: the search below uses them so, as a loaded head will.
        bank.embeddings = compact_embeddings(embeddings)
        self.use_bank(bank)
        val_titles, val_maps = datamodule.titled_article_maps("val")
        val_maps = torch.from_numpy(np.asarray(val_maps, np.float32))
        scores = torch.zeros(len(self.ks), len(self.temperatures))
        if len(val_maps) and (len(self.ks) > 1 or len(self.temperatures) > 1):
            queries = self.embed_queries(val_titles)
            for i, k in enumerate(self.ks):
                for j, temperature in enumerate(self.temperatures):
                    pred = self.retrieve(queries, k, temperature)
                    scores[i, j] = dice_auc_from_curve(dice_curve(pred.cpu(), val_maps)).mean()
        best = int(scores.argmax())
        for name, grid, index in (
            ("k", self.ks, best // len(self.temperatures)),
            ("temperature", self.temperatures, best % len(self.temperatures)),
        ):
            if len(grid) > 1 and index in (0, len(grid) - 1):
                warnings.warn(
                    f"retrieval: the best {name} ({grid[index]}) is at the edge of its grid "
                    f"{grid}: a wider grid may score higher",
                    stacklevel=2,
                )
        self.validation_scores = scores.to(self.device)
        self.k = torch.tensor(self.ks[best // len(self.temperatures)], device=self.device)
        self.temperature = torch.tensor(
            float(self.temperatures[best % len(self.temperatures)]), device=self.device
        )
        log.info(
            "retrieval: k %d, temperature %g chosen by validation Dice-AUC %.4f over k %s x "
            "temperature %s (a bank of %d training titles)",
            int(self.k),
            float(self.temperature),
            float(scores.max()),
            self.ks,
            self.temperatures,
            len(bank),
        )

    # -- checkpoint ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        self.save_bank(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # upgraded to the current format here
        self.load_bank(checkpoint)
