"""The retrieval head's maths in plain torch: nearest training titles, mean of their maps.

`RetrievalMaths` holds it once, for the LightningModule (`Retrieval`, which adds the fit) and
for `RetrievalInference`, which `load_predictor` builds: predicting then needs no Lightning.
Both keep the same buffers (`k`, `temperature`, `validation_scores`) and the same bank entry
in the checkpoint's "text2brain" section, so checkpoints and exports load into either.

A query's unit embedding picks the `k` training titles of highest cosine similarity; their
articles' maps, max-scaled and through the head's target transform, are averaged with weights
``softmax(similarity / temperature)``. The maps are rebuilt from the bank's peaks: a few
queries render only their neighbours; a batch whose neighbours outnumber `GATHER_LIMIT`
renders the whole bank once (about 10,000 maps, seconds) and keeps it in memory (1.2 GB
float32 on NeuroQuery) for one matrix product per batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from text2brain.brain import BrainSpace
from text2brain.models.contrastive.bank import check_k
from text2brain.models.contrastive.retrieval import (
    RelatedArticle,
    RetrievalBank,
    compact_embeddings,
    retrieval_weights,
    weighted_maps,
)
from text2brain.models.encoders import TextEncoder
from text2brain.models.head import TRAINING_HPARAMS, BrainMapHead
from text2brain.models.settings import TextEncoderSettings, as_settings
from text2brain.models.targets import parse_transform, scaled_targets
from text2brain.text import check_texts

#: Up to this many (query, neighbour) pairs the neighbours' maps are rendered; beyond, the
#: whole bank is rendered once and one dense matrix product serves every batch.
GATHER_LIMIT = 4096
#: Bank maps rendered per call when the whole bank is rendered.
RENDER_CHUNK = 1024
#: The default grids of k and of the temperature (the Lightning head's and the config's).
K_GRID = (25, 50, 100, 200, 400, 800, 1600, 3200)
TEMPERATURE_GRID = (0.02, 0.05, 0.1, 0.2, 0.5)


class RetrievalMaths:
    """The retrieval computation and its bank, mixed into a `BrainMapHead` (see Retrieval).

    The class using it provides `text_vectors(texts)`: the encoder's pooled vectors.
    """

    text_settings: TextEncoderSettings
    inference_only: bool
    #: The training articles (None before the fit, or from a format-4 checkpoint).
    bank: RetrievalBank | None = None

    def configure(
        self,
        k_grid: Sequence[int],
        temperature_grid: Sequence[float],
        k: int | None,
        temperature: float | None,
        target_transform: str,
    ) -> None:
        """Check and keep the settings (both classes' constructors call this)."""
        parse_transform(target_transform)  # a bad name fails here, not at fit
        ks = [k] if k is not None else list(k_grid)
        temperatures = [temperature] if temperature is not None else list(temperature_grid)
        if not ks or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in ks):
            raise ValueError(f"k and k_grid must be positive ints, got {ks}")
        if not temperatures or any(not t > 0 for t in temperatures):
            raise ValueError(f"temperature and temperature_grid must be > 0, got {temperatures}")
        self.ks, self.temperatures = ks, temperatures
        self.target_transform = target_transform
        self.bank = None
        # The bank as prediction reads it: unit title embeddings (n, d) float32 and, once
        # rendered, every article's transformed map (n, voxels) float32.
        self._vectors: Tensor | None = None
        self._dense_maps: Tensor | None = None

    def build(self, space: BrainSpace) -> None:
        encoder = TextEncoder.from_settings(self.text_settings, inference=self.inference_only)
        encoder.requires_grad_(False)  # nothing is trained: a fixed function of the text
        self.net = nn.ModuleDict({"text_encoder": encoder})
        self.register_buffer("validation_scores", torch.zeros(len(self.ks), len(self.temperatures)))
        self.register_buffer("k", torch.tensor(self.ks[0]))
        self.register_buffer("temperature", torch.tensor(float(self.temperatures[0])))

    def text_vectors(self, texts: list[str]) -> Tensor:
        """The encoder's pooled vectors (n, d) of texts."""
        raise NotImplementedError

    # -- the bank -----------------------------------------------------------------------------
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

    # -- prediction ---------------------------------------------------------------------------
    def retrieve(self, queries: Tensor, k: int, temperature: float) -> Tensor:
        """Maps (n, voxels) float32 of unit query embeddings (n, d): the softmax-weighted mean
        of the `k` most similar bank maps, in float32 whatever the caller's autocast."""
        if self._vectors is None:
            warnings.warn(
                "the retrieval head has no bank of training articles yet (it is built at fit): "
                "predicting all-zero maps",
                UserWarning,
                stacklevel=2,
            )
            return torch.zeros(len(queries), self.space.n_voxels, device=queries.device)
        vectors = self.bank_vectors()
        k = min(int(k), len(vectors))
        with torch.autocast(queries.device.type, enabled=False):
            similarity = queries.float() @ vectors.T
        index, weights = retrieval_weights(-similarity, k, temperature)
        if self._dense_maps is None and len(queries) * k <= GATHER_LIMIT:
            # A few queries: render only their neighbours, each distinct one once.
            return self.bank.weighted_maps(index, weights, self.normalise_target)
        maps = self.bank_maps()
        if len(queries) * k <= GATHER_LIMIT:
            return weighted_maps(maps, index, weights)
        # Many: one dense product (n x bank) @ (bank x voxels), a BLAS call.
        with torch.autocast(queries.device.type, enabled=False):
            dense = torch.zeros(len(queries), len(maps), device=queries.device)
            return dense.scatter_(1, index, weights) @ maps

    def embed_queries(self, texts: list[str]) -> Tensor:
        """Unit embeddings (n, d) float32 of texts, on the head's device."""
        return F.normalize(self.text_vectors(texts).float(), dim=1).to(self.device)

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
    def save_bank(self, checkpoint: dict[str, Any]) -> None:
        """The bank into the checkpoint's "text2brain" section (a format-4 dense one as it came)."""
        if self.bank is not None:
            checkpoint["text2brain"]["bank"] = self.bank.to_dict()
        elif self._dense_maps is not None:
            checkpoint["text2brain"]["dense_bank"] = {
                "embeddings": compact_embeddings(self._vectors),
                "maps": self._dense_maps.cpu().half(),
            }

    def load_bank(self, checkpoint: dict[str, Any]) -> None:
        """The bank of a checkpoint (upgraded to the current format)."""
        info = checkpoint["text2brain"]
        if info.get("bank") is not None:
            self.use_bank(RetrievalBank.from_dict(info["bank"], self.space))
        elif info.get("dense_bank") is not None:
            # Format 4 stored the transformed maps themselves, without the articles' ids.
            self.bank = None
            self._vectors = info["dense_bank"]["embeddings"].float()
            self._dense_maps = info["dense_bank"]["maps"].float()


class RetrievalInference(RetrievalMaths, BrainMapHead):
    """The retrieval head for prediction only: what `load_predictor` builds, without Lightning.

    It takes the retrieval head's arguments (the grids give the shape of the stored scores).
    """

    #: The head's name in messages (the registered LightningModule's).
    model_name = "Retrieval"
    ignored_hparams = tuple(h for h in TRAINING_HPARAMS if h != "target_transform")

    def __init__(
        self,
        text: TextEncoderSettings | dict[str, Any] | None = None,
        k_grid: Sequence[int] = K_GRID,
        temperature_grid: Sequence[float] = TEMPERATURE_GRID,
        k: int | None = None,
        temperature: float | None = None,
        target_transform: str = "power:0.1",
    ) -> None:
        super().__init__()
        self.text_settings = as_settings(TextEncoderSettings, text)
        self.configure(k_grid, temperature_grid, k, temperature, target_transform)

    @property
    def device(self) -> torch.device:
        return self.validation_scores.device

    def text_vectors(self, texts: list[str]) -> Tensor:
        encoder = self.net.text_encoder
        vectors = [
            encoder(**encoder.tokenize(texts[i : i + 128], self.text_settings.max_length))
            for i in range(0, len(texts), 128)
        ]
        return torch.cat(vectors) if vectors else torch.zeros(0, encoder.dim)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.load_bank(checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """What an ensemble holding this head saves for it (its "text2brain" section)."""
        self.save_bank(checkpoint)
