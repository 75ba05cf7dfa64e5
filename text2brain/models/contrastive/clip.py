"""CLIP: text and maps on a unit sphere, symmetric InfoNCE, maps by retrieval.

The Euclidean member of the zoo's contrastive heads and the base of MNM (its Lorentz twin):
both train a text encoder and a brain-map encoder contrastively and predict a text's map by
retrieval-based meta-analysis over the training articles (text2brain.models.contrastive.bank).
The shared map metrics (`val/dice_auc`, ...) score those maps exactly as the other heads' maps;
recall@10 / @100 text -> brain and brain -> text over the whole evaluation split come on top
(`val/recall@10_t2b`, `val/recall@100_b2t`, ...), with the contrastive loss (`val/contrastive`),
and the hierarchy measures of a fixed sample of the split (`val/hier/...`,
text2brain.models.contrastive.hierarchy).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from text2brain.brain import BrainSpace
from text2brain.models.contrastive import hierarchy
from text2brain.models.contrastive.bank import RetrievalBankMixin
from text2brain.models.contrastive.hierarchy import HierarchyEmbeddings
from text2brain.models.contrastive.retrieval import RECALL_KS, retrieval_hits
from text2brain.models.contrastive.torch_model import ContrastiveNet, CosineGeometry, Geometry
from text2brain.models.encoders import TextEncoder
from text2brain.models.settings import (
    BrainEncoderSettings,
    OptimSettings,
    TextEncoderSettings,
    as_settings,
)
from text2brain.models.targets import scale_maps
from text2brain.models.text_head import TextEncoderHead
from text2brain.text import check_texts

if TYPE_CHECKING:
    from text2brain.data.hierarchy import HierarchySample

#: Texts per forward pass when the hierarchy sample's texts are embedded.
TEXT_CHUNK = 64


class EmbeddingCollector(Metric):
    """Paired text and brain embeddings of an evaluation epoch, gathered over DDP ranks.

    `compute` returns both (n, d) matrices in batch order; recall needs the whole set, since
    every map is a candidate for every text.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("text", default=[], dist_reduce_fx="cat")
        self.add_state("brain", default=[], dist_reduce_fx="cat")

    def update(self, text: Tensor, brain: Tensor) -> None:
        if text.shape[0] != brain.shape[0]:
            raise ValueError(f"{text.shape[0]} text but {brain.shape[0]} brain embeddings")
        self.text.append(text.detach().float())
        self.brain.append(brain.detach().float())

    def compute(self) -> tuple[Tensor, Tensor]:
        return dim_zero_cat(self.text), dim_zero_cat(self.brain)


class CLIP(RetrievalBankMixin, TextEncoderHead):
    """CLIP head: Euclidean unit embeddings, learnable temperature, symmetric InfoNCE.

    Subclasses change the geometry (`make_geometry`) and may add loss terms (`extra_losses`):
    MNM does both.

    Args:
        text: the text encoder (text2brain.models.settings.TextEncoderSettings; default: the
            bundled MiniLM, mean pooling, trained).
        brain: the 3-D CNN over the map (text2brain.models.settings.BrainEncoderSettings).
        optim: the optimisation as NeuroConText / MNM report it (lr 1e-4, weight decay 0.1).
        embed_dim: size of both modalities' embeddings.
        temperature: initial contrastive temperature (learned; logit scale capped at 100).
        retrieval_k: how many nearest training articles a retrieved map averages.
        retrieval_temperature: temperature of their weights ``softmax(-distance / T)``;
            None uses the learned contrastive temperature.
        hierarchy_pairs: size of the fixed sample of article -> table pairs (and their
            articles' keywords, titles and abstracts) on which each validation and test logs
            the hierarchy measures (`val/hier/...`); 0 switches them off. 500 pairs add 1,000
            maps and about 500 texts to embed per validation.
    """

    extra_metrics = (
        "contrastive",
        *(f"recall@{k}_{way}" for way in ("t2b", "b2t") for k in RECALL_KS),
        *(hierarchy.PREFIX + m for m in hierarchy.MEASURES if m not in hierarchy.CONE_MEASURES),
    )
    #: Whether training batches' `hierarchy_maps` are embedded (only MNM's losses use them).
    uses_hierarchy = False

    def __init__(
        self,
        text: TextEncoderSettings = TextEncoderSettings(),
        brain: BrainEncoderSettings = BrainEncoderSettings(crop=(40, 48, 40), offset=(3, 3, 0)),
        optim: OptimSettings = OptimSettings(lr=1e-4, weight_decay=0.1),
        embed_dim: int = 256,
        temperature: float = 0.07,
        retrieval_k: int = 20,
        retrieval_temperature: float | None = None,
        hierarchy_pairs: int = 500,
    ) -> None:
        super().__init__(text=text, optim=optim)
        if isinstance(retrieval_k, bool) or not isinstance(retrieval_k, int) or retrieval_k < 1:
            raise ValueError(f"retrieval_k must be a positive int, got {retrieval_k!r}")
        if retrieval_temperature is not None and not retrieval_temperature > 0:
            raise ValueError(f"retrieval_temperature must be > 0, got {retrieval_temperature}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if (
            isinstance(hierarchy_pairs, bool)
            or not isinstance(hierarchy_pairs, int)
            or hierarchy_pairs < 0
        ):
            raise ValueError(f"hierarchy_pairs must be an int >= 0, got {hierarchy_pairs!r}")
        self.hierarchy_pairs = hierarchy_pairs
        #: A frozen encoder's vectors of the texts `_embed_texts` saw (they never change).
        self._frozen_features: dict[str, Tensor] = {}
        self.brain_settings = as_settings(BrainEncoderSettings, brain)
        self.embed_dim = embed_dim
        self.initial_temperature = temperature
        self.retrieval_k = retrieval_k
        self.retrieval_temperature = retrieval_temperature
        self.net: ContrastiveNet | None = None
        self.val_embeddings = EmbeddingCollector()
        self.test_embeddings = EmbeddingCollector()

    def make_geometry(self) -> Geometry:
        return CosineGeometry(self.initial_temperature)

    def extra_losses(
        self, text: Tensor, brain: Tensor, batch: dict[str, Any]
    ) -> dict[str, tuple[Tensor, float]]:
        """Further loss terms: name -> (value, weight); `brain` includes hierarchy maps."""
        return {}

    # -- building -----------------------------------------------------------------------------
    def build(self, space: BrainSpace) -> None:
        self.net = ContrastiveNet(
            TextEncoder.from_settings(self.text_settings),
            self.make_geometry(),
            grid_shape=space.shape,
            mask_index=self.mask_index,
            embed_dim=self.embed_dim,
            brain=self.brain_settings,
        )

    # -- embeddings ---------------------------------------------------------------------------
    def embed_text(self, batch: dict[str, Any]) -> Tensor:
        """Points of the batch's texts (its `tokens`, else its `text` tokenised here)."""
        return self.net.embed_text_features(self.text_features(batch))

    # -- training -----------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        # This step moves the weights: the bank's embeddings are outdated from here on (set
        # here, not after the batch, since checkpoint callbacks run before the module's
        # batch-end hook).
        self.mark_bank_stale()
        text = self.embed_text(batch)
        maps = batch["map"]
        extra = batch.get("hierarchy_maps")
        if self.uses_hierarchy and extra is not None and len(extra):
            maps = torch.cat([maps, extra.to(maps.dtype)])
        brain = self.net.embed_maps(maps)
        paired = brain[: len(text)]
        geometry = self.net.geometry
        contrastive = geometry.contrastive_loss(text, paired)
        terms = self.extra_losses(text, brain, batch)
        loss = contrastive + sum(weight * value for value, weight in terms.values())
        return {
            "loss": loss,
            "contrastive": contrastive.detach(),
            **{name: value.detach() for name, (value, _) in terms.items()},
            **geometry.stats(text, paired),
        }

    # -- maps ---------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Maps of the batch's texts (`text_embedding` if given, else its texts embedded)."""
        text = batch.get("text_embedding")
        return self.retrieve_maps(self.embed_text(batch) if text is None else text)

    @torch.inference_mode()
    def predict_texts(self, texts: list[str]) -> Tensor:
        return self.forward({"text": check_texts(texts, allow_empty=False)})

    def normalise_target(self, target: Tensor) -> Tensor:
        """Targets on the scale of the bank's maps (largest absolute value 1)."""
        return scale_maps(target)

    # -- evaluation ---------------------------------------------------------------------------
    def _evaluate(self, batch: dict[str, Any], stage: str, metrics: Metric) -> None:
        text = self.embed_text(batch)
        brain = self.net.embed_maps(batch["map"])
        contrastive = self.net.geometry.contrastive_loss(text, brain)
        self.log(f"{stage}/contrastive", contrastive, batch_size=len(text), sync_dist=True)
        self._collector(stage).update(text, brain)
        super()._evaluate({**batch, "text_embedding": text}, stage, metrics)

    def _collector(self, stage: str) -> EmbeddingCollector:
        return self.val_embeddings if stage == "val" else self.test_embeddings

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_recall("val")
        self._log_hierarchy("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_recall("test")
        self._log_hierarchy("test")

    def _log_recall(self, stage: str) -> None:
        """recall@k text -> brain (rows: texts) and brain -> text over the whole split."""
        collector = self._collector(stage)
        text, brain = collector.compute()
        collector.reset()
        hits = retrieval_hits(self.net.geometry.cross_distance(text, brain))
        values = {f"{stage}/{name}": hit.float().mean() for name, hit in hits.items()}
        # Already gathered over ranks by the collector; sync_dist only says so to Lightning.
        self.log_dict(values, sync_dist=True)

    @torch.no_grad()
    def paired_retrieval_hits(
        self, texts: list[str], maps: np.ndarray | Tensor, ks: Sequence[int] = RECALL_KS
    ) -> dict[str, Tensor]:
        """Per-query hits of paired texts and maps (n of each; text i matches map i) with the
        current weights, in eval mode: ``recall@{k}_t2b`` / ``_b2t`` -> (n,) bool.

        The encoders, distance and hit rule of the logged `<stage>/recall@k_...` (their
        means), for whoever scores the head outside a trainer (`text2brain compare`).
        """
        if len(texts) != len(maps):
            raise ValueError(f"{len(texts)} texts but {len(maps)} maps: they must pair up")
        text = self._embed_texts(check_texts(texts, allow_empty=False))
        brain = self.embed_map_chunks(len(maps), lambda s, e: torch.as_tensor(maps[s:e]))
        return retrieval_hits(self.net.geometry.cross_distance(text, brain), ks)

    # -- the hierarchy ------------------------------------------------------------------------
    def _log_hierarchy(self, stage: str) -> None:
        """`<stage>/hier/...` on the data module's fixed sample of the split (not in the
        sanity check). Every rank measures the same sample with the same weights."""
        trainer = self._trainer
        if not self.hierarchy_pairs or trainer is None or trainer.sanity_checking:
            return
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "hierarchy_sample"):
            return
        values = self.hierarchy_measures(datamodule.hierarchy_sample(stage, self.hierarchy_pairs))
        values = {f"{stage}/{name}": v.to(self.device) for name, v in values.items()}
        self.log_dict(values, sync_dist=True)

    def hierarchy_measures(self, sample: HierarchySample) -> dict[str, Tensor]:
        """The hierarchy measures of a sample (text2brain.data.hierarchy) with the current
        weights, in eval mode: ``hier/<name>`` -> 0-d float tensor (the measures that have no
        meaning in this head's geometry, or no data in the sample, are absent)."""
        return hierarchy.summarise(self.hierarchy_values(sample))

    def hierarchy_values(self, sample: HierarchySample) -> dict[str, Tensor]:
        """The per-item values behind `hierarchy_measures` (``hier/<name>`` -> (n,) tensor: bool
        per pair for a fraction, float per point for a distance), for confidence intervals."""
        points = HierarchyEmbeddings(
            article=self.embed_map_chunks(
                len(sample), lambda s, e: torch.from_numpy(sample.article_maps[s:e])
            ),
            table=self.embed_map_chunks(
                len(sample), lambda s, e: torch.from_numpy(sample.table_maps[s:e])
            ),
            texts={source: self._embed_texts(texts) for source, texts in sample.texts.items()},
            text_article={
                source: torch.from_numpy(rows).to(self.device)
                for source, rows in sample.text_article.items()
            },
        )
        return self.net.geometry.hierarchy_values(points)

    @torch.no_grad()
    def _embed_texts(self, texts: list[str]) -> Tensor:
        """Points (len(texts), d) of raw texts in eval mode, in the trainer's precision as in
        the evaluation steps, by chunks of similar length; a frozen encoder's vectors are kept
        for the next call."""
        training = self.training
        self.eval()
        order = np.argsort([len(t) for t in texts], kind="stable")
        points = torch.zeros(len(texts), self.embed_dim, device=self.device)
        trainer = self._trainer
        try:
            with trainer.precision_plugin.forward_context() if trainer else nullcontext():
                for start in range(0, len(texts), TEXT_CHUNK):
                    rows = order[start : start + TEXT_CHUNK]
                    chunk = [texts[i] for i in rows]
                    features = self._hierarchy_features(chunk)
                    points[torch.from_numpy(rows)] = self.net.embed_text_features(features)
        finally:
            self.train(training)
        return points

    def _hierarchy_features(self, texts: list[str]) -> Tensor:
        if not self.encoder_frozen:
            return self.text_features({"text": texts})
        missing = [t for t in dict.fromkeys(texts) if t not in self._frozen_features]
        if missing:
            for text, vector in zip(missing, self.encode_texts(missing), strict=True):
                self._frozen_features[text] = vector.cpu()
        return torch.stack([self._frozen_features[t] for t in texts]).to(self.device)
