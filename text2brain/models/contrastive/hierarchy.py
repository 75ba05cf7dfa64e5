"""Hierarchy measures of an embedding space, as plain torch (no Lightning).

What the hyperbolic geometry is there for: broader texts and maps near the origin, the specific
ones farther out and inside the entailment cones of their broader parents. Measured on a fixed
sample of an evaluation split (text2brain.data.hierarchy: article -> table pairs, the
articles' keywords, titles and abstracts), every head logs them under the same names
(`val/hier/...`, `test/hier/...`):

* ``hier/table_in_cone``: fraction of table maps inside their article-average map's
  entailment cone (`in_cone`);
* ``hier/table_farther``: fraction of table maps farther from the origin than their article's;
* ``hier/text_entails_map``: fraction of (text, article map) pairs (keyword, title and abstract
  with their article's map) that satisfy the entailment the head was trained with: the cone
  of the parent modality (MNM's `entailment_parent`) contains the child;
* ``hier/dist0_keyword``, ``hier/dist0_title``, ``hier/dist0_abstract``, ``hier/dist0_article``,
  ``hier/dist0_table``: mean distance to the origin of each kind of embedding.

`hierarchy_values` gives every measure's per-item values (a bool per pair for a fraction, a
distance per point), for confidence intervals (`text2brain compare`); `hierarchy_measures`, what
the heads log, is their means.

Geometries (text2brain.models.contrastive.torch_model) give the two notions these need,
`specificity` (distance to the origin) and `in_cone` (None without cones):

* Lorentz (MNM): the geodesic distance to the origin, `lorentz.dist0`, and MERU's cones.
* The unit sphere (CLIP) has no origin on it and no cones: every point has norm 1. Its
  norm-free stand-in for the distance to the origin is the angle to the *centre* of the
  sample's embeddings of the same modality (the direction of their mean, `centre_angle`):
  broad texts and maps should sit near the middle of their cloud, specific ones at its rim.
  `table_farther` and the ``dist0_*`` measures use that angle; the cone measures
  (`table_in_cone`, `text_entails_map`) have no meaning there and are not logged. The values
  compare within a head (keyword vs abstract, article vs table), not across geometries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from text2brain import lorentz
from text2brain.lorentz import Curvature, at_least_fp32

#: Prefix of every measure's name (after the stage: `val/hier/table_farther`).
PREFIX = "hier/"
#: The measures, in the order they are returned and shown.
MEASURES = (
    "table_in_cone",
    "table_farther",
    "text_entails_map",
    "dist0_keyword",
    "dist0_title",
    "dist0_abstract",
    "dist0_article",
    "dist0_table",
)
#: The measures that need entailment cones (none on CLIP's sphere).
CONE_MEASURES = ("table_in_cone", "text_entails_map")

Specificity = Callable[[Tensor, Tensor], Tensor]
ConeTest = Callable[[Tensor, Tensor], Tensor]


@at_least_fp32
def in_cone(
    parent: Tensor, child: Tensor, c: Curvature, min_radius: float = lorentz.MIN_RADIUS
) -> Tensor:
    """Whether each child lies in its parent's entailment cone: (N, d), (N, d) -> (N,) bool.

    ``exterior_angle(parent, child) <= half_aperture(parent)`` (MERU; the entailment loss is
    the mean excess of the left side over the right side, so it is 0 exactly when every pair
    is in).
    """
    angle = lorentz.exterior_angle(parent, child, c)
    return angle <= lorentz.half_aperture(parent, c, min_radius)


@at_least_fp32
def centre_angle(points: Tensor, reference: Tensor) -> Tensor:
    """Angle (radians) between each point and the mean direction of `reference`.

    `points` (N, d), `reference` (M, d), M >= 1 -> (N,) in [0, pi]. Only directions count
    (points and reference rows are normalised first): the unit sphere's norm-free distance to
    the centre of a cloud of embeddings.
    """
    centre = F.normalize(F.normalize(reference, dim=-1).mean(0), dim=-1)
    cosine = (F.normalize(points, dim=-1) @ centre).clamp(-1.0, 1.0)
    return torch.acos(cosine)


def fraction(mask: Tensor) -> Tensor:
    """Share of True in a bool tensor (0-d float32); NaN when it is empty."""
    return mask.float().mean() if mask.numel() else torch.tensor(float("nan"))


@dataclass
class HierarchyEmbeddings:
    """A hierarchy sample's points in a head's space (text2brain.data.hierarchy).

    Attributes:
        article: (A, d) article-average maps.
        table: (A, d) table maps; row i is a table of article i.
        texts: source ("keyword", "title", "abstract") -> (n_source, d) text points.
        text_article: source -> (n_source,) long row in `article` of each text's article.
    """

    article: Tensor
    table: Tensor
    texts: dict[str, Tensor]
    text_article: dict[str, Tensor]


def hierarchy_values(
    points: HierarchyEmbeddings,
    specificity: Specificity,
    cone: ConeTest | None = None,
    text_is_parent: bool = True,
) -> dict[str, Tensor]:
    """The hierarchy measures' per-item values (module doc): ``hier/<name>`` -> (n,) tensor,
    bool for the fractions (one per pair), float for the distances (one per point).

    Per item, so that a comparison can give each measure a confidence interval;
    `hierarchy_measures` is their means.

    Args:
        points: the sample's embeddings.
        specificity: ``specificity(x, same_modality)`` (N,) distances to the origin (or the
            norm-free stand-in) of points x (N, d); `same_modality` (M, d) holds every sample
            point of x's modality (the sphere's centre is theirs).
        cone: ``cone(parent, child)`` (N,) bool, or None for a geometry without cones (no
            cone measure is returned then).
        text_is_parent: in `text_entails_map`, the text's cone must contain its map (else the
            map's cone its text).

    Measures whose set is empty (no keyword in the sample, no pair) are left out.
    """
    brain = torch.cat([points.article, points.table])
    text_sources = [s for s, x in points.texts.items() if len(x)]
    text = torch.cat([points.texts[s] for s in text_sources]) if text_sources else None
    values: dict[str, Tensor] = {}
    if len(points.article):
        d_article = specificity(points.article, brain)
        d_table = specificity(points.table, brain)
        values["table_farther"] = d_table > d_article
        values["dist0_article"] = d_article
        values["dist0_table"] = d_table
        if cone is not None:
            values["table_in_cone"] = cone(points.article, points.table)
    for source in text_sources:
        values[f"dist0_{source}"] = specificity(points.texts[source], text)
    if cone is not None and text_sources:
        maps = torch.cat([points.article[points.text_article[s]] for s in text_sources])
        parent, child = (text, maps) if text_is_parent else (maps, text)
        values["text_entails_map"] = cone(parent, child)
    return {PREFIX + name: values[name].detach().cpu() for name in MEASURES if name in values}


def summarise(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-item values (`hierarchy_values`) -> the measures, as 0-d float32 tensors: the
    fraction of True of a bool tensor, the mean of a float one."""
    return {
        name: fraction(v) if v.dtype == torch.bool else v.float().mean()
        for name, v in values.items()
    }


def hierarchy_measures(
    points: HierarchyEmbeddings,
    specificity: Specificity,
    cone: ConeTest | None = None,
    text_is_parent: bool = True,
) -> dict[str, Tensor]:
    """The hierarchy measures (module doc) of embedded sample points, as 0-d float tensors:
    the means of `hierarchy_values` (same arguments)."""
    return summarise(hierarchy_values(points, specificity, cone, text_is_parent))
