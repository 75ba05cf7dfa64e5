"""The contrastive heads as plain torch: two encoders into one space, and the space's geometry.

`ContrastiveNet` embeds texts (transformer -> layer norm -> projection) and masked maps (scaled,
scattered back to the grid -> `BrainEncoder`, the mirror of Text2Brain's decoder) into features
of the same size; a geometry turns features into points and compares them:

* `CosineGeometry` (CLIP): L2-normalised points, distance ``1 - cos``, logits ``scale * cos``.
* `LorentzGeometry` (MNM, MERU-style): features times a learnable per-modality scale, lifted
  onto the hyperboloid with `exp_map0`; distance the geodesic one (or the exterior angle of
  the parent's entailment cone), logits ``-scale * distance``; entailment and intra-brain
  hierarchy losses.

Every geometry gives `contrastive_loss` (symmetric InfoNCE with global negatives under DDP),
`cross_distance` (texts x maps: what the logits are made of, used for retrieval and recall)
and `distance` (maps x maps, symmetric), and the scalars worth logging (`stats`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from text2brain import lorentz
from text2brain.models.brain_encoder import BrainEncoder
from text2brain.models.contrastive import hierarchy, losses
from text2brain.models.contrastive.features import BasisBrainEncoder, MapBasis, ProjectionTower
from text2brain.models.contrastive.hierarchy import HierarchyEmbeddings
from text2brain.models.encoders import TextEncoder
from text2brain.models.settings import BrainEncoderSettings, TextTowerSettings, as_settings
from text2brain.models.targets import MAP_SCALES, encoder_input

MODALITIES = ("text", "brain")


class CosineGeometry(nn.Module):
    """Euclidean CLIP geometry: unit vectors compared by cosine, learnable temperature."""

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        self.logit_scale = losses.LogitScale(1.0 / temperature)

    def embed(self, features: Tensor, modality: str) -> Tensor:
        """Unit vectors (fp32) of features (n, d); zero features stay zero."""
        return F.normalize(features.float(), dim=-1)

    @lorentz.at_least_fp32
    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        """Cosine distance ``1 - cos``: (n, d), (m, d) -> (n, m)."""
        return 1.0 - a @ b.transpose(0, 1)

    def cross_distance(self, text: Tensor, brain: Tensor) -> Tensor:
        """Text x map distances (n_text, n_brain)."""
        return self.distance(text, brain)

    def contrastive_loss(self, text: Tensor, brain: Tensor) -> Tensor:
        scale = self.logit_scale()
        return losses.global_clip_loss(text, brain, lambda a, b: losses.cosine_logits(a, b, scale))

    def stats(self, text: Tensor, brain: Tensor) -> dict[str, Tensor]:
        return {"logit_scale": self.logit_scale().detach()}

    def specificity(self, points: Tensor) -> Tensor:
        """How specific each point (n, d) is -> (n,): the sphere's stand-in for the distance to
        the origin, the angle to the centre of the points given (`hierarchy.centre_angle`)."""
        return hierarchy.centre_angle(points, points)

    def hierarchy_values(self, points: HierarchyEmbeddings) -> dict[str, Tensor]:
        """The sphere's norm-free hierarchy measures, per item: distances to the origin replaced
        by the angle to the centre of the sample's points of the same modality; no cone measures
        (the sphere has no cones). See text2brain.models.contrastive.hierarchy."""
        return hierarchy.hierarchy_values(points, hierarchy.centre_angle)


class LorentzGeometry(nn.Module):
    """MNM geometry: the Lorentz model with learnable curvature, MERU-style.

    Args:
        dim: feature size (the per-modality scales start at ``1/sqrt(dim)``).
        curvature: initial ``c`` (curvature ``-c``), learned in ``[c/10, 10 c]``.
        learn_curvature: False keeps ``c`` fixed (the usual remedy for curvature collapse).
        temperature: initial temperature of the logits (learned, scale capped at 100).
        logits: "distance" (``-scale * d``) or "angle" (``-scale *`` exterior angle at the
            parent's point: how far the child is from the axis of the parent's cone).
        parent: the modality whose entailment cone should contain the other's point, "text"
            (a text is more general than its map, MERU's convention) or "brain"; also the
            apex of angle logits.
        min_radius: ``K`` of the cones' half-aperture ``asin(2K / (sqrt(c)|x|))``.
    """

    def __init__(
        self,
        dim: int,
        curvature: float = 1.0,
        learn_curvature: bool = True,
        temperature: float = 0.07,
        logits: str = "distance",
        parent: str = "text",
        min_radius: float = lorentz.MIN_RADIUS,
    ) -> None:
        super().__init__()
        if logits not in losses.LORENTZ_LOGITS:
            raise ValueError(f"logits must be one of {losses.LORENTZ_LOGITS}, got {logits!r}")
        if parent not in MODALITIES:
            raise ValueError(f"entailment parent must be one of {MODALITIES}, got {parent!r}")
        if not min_radius > 0:
            raise ValueError(f"min_radius must be > 0, got {min_radius}")
        self.curvature = losses.LearnableCurvature(curvature, learn_curvature)
        self.alpha = nn.ModuleDict({m: losses.ModalityScale(dim) for m in MODALITIES})
        self.logit_scale = losses.LogitScale(1.0 / temperature)
        self.kind = logits
        self.parent = parent
        self.min_radius = min_radius

    def embed(self, features: Tensor, modality: str) -> Tensor:
        """Points on the hyperboloid (space components, fp32): ``exp_map0(alpha * features)``."""
        return lorentz.exp_map0(features.float() * self.alpha[modality](), self.curvature())

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        """Geodesic distances (n, m) between points (n, d) and (m, d)."""
        return lorentz.pairwise_dist(a, b, self.curvature())

    def cross_distance(self, text: Tensor, brain: Tensor) -> Tensor:
        """Text x map distances (n_text, n_brain): geodesic, or the angle at the parent."""
        c = self.curvature()
        if self.kind == "distance":
            return lorentz.pairwise_dist(text, brain, c)
        if self.parent == "text":
            return lorentz.pairwise_exterior_angle(text, brain, c)
        return lorentz.pairwise_exterior_angle(brain, text, c).transpose(0, 1)

    def _parent_first(self, text: Tensor, brain: Tensor) -> tuple[Tensor, Tensor]:
        return (text, brain) if self.parent == "text" else (brain, text)

    def contrastive_loss(self, text: Tensor, brain: Tensor) -> Tensor:
        c, scale = self.curvature(), self.logit_scale()
        parent, child = self._parent_first(text, brain)
        return losses.global_clip_loss(
            parent, child, lambda a, b: losses.lorentz_logits(a, b, c, scale, self.kind)
        )

    def entailment_loss(self, text: Tensor, brain: Tensor) -> Tensor:
        """Paired text and map: the child outside the parent's cone, on average."""
        parent, child = self._parent_first(text, brain)
        return losses.entailment_loss(parent, child, self.curvature(), self.min_radius)

    def hierarchy_losses(
        self,
        brain: Tensor,
        parent_index: Tensor,
        child_index: Tensor,
        aperture_scale: float = 1.0,
        margin: float = 0.0,
    ) -> losses.HierarchyLosses:
        """Article-average map (parent) -> its table maps (children), rows of `brain`."""
        return losses.hierarchy_losses(
            brain,
            parent_index,
            child_index,
            self.curvature(),
            self.min_radius,
            aperture_scale,
            margin,
        )

    def hierarchy_values(self, points: HierarchyEmbeddings) -> dict[str, Tensor]:
        """Every hierarchy measure per item (text2brain.models.contrastive.hierarchy): geodesic
        distances to the origin, and this geometry's cones (`min_radius`; the text -> map
        entailment with its `parent` as the apex)."""
        c = self.curvature().detach()
        return hierarchy.hierarchy_values(
            points,
            lambda x, _: lorentz.dist0(x, c),
            lambda parent, child: hierarchy.in_cone(parent, child, c, self.min_radius),
            text_is_parent=self.parent == "text",
        )

    def specificity(self, points: Tensor) -> Tensor:
        """How specific each point (n, d) is -> (n,): its geodesic distance to the origin."""
        return lorentz.dist0(points, self.curvature().detach())

    def curvature_at_lower_bound(self) -> bool:
        """Whether a learnable ``c`` sits at its lower bound (the known collapse)."""
        log_c = self.curvature.log_value
        return log_c.requires_grad and float(log_c.detach()) <= self.curvature.log_low + 1e-6

    def stats(self, text: Tensor, brain: Tensor) -> dict[str, Tensor]:
        c = self.curvature()
        with torch.no_grad():
            return {
                "curvature": c.detach(),
                "logit_scale": self.logit_scale().detach(),
                "alpha_text": self.alpha["text"]().detach(),
                "alpha_brain": self.alpha["brain"]().detach(),
                "dist0_text": lorentz.dist0(text.detach(), c).mean(),
                "dist0_brain": lorentz.dist0(brain.detach(), c).mean(),
            }


Geometry = CosineGeometry | LorentzGeometry


class ContrastiveNet(nn.Module):
    """Text and brain-map encoders into features of one size, and the geometry of that space.

    Args:
        text_encoder: the transformer (pooled output of size ``text_encoder.dim``).
        geometry: `CosineGeometry` or `LorentzGeometry`.
        grid_shape: the brain grid; maps are scattered back onto it for the 3D CNN.
        mask_index: flat grid indices of the mask voxels (the order of masked vectors).
        embed_dim: feature size of both modalities.
        brain: the brain tower (text2brain.models.settings.BrainEncoderSettings): the 3-D CNN
            `BrainEncoder` or, with kind "basis", `BasisBrainEncoder` (fitted with `basis.fit`).
        text_tower: the projection after the text encoder (TextTowerSettings).
    """

    def __init__(
        self,
        text_encoder: TextEncoder,
        geometry: Geometry,
        grid_shape: Sequence[int],
        mask_index: Tensor,
        embed_dim: int = 256,
        brain: BrainEncoderSettings | None = None,
        text_tower: TextTowerSettings | None = None,
    ) -> None:
        super().__init__()
        brain = as_settings(BrainEncoderSettings, brain)
        text_tower = as_settings(TextTowerSettings, text_tower)
        if brain.input_scale not in MAP_SCALES:
            raise ValueError(
                f"brain.input_scale must be one of {MAP_SCALES}, got {brain.input_scale!r}"
            )
        self.input_scale = brain.input_scale
        self.embed_dim = embed_dim
        self.text_encoder = text_encoder
        # As CLIP and MERU: a LayerNorm, then a projection initialised with std 1/sqrt(width),
        # so projected features have a norm near sqrt(embed_dim) whatever the encoder's output
        # scale, and MNM's scale 1/sqrt(embed_dim) lifts them about one unit from the origin.
        # A plain Linear left MiniLM's pooled output (norm ~5) within 0.2 of the origin, where
        # every text is near every map: MNM's contrastive loss started above chance level.
        width = text_encoder.dim
        if text_tower.kind == "mlp":
            self.text_projection = ProjectionTower(
                width,
                embed_dim,
                text_tower.width,
                text_tower.blocks,
                text_tower.dropout,
                text_tower.output_norm,
            )
        else:
            self.text_projection = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim))
            nn.init.normal_(self.text_projection[1].weight, std=width**-0.5)
            nn.init.zeros_(self.text_projection[1].bias)
        if brain.kind == "basis":
            self.brain_encoder = BasisBrainEncoder(
                MapBasis(len(mask_index), brain.components, brain.transform),
                ProjectionTower(
                    brain.components,
                    embed_dim,
                    brain.width,
                    brain.blocks,
                    brain.dropout,
                    brain.output_norm,
                ),
            )
        else:
            self.brain_encoder = BrainEncoder(
                embed_dim,
                grid_shape=tuple(grid_shape),
                channels=tuple(brain.channels),
                norm=brain.norm,
                activation=brain.activation,
                output_offset=None if brain.offset is None else tuple(brain.offset),
                output_crop=None if brain.crop is None else tuple(brain.crop),
                dropout=brain.dropout,
            )
        self.geometry = geometry
        self.grid_shape = tuple(grid_shape)
        self.register_buffer("mask_index", mask_index.clone(), persistent=False)

    def embed_text_features(self, features: Tensor) -> Tensor:
        """Points (n, embed_dim) of the text encoder's pooled vectors (n, text_encoder.dim)."""
        return self.geometry.embed(self.text_projection(features), "text")

    @property
    def basis(self) -> MapBasis | None:
        """The closed-form map basis of a "basis" brain tower (None for the CNN)."""
        encoder = self.brain_encoder
        return encoder.basis if isinstance(encoder, BasisBrainEncoder) else None

    def embed_brain_features(self, coefficients: Tensor) -> Tensor:
        """Points (n, embed_dim) of maps given by their `basis` coefficients (n, components)."""
        return self.geometry.embed(self.brain_encoder.from_coefficients(coefficients), "brain")

    def embed_maps(self, maps: Tensor) -> Tensor:
        """Points (n, embed_dim) of masked maps (n, n_voxels): through the basis and its MLP,
        or scaled by `input_scale` and scattered onto the grid for the CNN."""
        if self.basis is not None:
            return self.geometry.embed(self.brain_encoder(maps), "brain")
        volume = maps.new_zeros((maps.shape[0], *self.grid_shape), dtype=torch.float32)
        volume.flatten(1)[:, self.mask_index] = encoder_input(maps.float(), self.input_scale)
        features = self.brain_encoder(volume)
        return self.geometry.embed(features, "brain")
