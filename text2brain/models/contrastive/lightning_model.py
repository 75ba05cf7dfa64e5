"""The contrastive heads in the zoo: CLIP (Euclidean) and MNM (Lorentz), text and maps in one space.

Both train a text encoder and a brain-map encoder contrastively and predict a text's map by
*retrieval-based meta-analysis*: the weighted average of the training-article maps nearest to
the text's embedding (`retrieval_k` nearest, weights ``softmax(-distance / T)``, T the learned
contrastive temperature unless `retrieval_temperature` is set). The shared map metrics
(`val/dice_auc`, ...) score those maps exactly as the other heads' maps; recall@10 / @100
text -> brain and brain -> text over the whole evaluation split come on top
(`val/recall@10_t2b`, `val/recall@100_b2t`, ...), with the contrastive loss (`val/contrastive`).

The retrieval bank (training-article maps, ids, titles, keywords and embeddings; see
`retrieval.RetrievalBank` for its size) is built from the data module the first time it is
needed (validation, test, prediction, the end of fit, or a checkpoint save) and travels in
every checkpoint, so `load_predictor(ckpt)` answers `predict_maps`, `related_articles` and
`describe_map` without the corpus. Its maps never change; its embeddings are recomputed
whenever the weights have changed since they were computed (before each validation and each
checkpoint save: about 10,000 maps through the brain encoder, a minute on two CPU cores).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from text2brain.brain import BrainSpace
from text2brain.models.contrastive.losses import LORENTZ_LOGITS
from text2brain.models.contrastive.retrieval import (
    RECALL_KS,
    EmbeddingCollector,
    RelatedArticle,
    RetrievalBank,
    recall_at_k,
    retrieval_weights,
    scale_maps,
    weighted_maps,
)
from text2brain.models.contrastive.torch_model import (
    MODALITIES,
    ContrastiveNet,
    CosineGeometry,
    Geometry,
    LorentzGeometry,
)
from text2brain.models.encoders import DEFAULT_ENCODER, TextEncoder
from text2brain.models.text_head import TextEncoderHead
from text2brain.text import check_texts

#: Maps per forward pass when the bank's embeddings are computed.
BANK_CHUNK = 256


class ContrastiveHead(TextEncoderHead):
    """What CLIP and MNM share: encoders, retrieval bank, maps by retrieval, recall metrics.

    Subclasses give the geometry (`make_geometry`) and may add loss terms (`extra_losses`).
    """

    extra_metrics = (
        "contrastive",
        *(f"recall@{k}_{way}" for way in ("t2b", "b2t") for k in RECALL_KS),
    )
    #: Whether training batches' `hierarchy_maps` are embedded (only MNM's losses use them).
    uses_hierarchy = False

    def __init__(
        self,
        temperature: float,
        retrieval_k: int,
        retrieval_temperature: float | None,
        encoder_lr: float,
        lr: float,
        weight_decay: float,
        warmup_steps: float,
        schedule: str,
    ) -> None:
        """Checks the shared options; the subclass saves every argument as hyper-parameters."""
        super().__init__(encoder_lr, lr, weight_decay, warmup_steps, schedule)
        if isinstance(retrieval_k, bool) or not isinstance(retrieval_k, int) or retrieval_k < 1:
            raise ValueError(f"retrieval_k must be a positive int, got {retrieval_k!r}")
        if retrieval_temperature is not None and not retrieval_temperature > 0:
            raise ValueError(f"retrieval_temperature must be > 0, got {retrieval_temperature}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.net: ContrastiveNet | None = None
        self.bank: RetrievalBank | None = None
        self._bank_fresh = False
        self.val_embeddings = EmbeddingCollector()
        self.test_embeddings = EmbeddingCollector()

    def make_geometry(self) -> Geometry:
        raise NotImplementedError

    def extra_losses(
        self, text: Tensor, brain: Tensor, batch: dict[str, Any]
    ) -> dict[str, tuple[Tensor, float]]:
        """Further loss terms: name -> (value, weight); `brain` includes hierarchy maps."""
        return {}

    # -- building -----------------------------------------------------------------------------
    def build(self, space: BrainSpace) -> None:
        hp = self.hparams
        text_encoder = TextEncoder.from_hparams(hp)
        self.net = ContrastiveNet(
            text_encoder,
            self.make_geometry(),
            grid_shape=space.shape,
            mask_index=self.mask_index,
            embed_dim=hp.embed_dim,
            brain_channels=hp.brain_channels or (8, 16, 32),
            brain_norm=hp.brain_norm,
            brain_activation=hp.brain_activation,
            brain_crop=hp.brain_crop,
            brain_offset=hp.brain_offset,
            brain_dropout=hp.brain_dropout,
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
        self._bank_fresh = False
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

    # -- the retrieval bank -------------------------------------------------------------------
    def prepare_bank(self) -> None:
        """Build the bank from the data module if there is none; refresh stale embeddings."""
        if self.bank is None:
            datamodule = getattr(self._trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "article_maps"):
                return
            ids, maps = datamodule.article_maps("train")
            corpus = datamodule.corpus
            articles = [corpus.articles[corpus.index_of(i)] for i in ids]
            self.bank = RetrievalBank.from_maps(
                ids, maps, [a.title for a in articles], [list(a.keywords) for a in articles]
            )
            self._bank_fresh = False
        if not self._bank_fresh:
            self.bank.embeddings = self._embed_bank()
            self._bank_fresh = True

    @torch.no_grad()
    def _embed_bank(self) -> Tensor:
        """Embeddings of the bank's maps with the current weights (eval mode, fp32)."""
        training = self.training
        self.eval()
        try:
            with torch.autocast(self.device.type, enabled=False):
                chunks = [
                    self.net.embed_maps(self.bank.maps[s : s + BANK_CHUNK].to(self.device))
                    for s in range(0, len(self.bank), BANK_CHUNK)
                ]
        finally:
            self.train(training)
        return torch.cat(chunks) if chunks else torch.zeros(0, self.hparams.embed_dim)

    def _require_bank(self, what: str) -> RetrievalBank:
        if self.bank is None or self.bank.embeddings is None:
            raise ValueError(
                f"{type(self).__name__} has no retrieval bank, so it cannot {what}: fit or "
                "validate it with a TextMapDataModule, or load a checkpoint written by "
                "`text2brain fit`"
            )
        return self.bank

    def on_fit_end(self) -> None:
        self.prepare_bank()

    def on_validation_epoch_start(self) -> None:
        self.prepare_bank()

    def on_test_epoch_start(self) -> None:
        self.prepare_bank()

    def on_predict_epoch_start(self) -> None:
        self.prepare_bank()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        self.prepare_bank()
        if self.bank is not None:
            checkpoint["text2brain"]["bank"] = self.bank.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["text2brain"].get("bank")
        if state is not None:
            self.bank = RetrievalBank.from_dict(state, self.space.n_voxels)
            self._bank_fresh = self.bank.embeddings is not None

    # -- maps ---------------------------------------------------------------------------------
    def temperature(self) -> Tensor | float:
        """Temperature of the retrieval weights: the configured one, else the learned one."""
        if self.hparams.retrieval_temperature is not None:
            return self.hparams.retrieval_temperature
        return 1.0 / self.net.geometry.logit_scale().detach()

    def retrieve_maps(self, text: Tensor) -> Tensor:
        """Retrieval-based maps (n, n_voxels) of text points (n, d), float32 in [-1, 1]."""
        if self.bank is None or self.bank.embeddings is None:
            warnings.warn(
                f"{type(self).__name__} has no retrieval bank yet (it is built from the data "
                "module at validation, at the end of fit or when a checkpoint is saved): "
                "predicting all-zero maps",
                UserWarning,
                stacklevel=2,
            )
            return torch.zeros(len(text), self.space.n_voxels, device=text.device)
        distance = self.net.geometry.cross_distance(text, self.bank.embeddings.to(text.device))
        indices, weights = retrieval_weights(distance, self.hparams.retrieval_k, self.temperature())
        return weighted_maps(self.bank.maps, indices, weights)

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

    # -- retrieval both ways ------------------------------------------------------------------
    @torch.inference_mode()
    def related_articles(self, texts: list[str], k: int = 10) -> list[list[RelatedArticle]]:
        """The `k` training articles whose maps lie nearest each text, nearest first."""
        bank = self._require_bank("find related articles")
        _check_k(k)
        text = self.embed_text({"text": check_texts(texts, allow_empty=False)})
        distance = self.net.geometry.cross_distance(text, bank.embeddings.to(text.device))
        return self._nearest(bank, distance, k)

    @torch.inference_mode()
    def describe_maps(self, maps: Tensor, k: int = 10) -> list[list[RelatedArticle]]:
        """The `k` training articles whose maps lie nearest each masked map (n, n_voxels).

        Map to map in the learned brain space (as NeuroQuery and Neurosynth decode a map by
        its similarity to theirs); the articles' titles and keywords describe the map.
        """
        bank = self._require_bank("describe maps")
        _check_k(k)
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
        return self._nearest(bank, distance, k)

    @staticmethod
    def _nearest(bank: RetrievalBank, distance: Tensor, k: int) -> list[list[RelatedArticle]]:
        nearest, indices = distance.float().topk(min(k, len(bank)), dim=1, largest=False)
        return bank.articles(indices.cpu(), nearest.cpu())

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

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_recall("test")

    def _log_recall(self, stage: str) -> None:
        """recall@k text -> brain (rows: texts) and brain -> text over the whole split."""
        collector = self._collector(stage)
        text, brain = collector.compute()
        collector.reset()
        distance = self.net.geometry.cross_distance(text, brain)
        values = {}
        for way, matrix in (("t2b", distance), ("b2t", distance.transpose(0, 1))):
            for k in RECALL_KS:
                values[f"{stage}/recall@{k}_{way}"] = recall_at_k(matrix, k)
        # Already gathered over ranks by the collector; sync_dist only says so to Lightning.
        self.log_dict(values, sync_dist=True)


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")


class CLIP(ContrastiveHead):
    """CLIP head: Euclidean unit embeddings, learnable temperature, symmetric InfoNCE.

    The Euclidean ablation of `MNM`: same encoders, data, retrieval and metrics.

    Args:
        encoder, pooling, freeze_embeddings, freeze_layers, pretrained, max_length,
            embedding_cache: the text encoder, as for Text2Brain (default: the bundled
            MiniLM, mean pooling, trained).
        embed_dim: size of both modalities' embeddings.
        temperature: initial contrastive temperature (learned; logit scale capped at 100).
        brain_channels, brain_norm, brain_activation, brain_crop, brain_offset,
            brain_dropout: the 3D CNN over the map (text2brain.models.decoders.BrainEncoder);
            None channels means [8, 16, 32], None crop the whole grid (any mask works);
            configs/model/*.yaml read Text2Brain's box, a [40, 48, 40] crop at [3, 3, 0] of
            the 4 mm grid, which holds the whole NeuroQuery mask.
        retrieval_k: how many nearest training articles a retrieved map averages.
        retrieval_temperature: temperature of their weights ``softmax(-distance / T)``;
            None uses the learned contrastive temperature.
        encoder_lr, lr, weight_decay, warmup_steps, schedule: see BrainMapModule.
    """

    def __init__(
        self,
        encoder: str = DEFAULT_ENCODER,
        pooling: str = "mean",
        freeze_embeddings: bool = False,
        freeze_layers: int = 0,
        pretrained: bool = True,
        max_length: int = 128,
        embedding_cache: bool = True,
        embed_dim: int = 256,
        temperature: float = 0.07,
        brain_channels: list[int] | None = None,
        brain_norm: str = "batch",
        brain_activation: str = "hardtanh",
        brain_crop: list[int] | None = None,
        brain_offset: list[int] | None = None,
        brain_dropout: float = 0.1,
        retrieval_k: int = 20,
        retrieval_temperature: float | None = None,
        encoder_lr: float = 3e-5,
        lr: float = 1e-4,
        weight_decay: float = 0.1,
        warmup_steps: float = 0.05,
        schedule: str = "cosine",
    ) -> None:
        super().__init__(
            temperature,
            retrieval_k,
            retrieval_temperature,
            encoder_lr,
            lr,
            weight_decay,
            warmup_steps,
            schedule,
        )
        self.save_hyperparameters()

    def make_geometry(self) -> CosineGeometry:
        return CosineGeometry(self.hparams.temperature)


class MNM(ContrastiveHead):
    """MNM head (Baek et al., MICCAI 2025, after MERU): text and maps in Lorentz space.

    Contrastive logits are ``-scale * distance`` (or the entailment-cone angle), plus:

    * text <-> brain entailment: the parent's cone (`entailment_parent`) must contain the
      child's point (weight `entailment_weight`, MERU's 0.2);
    * intra-brain hierarchy: an article-average map is the parent of its table maps (weight
      `hierarchy_weight`; needs `data.hierarchy_tables` > 0 for the pairs), with the optional
      ordering penalty that puts the broader map nearer the origin (`ordering_weight`).

    Logged every step: each term (`train/contrastive`, `train/entailment`, `train/hierarchy`,
    `train/ordering`), the curvature, logit scale and per-modality scales, and the mean
    distance to the origin of each modality (`train/dist0_text`, `train/dist0_brain`). The
    known failure of re-implementations, the curvature collapsing to its lower bound ``c/10``,
    is warned about once when it happens (`learn_curvature: false` is the usual remedy).

    Args:
        curvature, learn_curvature: initial ``c`` (curvature ``-c``) and whether it is learned
            (in ``[c/10, 10 c]``).
        logits: "distance" or "angle" (text2brain.models.contrastive.losses.lorentz_logits).
        entailment_parent: "text" (a text's cone contains its map) or "brain".
        entailment_weight: weight of the text <-> brain entailment loss.
        min_radius: ``K`` of the cones' half-aperture.
        hierarchy_weight: weight of the article -> table entailment loss.
        hierarchy_aperture_scale: narrows (< 1) the cones of that loss.
        ordering_weight, ordering_margin: the penalty ``relu(d0(article) - d0(table) +
            margin)`` (0 switches it off).
        The other arguments: as for `CLIP`.
    """

    uses_hierarchy = True

    def __init__(
        self,
        encoder: str = DEFAULT_ENCODER,
        pooling: str = "mean",
        freeze_embeddings: bool = False,
        freeze_layers: int = 0,
        pretrained: bool = True,
        max_length: int = 128,
        embedding_cache: bool = True,
        embed_dim: int = 256,
        temperature: float = 0.07,
        brain_channels: list[int] | None = None,
        brain_norm: str = "batch",
        brain_activation: str = "hardtanh",
        brain_crop: list[int] | None = None,
        brain_offset: list[int] | None = None,
        brain_dropout: float = 0.1,
        retrieval_k: int = 20,
        retrieval_temperature: float | None = None,
        curvature: float = 1.0,
        learn_curvature: bool = True,
        logits: str = "distance",
        entailment_parent: str = "text",
        entailment_weight: float = 0.2,
        min_radius: float = 0.1,
        hierarchy_weight: float = 0.2,
        hierarchy_aperture_scale: float = 1.0,
        ordering_weight: float = 0.0,
        ordering_margin: float = 0.0,
        encoder_lr: float = 3e-5,
        lr: float = 1e-4,
        weight_decay: float = 0.1,
        warmup_steps: float = 0.05,
        schedule: str = "cosine",
    ) -> None:
        super().__init__(
            temperature,
            retrieval_k,
            retrieval_temperature,
            encoder_lr,
            lr,
            weight_decay,
            warmup_steps,
            schedule,
        )
        weights = {
            "entailment_weight": entailment_weight,
            "hierarchy_weight": hierarchy_weight,
            "ordering_weight": ordering_weight,
        }
        negative = {name: w for name, w in weights.items() if not w >= 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {negative}")
        if not 0 < hierarchy_aperture_scale <= 1:
            raise ValueError(
                f"hierarchy_aperture_scale must be in (0, 1], got {hierarchy_aperture_scale}"
            )
        if logits not in LORENTZ_LOGITS:
            raise ValueError(f"logits must be one of {LORENTZ_LOGITS}, got {logits!r}")
        if entailment_parent not in MODALITIES:
            raise ValueError(
                f"entailment_parent must be one of {MODALITIES}, got {entailment_parent!r}"
            )
        if not (curvature > 0 and min_radius > 0):
            raise ValueError(f"curvature and min_radius must be > 0, got {curvature}, {min_radius}")
        self.save_hyperparameters()
        self._warned: set[str] = set()

    def make_geometry(self) -> LorentzGeometry:
        hp = self.hparams
        return LorentzGeometry(
            hp.embed_dim,
            curvature=hp.curvature,
            learn_curvature=hp.learn_curvature,
            temperature=hp.temperature,
            logits=hp.logits,
            parent=hp.entailment_parent,
            min_radius=hp.min_radius,
        )

    def extra_losses(
        self, text: Tensor, brain: Tensor, batch: dict[str, Any]
    ) -> dict[str, tuple[Tensor, float]]:
        hp = self.hparams
        geometry: LorentzGeometry = self.net.geometry
        terms = {
            "entailment": (geometry.entailment_loss(text, brain[: len(text)]), hp.entailment_weight)
        }
        parent, child = batch.get("hierarchy_parent"), batch.get("hierarchy_child")
        if parent is None:
            if hp.hierarchy_weight > 0 or hp.ordering_weight > 0:
                self._warn_once(
                    "hierarchy",
                    "MNM's hierarchy_weight / ordering_weight are > 0 but the training batches "
                    "carry no article -> table pairs: set data.hierarchy_tables > 0 (the "
                    "hierarchy and ordering terms stay 0 until then)",
                )
            zero = brain.new_zeros(())
            hierarchy = (zero, zero)
        else:
            hierarchy = geometry.hierarchy_losses(
                brain,
                parent.to(brain.device),
                child.to(brain.device),
                hp.hierarchy_aperture_scale,
                hp.ordering_margin,
            )
        terms["hierarchy"] = (hierarchy[0], hp.hierarchy_weight)
        terms["ordering"] = (hierarchy[1], hp.ordering_weight)
        return terms

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.net.geometry.curvature_at_lower_bound():
            self._warn_once(
                "curvature",
                f"MNM's curvature reached its lower bound c = {self.hparams.curvature / 10:g} at "
                f"step {self.global_step} (the known curvature collapse); watch "
                "train/curvature and the entailment loss, or set learn_curvature: false",
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=2)
