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
where the dense maps took 680 MB). A few queries render only their neighbours; a batch whose
neighbours outnumber `GATHER_LIMIT` renders the whole bank once (about 10,000 maps, seconds)
and keeps it in memory (1.2 GB float32 on NeuroQuery) for one matrix product per batch. The
bank's titles also answer `related_articles`, as the contrastive heads' banks do.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from text2brain.brain import BrainSpace
from text2brain.metrics import dice_auc_from_curve, dice_curve
from text2brain.models.closed_form import ClosedFormModule
from text2brain.models.contrastive.bank import check_k, training_bank
from text2brain.models.contrastive.retrieval import (
    RelatedArticle,
    RetrievalBank,
    compact_embeddings,
    retrieval_weights,
    weighted_maps,
)
from text2brain.models.encoders import TextEncoder
from text2brain.models.settings import TextEncoderSettings
from text2brain.models.targets import parse_transform, scaled_targets
from text2brain.models.text_head import TextEncoderHead
from text2brain.text import check_texts

log = logging.getLogger(__name__)

#: Up to this many (query, neighbour) pairs the neighbours' maps are rendered; beyond, the
#: whole bank is rendered once and one dense matrix product serves every batch.
GATHER_LIMIT = 4096
#: Bank maps rendered per call when the whole bank is rendered.
RENDER_CHUNK = 1024


class Retrieval(TextEncoderHead, ClosedFormModule):
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
    #: The training articles (None before the fit, or from a format-4 checkpoint).
    bank: RetrievalBank | None = None

    def __init__(
        self,
        text: TextEncoderSettings = TextEncoderSettings(freeze_embeddings=True, freeze_layers=6),
        k_grid: Sequence[int] = (25, 50, 100, 200, 400, 800, 1600, 3200),
        temperature_grid: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.5),
        k: int | None = None,
        temperature: float | None = None,
        target_transform: str = "power:0.1",
    ) -> None:
        super().__init__(text=text)
        parse_transform(target_transform)  # a bad name fails here, not at fit
        ks = [k] if k is not None else list(k_grid)
        temperatures = [temperature] if temperature is not None else list(temperature_grid)
        if not ks or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in ks):
            raise ValueError(f"k and k_grid must be positive ints, got {ks}")
        if not temperatures or any(not t > 0 for t in temperatures):
            raise ValueError(f"temperature and temperature_grid must be > 0, got {temperatures}")
        self.ks, self.temperatures = ks, temperatures
        self.target_transform = target_transform
        # The bank as prediction reads it: unit title embeddings (n, d) float32 and, once
        # rendered, every article's transformed map (n, voxels) float32.
        self.bank = None
        self._vectors: Tensor | None = None
        self._dense_maps: Tensor | None = None

    def build(self, space: BrainSpace) -> None:
        encoder = TextEncoder.from_settings(self.text_settings)
        encoder.requires_grad_(False)  # nothing is trained: a fixed function of the text
        self.net = nn.ModuleDict({"text_encoder": encoder})
        self.register_buffer("validation_scores", torch.zeros(len(self.ks), len(self.temperatures)))
        self.register_buffer("k", torch.tensor(self.ks[0]))
        self.register_buffer("temperature", torch.tensor(float(self.temperatures[0])))

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
            queries = F.normalize(self.encode_texts(val_titles).float(), dim=1).to(self.device)
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

    def use_bank(self, bank: RetrievalBank) -> None:
        """Predict from `bank` (with embeddings); its maps are rendered when first needed."""
        if bank.embeddings is None:
            raise ValueError("the retrieval head's bank needs its title embeddings")
        self.bank = bank
        self._vectors = bank.embeddings.float().to(self.device)
        self._dense_maps = None

    def normalise_target(self, target: Tensor) -> Tensor:
        """Maps on the scale of the head's predictions: max-scaled, then transformed."""
        return scaled_targets(target, self.target_transform)

    # -- prediction ---------------------------------------------------------------------------
    def bank_vectors(self) -> Tensor:
        """The bank's unit title embeddings (n, d) float32 on the head's device."""
        if self._vectors is None:
            raise ValueError(
                "the retrieval head has no bank of training articles: fit it with a "
                "TextMapDataModule or load a fitted checkpoint"
            )
        if self._vectors.device != self.device:
            self._vectors = self._vectors.to(self.device)
        return self._vectors

    def bank_maps(self) -> Tensor:
        """Every bank article's transformed map (n, voxels) float32, rendered once."""
        if self._dense_maps is None:
            n = len(self.bank)
            self._dense_maps = torch.cat(
                [
                    self.normalise_target(self.bank.render(range(s, min(n, s + RENDER_CHUNK))))
                    for s in range(0, n, RENDER_CHUNK)
                ]
            )
        if self._dense_maps.device != self.device:
            self._dense_maps = self._dense_maps.to(self.device)
        return self._dense_maps

    def retrieve(self, queries: Tensor, k: int, temperature: float) -> Tensor:
        """Maps (n, voxels) float32 of unit query embeddings (n, d): the softmax-weighted mean
        of the `k` most similar bank maps, in float32 whatever the caller's autocast."""
        vectors = self.bank_vectors()
        k = min(int(k), len(vectors))
        with torch.autocast(queries.device.type, enabled=False):
            similarity = queries.float() @ vectors.T
        index, weights = retrieval_weights(-similarity, k, temperature)
        if self._dense_maps is None and len(queries) * k <= GATHER_LIMIT:
            # A few queries: render only their neighbours, each distinct one once.
            unique, inverse = torch.unique(index.cpu(), return_inverse=True)
            maps = self.normalise_target(self.bank.render(unique))
            return weighted_maps(maps, inverse, weights)
        maps = self.bank_maps()
        if len(queries) * k <= GATHER_LIMIT:
            return weighted_maps(maps, index, weights)
        # Many: one dense product (n x bank) @ (bank x voxels), a BLAS call.
        with torch.autocast(queries.device.type, enabled=False):
            dense = torch.zeros(len(queries), len(maps), device=queries.device)
            return dense.scatter_(1, index, weights) @ maps

    def embed_queries(self, texts: list[str]) -> Tensor:
        """Unit embeddings (n, d) float32 of texts, on the head's device."""
        return F.normalize(self.encode_texts(texts).float(), dim=1).to(self.device)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        queries = self.embed_queries(list(batch["text"]))
        return self.retrieve(queries, int(self.k), float(self.temperature))

    @torch.inference_mode()
    def predict_texts(self, texts: list[str]) -> Tensor:
        return self.forward({"text": check_texts(texts, allow_empty=False)})

    @torch.inference_mode()
    def related_articles(self, texts: list[str], k: int = 10) -> list[list[RelatedArticle]]:
        """The `k` training articles whose titles are nearest each text, nearest first; the
        distance is 1 - cosine similarity of the title embeddings."""
        check_k(k)
        if self.bank is None:
            raise ValueError(
                "this retrieval head has no article list (a checkpoint written before format "
                "5 kept only maps): refit it to find related articles"
            )
        queries = self.embed_queries(check_texts(texts, allow_empty=False))
        with torch.autocast(queries.device.type, enabled=False):
            distance = 1 - queries @ self.bank_vectors().T
        nearest, indices = distance.topk(min(k, len(self.bank)), dim=1, largest=False)
        return self.bank.articles(indices.cpu(), nearest.cpu())

    # -- checkpoint ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.bank is not None:
            checkpoint["text2brain"]["bank"] = self.bank.to_dict()
        elif self._dense_maps is not None:  # a format-4 head saves as it came
            checkpoint["text2brain"]["dense_bank"] = {
                "embeddings": self._vectors.cpu(),
                "maps": self._dense_maps.cpu().half(),
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # upgraded to the current format here
        info = checkpoint["text2brain"]
        if info.get("bank") is not None:
            self.use_bank(RetrievalBank.from_dict(info["bank"], self.space))
        elif info.get("dense_bank") is not None:
            # Format 4 stored the transformed maps themselves, without the articles' ids.
            self.bank = None
            self._vectors = info["dense_bank"]["embeddings"].float()
            self._dense_maps = info["dense_bank"]["maps"].float()
