"""The retrieval bank's life cycle and retrieval both ways, for heads that embed maps.

`RetrievalBankMixin` keeps a `RetrievalBank` (text2brain.models.contrastive.retrieval: the
training articles' ids, titles, keywords, peaks and embeddings) beside a head's weights:

- built from the data module the first time it is needed (validation, test, prediction, the
  end of fit, or a checkpoint save): peaks and texts only, which is cheap;
- embedded (every article map rebuilt and passed through the brain encoder: about 10,000 maps,
  a minute on two CPU cores) only when something will read the embeddings and the weights
  changed since they were computed: before validation, test and prediction, at the end of fit
  and, lazily, at the first retrieval after loading (`related_articles`, `describe_maps`,
  `retrieve_maps`). A training step marks them stale;
- saved in every checkpoint, with its embeddings when they match the saved weights; a
  periodic checkpoint written between two validations (`last.ckpt`) leaves the stale
  embeddings out instead of recomputing them, and whatever loads it (`load_predictor`, a
  resumed run, `text2brain export`) embeds the bank when it first needs it;
- `retrieve_maps`: a text's map by retrieval-based meta-analysis, the weighted average of the
  `retrieval_k` nearest articles' maps, weights ``softmax(-distance / T)``, the maps rebuilt
  from their peaks.

The head provides `self.net` with `embed_maps(maps)` and `geometry` (`cross_distance`,
`distance`, `logit_scale`), `embed_text(batch)`, and `retrieval_k` / `retrieval_temperature`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from text2brain.models.contrastive.losses import cosine_logits
from text2brain.models.contrastive.retrieval import (
    RelatedArticle,
    RetrievalBank,
    compact_embeddings,
    retrieval_weights,
)
from text2brain.models.targets import scaled_targets
from text2brain.text import check_texts

#: How `retrieve_maps` measures a text's distance to the bank's maps (`retrieval_distance`).
RETRIEVAL_SPACES = ("logits", "geodesic", "direction")

#: Maps per forward pass when maps are embedded in bulk.
BANK_CHUNK = 256


class RetrievalBankMixin:
    """The bank's life cycle over the Lightning hooks, maps by retrieval, and retrieval both ways.

    Mixed in before the LightningModule base (its hooks call ``super()``).
    """

    bank: RetrievalBank | None = None
    #: Whether the bank's embeddings were computed with the current weights.
    bank_fresh: bool = False
    retrieval_k: int
    retrieval_temperature: float | None
    retrieval_space: str = "logits"
    retrieval_transform: str = "none"

    def mark_bank_stale(self) -> None:
        """The weights are about to change: recompute the bank's embeddings when next read."""
        self.bank_fresh = False

    # -- the retrieval bank -------------------------------------------------------------------
    def build_bank(self) -> None:
        """Build the bank (without embeddings) from the data module if there is none."""
        if self.bank is not None:
            return
        datamodule = getattr(self._trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "article_peaks"):
            return
        self.bank = training_bank(datamodule)
        self.bank_fresh = False

    def refresh_bank(self) -> None:
        """Embed the bank with the current weights, unless its embeddings already are theirs."""
        if self.bank is not None and (not self.bank_fresh or self.bank.embeddings is None):
            self.bank.embeddings = compact_embeddings(self.embed_bank())
            self.bank_fresh = True

    def prepare_bank(self) -> None:
        """Build the bank if there is none and bring its embeddings up to date."""
        self.build_bank()
        self.refresh_bank()

    def embed_bank(self) -> Tensor:
        """Embeddings (n, d) float32 of the bank's maps with the current weights."""
        bank = self.bank
        return self.embed_map_chunks(len(bank), lambda s, e: bank.render(range(s, e)))

    @torch.no_grad()
    def embed_map_chunks(
        self,
        n: int,
        maps: Callable[[int, int], Tensor],
        embed: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Points (n, d) of ``maps(start, end)`` (rows start..end-1), in eval mode and fp32,
        `BANK_CHUNK` maps at a time, by `embed` (default: the net's `embed_maps` of masked maps;
        a basis tower's `embed_brain_features` of cached coefficients)."""
        embed = self.net.embed_maps if embed is None else embed
        training = self.training
        self.eval()
        try:
            with torch.autocast(self.device.type, enabled=False):
                chunks = [
                    embed(maps(s, min(n, s + BANK_CHUNK)).to(self.device))
                    for s in range(0, n, BANK_CHUNK)
                ]
        finally:
            self.train(training)
        return torch.cat(chunks) if chunks else torch.zeros(0, self.net.embed_dim)

    def require_bank(self, what: str) -> RetrievalBank:
        """The bank with up-to-date embeddings (computed here if they are not)."""
        if self.bank is None:
            raise ValueError(
                f"{type(self).__name__} has no retrieval bank, so it cannot {what}: fit or "
                "validate it with a TextMapDataModule, or load a checkpoint written by "
                "`text2brain fit`"
            )
        self.refresh_bank()
        return self.bank

    def on_fit_end(self) -> None:
        super().on_fit_end()
        self.prepare_bank()

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self.prepare_bank()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.prepare_bank()

    def on_predict_epoch_start(self) -> None:
        super().on_predict_epoch_start()
        self.prepare_bank()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        self.build_bank()
        if self.bank is not None:
            state = self.bank.to_dict()
            if not self.bank_fresh:  # stale: left out, not recomputed for a periodic save
                state["embeddings"] = None
            checkpoint["text2brain"]["bank"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["text2brain"].get("bank")
        if state is not None:
            self.bank = RetrievalBank.from_dict(state, self.space)
            # Saved embeddings are those of the saved weights, which load with them.
            self.bank_fresh = self.bank.embeddings is not None

    # -- maps ---------------------------------------------------------------------------------
    def temperature(self) -> Tensor | float:
        """Temperature of the retrieval weights: the configured one, else the learned one."""
        if self.retrieval_temperature is not None:
            return self.retrieval_temperature
        return 1.0 / self.net.geometry.logit_scale().detach()

    def retrieve_maps(self, text: Tensor) -> Tensor:
        """Retrieval-based maps (n, n_voxels) of text points (n, d), float32 in [-1, 1]."""
        if self.bank is None:
            warnings.warn(
                f"{type(self).__name__} has no retrieval bank yet (it is built from the data "
                "module at validation, at the end of fit or when a checkpoint is saved): "
                "predicting all-zero maps",
                UserWarning,
                stacklevel=2,
            )
            return torch.zeros(len(text), self.space.n_voxels, device=text.device)
        bank = self.require_bank("retrieve maps")
        distance = self.retrieval_distance(text, bank.embeddings.to(text.device))
        indices, weights = retrieval_weights(distance, self.retrieval_k, self.temperature())
        transform = self.retrieval_transform
        if transform == "none":
            return bank.weighted_maps(indices, weights)
        return bank.weighted_maps(indices, weights, lambda maps: scaled_targets(maps, transform))

    def retrieval_distance(self, text: Tensor, brain: Tensor) -> Tensor:
        """Text x bank distances (n, N) that pick and weight a text's neighbours, by
        `retrieval_space`: "logits" (what the contrastive logits are made of: MNM's exterior
        angle, CLIP's cosine distance), "geodesic" (the Lorentz distance; CLIP: the cosine
        distance) or "direction" (the cosine distance of the points' directions from the
        origin, blind to how far out a map lies)."""
        geometry = self.net.geometry
        space = self.retrieval_space
        if space == "logits":
            return geometry.cross_distance(text, brain)
        if space == "geodesic":
            return geometry.distance(text, brain)
        return 1.0 - cosine_logits(text, brain, 1.0)

    # -- retrieval both ways ------------------------------------------------------------------
    @torch.inference_mode()
    def related_articles(self, texts: list[str], k: int = 10) -> list[list[RelatedArticle]]:
        """The `k` training articles whose maps lie nearest each text, nearest first."""
        bank = self.require_bank("find related articles")
        check_k(k)
        text = self.embed_text({"text": check_texts(texts, allow_empty=False)})
        distance = self.net.geometry.cross_distance(text, bank.embeddings.to(text.device))
        return self.nearest(bank, distance, k)

    @torch.inference_mode()
    def describe_maps(self, maps: Tensor, k: int = 10) -> list[list[RelatedArticle]]:
        """The `k` training articles whose maps lie nearest each masked map (n, n_voxels).

        Map to map in the learned brain space (as NeuroQuery and Neurosynth decode a map by
        its similarity to theirs); the articles' titles and keywords describe the map.
        """
        bank = self.require_bank("describe maps")
        check_k(k)
        maps = torch.as_tensor(maps, dtype=torch.float32, device=self.device)
        if maps.ndim != 2 or maps.shape[1] != self.space.n_voxels:
            raise ValueError(
                f"maps must be (n, {self.space.n_voxels}) masked vectors, got {tuple(maps.shape)}"
            )
        for bad, problem in (
            (~torch.isfinite(maps).all(dim=1), "has NaN or infinite values"),
            (~maps.ne(0).any(dim=1), "is zero everywhere in the brain mask"),
        ):
            if bad.any():
                raise ValueError(f"maps[{int(bad.nonzero()[0])}] {problem}")
        brain = self.net.embed_maps(maps)
        distance = self.net.geometry.distance(brain, bank.embeddings.to(brain.device))
        return self.nearest(bank, distance, k)

    @staticmethod
    def nearest(bank: RetrievalBank, distance: Tensor, k: int) -> list[list[RelatedArticle]]:
        nearest, indices = distance.float().topk(min(k, len(bank)), dim=1, largest=False)
        return bank.articles(indices.cpu(), nearest.cpu())


def training_bank(datamodule: Any) -> RetrievalBank:
    """The bank (without embeddings) of a `TextMapDataModule`'s training articles: their ids,
    titles, keywords and peaks, rendered as the data module renders them."""
    ids, *peaks = datamodule.article_peaks("train")
    corpus = datamodule.corpus
    articles = [corpus.articles[corpus.index_of(i)] for i in ids]
    return RetrievalBank.from_peaks(
        ids,
        tuple(peaks),
        [a.title for a in articles],
        [list(a.keywords) for a in articles],
        datamodule.space,
        datamodule.hparams.fwhm,
    )


def check_k(k: int) -> None:
    """A number of neighbours must be a positive int (not a bool)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
