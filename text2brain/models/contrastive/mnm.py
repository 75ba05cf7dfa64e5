"""MNM: the CLIP head in Lorentz space, with text -> brain entailment and a map hierarchy."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from text2brain.models.contrastive import losses
from text2brain.models.contrastive.clip import CLIP
from text2brain.models.contrastive.features import map_breadth
from text2brain.models.contrastive.hierarchy import CONE_MEASURES, PREFIX
from text2brain.models.contrastive.losses import LORENTZ_LOGITS
from text2brain.models.contrastive.torch_model import MODALITIES, LorentzGeometry

#: MNM's text <-> brain term: our cone hinge (MERU) or the official code's centroid targets.
ENTAILMENTS = ("cone", "centroid")


class MNM(CLIP):
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
        entailment: "cone" (the parent's cone must contain the child, MERU's hinge) or
            "centroid" (MNM's official term: each modality's batch centroid at a target
            distance from the origin, `centroid_targets` = (text, brain)).
        breadth_weight, breadth_ratio: MNM's official breadth ordering (a map at least
            `breadth_ratio` times broader may not lie farther from the origin,
            text2brain.models.contrastive.losses.breadth_ordering_loss); 0 switches it off.
        **kwargs: CLIP's arguments (text, brain, optim, embed_dim, temperature, retrieval_k,
            retrieval_temperature), with CLIP's defaults.
    """

    uses_hierarchy = True
    extra_metrics = (*CLIP.extra_metrics, *(PREFIX + m for m in CONE_MEASURES))

    def __init__(
        self,
        curvature: float = 1.0,
        learn_curvature: bool = True,
        logits: str = "angle",
        entailment_parent: str = "text",
        entailment_weight: float = 0.2,
        min_radius: float = 0.1,
        hierarchy_weight: float = 0.2,
        hierarchy_aperture_scale: float = 1.0,
        ordering_weight: float = 5.0,
        ordering_margin: float = 0.2,
        entailment: str = "cone",
        centroid_targets: Sequence[float] = (0.5, 2.0),
        breadth_weight: float = 0.0,
        breadth_ratio: float = 1.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        weights = {
            "entailment_weight": entailment_weight,
            "hierarchy_weight": hierarchy_weight,
            "ordering_weight": ordering_weight,
            "breadth_weight": breadth_weight,
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
        if entailment not in ENTAILMENTS:
            raise ValueError(f"entailment must be one of {ENTAILMENTS}, got {entailment!r}")
        if len(centroid_targets) != 2 or not all(t > 0 for t in centroid_targets):
            raise ValueError(
                f"centroid_targets must be two distances > 0 (text, brain), got "
                f"{list(centroid_targets)}"
            )
        if not breadth_ratio > 1:
            raise ValueError(f"breadth_ratio must be > 1, got {breadth_ratio}")
        self._warned: set[str] = set()

    def make_geometry(self) -> LorentzGeometry:
        hp = self.hparams  # MNM's own arguments, saved by the base
        return LorentzGeometry(
            self.embed_dim,
            curvature=hp.curvature,
            learn_curvature=hp.learn_curvature,
            temperature=self.initial_temperature,
            logits=hp.logits,
            parent=hp.entailment_parent,
            min_radius=hp.min_radius,
        )

    def extra_losses(
        self, text: Tensor, brain: Tensor, batch: dict[str, Any]
    ) -> dict[str, tuple[Tensor, float]]:
        hp = self.hparams
        geometry: LorentzGeometry = self.net.geometry
        if hp.entailment == "centroid":
            c = geometry.curvature()
            text_target, brain_target = hp.centroid_targets
            entailment = 0.5 * (
                losses.centroid_loss(text, c, text_target)
                + losses.centroid_loss(brain, c, brain_target)
            )
        else:
            entailment = geometry.entailment_loss(text, brain[: len(text)])
        terms = {"entailment": (entailment, hp.entailment_weight)}
        if hp.breadth_weight > 0:
            breadth = batch.get("breadth")
            if breadth is None:
                breadth = map_breadth(self.training_maps(batch))
            terms["breadth"] = (
                losses.breadth_ordering_loss(
                    brain, breadth.to(brain.device), geometry.curvature(), hp.breadth_ratio
                ),
                hp.breadth_weight,
            )
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
