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
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from text2brain.brain import BrainSpace
from text2brain.models.contrastive import hierarchy
from text2brain.models.contrastive.bank import RETRIEVAL_SPACES, RetrievalBankMixin
from text2brain.models.contrastive.features import (
    FeatureBatches,
    FeatureTables,
    group_rows,
    project_maps,
)
from text2brain.models.contrastive.hierarchy import HierarchyEmbeddings
from text2brain.models.contrastive.retrieval import RECALL_KS, retrieval_hits
from text2brain.models.contrastive.torch_model import ContrastiveNet, CosineGeometry, Geometry
from text2brain.models.embedding_cache import is_frozen
from text2brain.models.encoders import TextEncoder
from text2brain.models.settings import (
    BrainEncoderSettings,
    OptimSettings,
    TextEncoderSettings,
    TextTowerSettings,
    as_settings,
)
from text2brain.models.targets import parse_transform, scaled_targets
from text2brain.models.text_head import TextEncoderHead
from text2brain.text import check_texts

if TYPE_CHECKING:
    from text2brain.data.hierarchy import HierarchySample

#: Texts per forward pass when the hierarchy sample's texts are embedded.
TEXT_CHUNK = 64
#: The article texts a feature-trained head can pair with the article's map (each article's
#: title, its keywords joined in one text, its abstract: TextMapDataModule.article_texts).
FEATURE_SOURCES = ("title", "keywords", "abstract")


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
        retrieval_space: the distance that picks and weights them ("logits", "geodesic",
            "direction": text2brain.models.contrastive.bank.RetrievalBankMixin
            .retrieval_distance).
        retrieval_transform: the monotone transform of the neighbours' max-scaled maps before
            they are averaged ("none", "power:0.1", ...: text2brain.models.targets), as the
            retrieval head's; targets are scored on the same scale.
        hierarchy_pairs: size of the fixed sample of article -> table pairs (and their
            articles' keywords, titles and abstracts) on which each validation and test logs
            the hierarchy measures (`val/hier/...`); 0 switches them off. 500 pairs add 1,000
            maps and about 500 texts to embed per validation.
        text_tower: the projection after the text encoder (TextTowerSettings: "linear", or
            MNM's residual "mlp" head).
        feature_sources: train on cached features (MNM's official recipe, at its batch size):
            with a frozen text encoder and a "basis" brain tower, every training article's
            texts of these sources ("title", "keywords", "abstract") are embedded once and its
            maps projected once on the basis; an epoch then draws, for each training article,
            one of its texts, its map and (MNM) up to `data.hierarchy_tables` of its tables,
            and a step runs only the two MLPs. None: the data module's rendered batches.
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
        retrieval_space: str = "logits",
        retrieval_transform: str = "none",
        hierarchy_pairs: int = 500,
        text_tower: TextTowerSettings = TextTowerSettings(),
        feature_sources: Sequence[str] | None = None,
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
        self.text_tower = as_settings(TextTowerSettings, text_tower)
        if feature_sources is not None:
            if not feature_sources or not set(feature_sources) <= set(FEATURE_SOURCES):
                raise ValueError(
                    f"feature_sources must be some of {FEATURE_SOURCES} (or null), got "
                    f"{list(feature_sources)}"
                )
            if self.brain_settings.kind != "basis":
                raise ValueError(
                    "feature_sources needs a brain tower over cached map features: set "
                    "brain.kind: basis (or feature_sources: null)"
                )
        self.feature_sources = None if feature_sources is None else tuple(feature_sources)
        #: The cached training features of a feature-trained fit (built at fit start).
        self.feature_tables: FeatureTables | None = None
        self._feature_ids: list[str] | None = None
        self.embed_dim = embed_dim
        self.initial_temperature = temperature
        self.retrieval_k = retrieval_k
        self.retrieval_temperature = retrieval_temperature
        if retrieval_space not in RETRIEVAL_SPACES:
            raise ValueError(
                f"retrieval_space must be one of {RETRIEVAL_SPACES}, got {retrieval_space!r}"
            )
        parse_transform(retrieval_transform)  # a bad name fails here
        self.retrieval_space = retrieval_space
        self.retrieval_transform = retrieval_transform
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
            text_tower=self.text_tower,
        )
        if self.feature_sources is not None and not is_frozen(self.net.text_encoder):
            raise ValueError(
                "feature_sources needs a frozen text encoder (its vectors are cached once): "
                "set text.freeze_embeddings: true and text.freeze_layers to the encoder's depth"
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
        if "brain_features" in batch:  # cached features (`feature_sources`)
            text = self.net.embed_text_features(batch["text_features"])
            brain = self.net.embed_brain_features(batch["brain_features"])
        else:
            text = self.embed_text(batch)
            brain = self.net.embed_maps(self.training_maps(batch))
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

    def training_maps(self, batch: dict[str, Any]) -> Tensor:
        """A rendered training batch's maps, then its `hierarchy_maps` when the head uses them:
        the rows of the brain embeddings its losses index."""
        maps = batch["map"]
        extra = batch.get("hierarchy_maps")
        if self.uses_hierarchy and extra is not None and len(extra):
            maps = torch.cat([maps, extra.to(maps.dtype)])
        return maps

    # -- cached features ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.prepare_features()

    def prepare_features(self) -> None:
        """Before a fit (in `setup`: Lightning builds the training loader, to count its steps,
        before `on_fit_start`): fit the map basis unless it is fitted, and, with
        `feature_sources`, cache the training features that the loader serves."""
        basis = self.net.basis
        datamodule = getattr(self.trainer, "datamodule", None)
        if basis is None or datamodule is None or not hasattr(datamodule, "article_maps"):
            return
        if not basis.fitted:  # a resumed fit refits the same basis, then loads its own
            _, maps = datamodule.article_maps("train")
            basis.fit(maps)
            rank_zero_info(
                f"{type(self).__name__}: map basis of {basis.n_components} components fitted "
                f"on {len(maps):,} training maps ({float(basis.explained):.1%} of their "
                "variance)"
            )
        if self.feature_sources is not None:
            self.attach_embedding_cache(build=True)
            self.feature_tables = self.build_feature_tables(datamodule)

    def on_validation_start(self) -> None:
        self.require_fitted_basis()
        super().on_validation_start()

    def on_test_start(self) -> None:
        self.require_fitted_basis()
        super().on_test_start()

    def on_predict_start(self) -> None:
        self.require_fitted_basis()
        super().on_predict_start()

    def require_fitted_basis(self) -> None:
        """A "basis" brain tower embeds maps only once its basis is fitted (by `fit`, or from
        a checkpoint): refuse, rather than embed every map at the same point."""
        basis = self.net.basis if self.net is not None else None
        if basis is not None and not basis.fitted:
            raise ValueError(
                f"{type(self).__name__}'s map basis is not fitted: train the head first "
                "(text2brain fit) or pass --ckpt_path with a checkpoint of it"
            )

    @torch.no_grad()
    def build_feature_tables(self, datamodule: Any) -> FeatureTables:
        """The training articles' cached features (text2brain.models.contrastive.features):
        their texts' vectors (the embedding cache), maps' and tables' basis coefficients."""
        basis = self.net.basis.cpu()
        ids, maps = datamodule.article_maps("train")
        texts, text_rows = datamodule.article_texts("train", self.feature_sources)
        text = self.encode_texts_cached(datamodule, texts).float().cpu()
        article, article_breadth = project_maps(maps, len(maps), basis)
        table_rows, jobs = (
            datamodule.table_jobs("train") if self.uses_hierarchy else (np.zeros(0, int), [])
        )
        table, table_breadth = project_maps(
            lambda s, e: datamodule.render(jobs[s:e]), len(jobs), basis
        )
        self.net.basis.to(self.device)
        self._feature_ids = list(ids)
        rank_zero_info(
            f"{type(self).__name__}: cached features of {len(ids):,} training articles, "
            f"{len(texts):,} texts ({', '.join(self.feature_sources)}), {len(jobs):,} table maps"
        )
        return FeatureTables(
            text=text,
            text_start=group_rows(text_rows, len(ids)),
            article=article,
            article_breadth=article_breadth,
            table=table,
            table_start=group_rows(table_rows, len(ids)),
            table_breadth=table_breadth,
        )

    def feature_loader(self, datamodule: Any) -> DataLoader | None:
        """The training loader of a feature-trained fit (TextMapDataModule asks for it): the
        training articles with a text, shuffled, `data.batch_size` a batch; None otherwise."""
        tables = self.feature_tables
        if tables is None:
            return None
        tables_per_article = datamodule.hparams.hierarchy_tables if self.uses_hierarchy else 0
        return DataLoader(
            tables.trainable().tolist(),
            batch_size=datamodule.hparams.batch_size,
            shuffle=True,
            drop_last=False,
            collate_fn=FeatureBatches(tables, tables_per_article),
        )

    def embed_bank(self) -> Tensor:
        """The bank's embeddings; from the cached coefficients when the bank holds exactly the
        feature-trained fit's training articles (no map rendered)."""
        bank, tables = self.bank, self.feature_tables
        if tables is None or self._feature_ids != list(bank.ids):
            return super().embed_bank()
        return self.embed_map_chunks(
            len(tables.article), lambda s, e: tables.article[s:e], self.net.embed_brain_features
        )

    # -- maps ---------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Maps of the batch's texts (`text_embedding` if given, else its texts embedded)."""
        text = batch.get("text_embedding")
        return self.retrieve_maps(self.embed_text(batch) if text is None else text)

    @torch.inference_mode()
    def predict_texts(self, texts: list[str]) -> Tensor:
        return self.forward({"text": check_texts(texts, allow_empty=False)})

    def normalise_target(self, target: Tensor) -> Tensor:
        """Targets on the scale of the retrieved maps (max-scaled, `retrieval_transform`)."""
        return scaled_targets(target, self.retrieval_transform)

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
