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

Its checkpoint holds the training titles' embeddings and their maps (float16 by default:
0.68 GB on NeuroQuery; 1.2 GB in memory as float32), so it predicts without the corpus.
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
from text2brain.models.contrastive.retrieval import retrieval_weights, weighted_maps
from text2brain.models.encoders import TextEncoder
from text2brain.models.settings import TextEncoderSettings
from text2brain.models.targets import parse_transform, scaled_targets
from text2brain.models.text_head import TextEncoderHead
from text2brain.text import check_texts

log = logging.getLogger(__name__)

MAP_DTYPES = {"float16": torch.float16, "float32": torch.float32}
#: Up to this many (query, neighbour) pairs the neighbours' maps are gathered; beyond, one
#: dense matrix product is cheaper than a (queries, k, voxels) tensor.
GATHER_LIMIT = 4096


class Retrieval(TextEncoderHead, ClosedFormModule):
    """Nearest training articles by title embedding; their maps' softmax-weighted mean.

    Args:
        text: the text encoder, kept frozen (text2brain.models.settings.TextEncoderSettings).
        k_grid: numbers of nearest articles to choose from by validation Dice-AUC.
        temperature_grid: softmax temperatures (on cosine similarity) to choose from.
        k, temperature: fixed values instead of choosing them (None: choose).
        map_dtype: how the checkpoint stores the training maps ("float16" halves it; they are
            rounded so at fit, and held and averaged in float32).
        target_transform: the monotone transform of the max-scaled maps that are averaged
            ("none", "sqrt", "power:P", "log1p:C"; text2brain.models.targets).
    """

    fitted_buffers = ("bank_embeddings", "bank_maps", "validation_scores")

    def __init__(
        self,
        text: TextEncoderSettings = TextEncoderSettings(freeze_embeddings=True, freeze_layers=6),
        k_grid: Sequence[int] = (25, 50, 100, 200, 400, 800, 1600, 3200),
        temperature_grid: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.5),
        k: int | None = None,
        temperature: float | None = None,
        map_dtype: str = "float16",
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
        if map_dtype not in MAP_DTYPES:
            raise ValueError(f"map_dtype must be one of {sorted(MAP_DTYPES)}, got {map_dtype!r}")
        self.ks, self.temperatures = ks, temperatures
        self.target_transform = target_transform

    def build(self, space: BrainSpace) -> None:
        encoder = TextEncoder.from_settings(self.text_settings)
        encoder.requires_grad_(False)  # nothing is trained: a fixed function of the text
        self.net = nn.ModuleDict({"text_encoder": encoder})
        self.register_buffer("bank_embeddings", torch.zeros(0, encoder.dim))
        self.register_buffer("bank_maps", torch.zeros(0, space.n_voxels))
        self.register_buffer("validation_scores", torch.zeros(len(self.ks), len(self.temperatures)))
        self.register_buffer("k", torch.tensor(self.ks[0]))
        self.register_buffer("temperature", torch.tensor(float(self.temperatures[0])))

    # -- the fit ------------------------------------------------------------------------------
    def fit_closed_form(self, datamodule: Any) -> None:
        self.attach_embedding_cache(build=True)
        embeddings, maps = self._titled(datamodule, "train")
        self.bank_embeddings = embeddings.to(self.device)
        # Rounded as the checkpoint will store them, so a loaded head predicts the same maps.
        stored = self.normalise_target(maps).to(MAP_DTYPES[self.hparams.map_dtype])
        self.bank_maps = stored.float().to(self.device)
        val_embeddings, val_maps = self._titled(datamodule, "val")
        scores = torch.zeros(len(self.ks), len(self.temperatures))
        if len(val_maps) and (len(self.ks) > 1 or len(self.temperatures) > 1):
            queries = val_embeddings.to(self.device)
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
            "temperature %s",
            int(self.k),
            float(self.temperature),
            float(scores.max()),
            self.ks,
            self.temperatures,
        )

    def normalise_target(self, target: Tensor) -> Tensor:
        """Maps on the scale of the head's predictions: max-scaled, then transformed."""
        return scaled_targets(target, self.target_transform)

    def _titled(self, datamodule: Any, stage: str) -> tuple[Tensor, Tensor]:
        """Unit title embeddings (n, d) and float32 maps (n, voxels) of a split's articles
        that have a title (`TextMapDataModule.titled_article_maps`)."""
        titles, maps = datamodule.titled_article_maps(stage)
        embeddings = self.encode_texts(titles).float().cpu()
        return F.normalize(embeddings, dim=1), torch.from_numpy(np.asarray(maps, np.float32))

    # -- prediction ---------------------------------------------------------------------------
    def retrieve(self, queries: Tensor, k: int, temperature: float) -> Tensor:
        """Maps (n, voxels) float32 of unit query embeddings (n, d): the softmax-weighted mean
        of the `k` most similar bank maps, in float32 whatever the caller's autocast."""
        k = min(int(k), len(self.bank_maps))
        with torch.autocast(queries.device.type, enabled=False):
            similarity = queries.float() @ self.bank_embeddings.T
        index, weights = retrieval_weights(-similarity, k, temperature)
        if len(queries) * k <= GATHER_LIMIT:  # a few queries: read only their neighbours
            return weighted_maps(self.bank_maps, index, weights)
        # Many: one dense product (n x bank) @ (bank x voxels), a BLAS call.
        with torch.autocast(queries.device.type, enabled=False):
            dense = torch.zeros(len(queries), len(self.bank_maps), device=queries.device)
            return dense.scatter_(1, index, weights) @ self.bank_maps

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        state["bank_maps"] = state["bank_maps"].to(MAP_DTYPES[self.hparams.map_dtype])

    def forward(self, batch: dict[str, Any]) -> Tensor:
        queries = F.normalize(self.encode_texts(list(batch["text"])).float(), dim=1)
        return self.retrieve(queries.to(self.device), int(self.k), float(self.temperature))

    @torch.inference_mode()
    def predict_texts(self, texts: list[str]) -> Tensor:
        return self.forward({"text": check_texts(texts, allow_empty=False)})
