"""The hierarchy measures (`text2brain.models.contrastive.hierarchy`): cone membership,
fractions and distances to the origin on hand-made points whose answers are known, the data
module's fixed sample, and the tiny heads logging them under the same names."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from model_configs import tiny_model
from synthetic import quiet_trainer

from text2brain.brain import render_table_maps
from text2brain.models.contrastive.hierarchy import (
    HierarchyEmbeddings,
    centre_angle,
    fraction,
    hierarchy_measures,
    hierarchy_values,
    in_cone,
    summarise,
)
from text2brain.models.contrastive.torch_model import CosineGeometry, LorentzGeometry

pytestmark = pytest.mark.usefixtures("one_thread")

#: Every measure, and those without meaning on CLIP's sphere (no cones).
ALL = {
    "hier/table_in_cone", "hier/table_farther", "hier/text_entails_map", "hier/dist0_keyword",
    "hier/dist0_title", "hier/dist0_abstract", "hier/dist0_article", "hier/dist0_table",
}  # fmt: skip
CONES = {"hier/table_in_cone", "hier/text_entails_map"}


def points(*rows: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# -- the maths on hand-made points -------------------------------------------------------------
def test_cone_membership() -> None:
    parent = points((1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (0.0, 0.0), (1.0, 0.0))
    child = points((3.0, 0.0), (-1.0, 0.0), (0.5, 0.0), (-5.0, 2.0), (1.0, 0.0))
    # Farther out on the parent's ray: in. Across the origin, or nearer the origin on the same
    # ray: out (exterior angle pi). Any point is in the cone of the origin, a point in its own.
    assert in_cone(parent, child, 1.0).tolist() == [True, False, False, True, True]
    # Half-aperture asin(2K / |x|) at c = 1: at |x| = 1 and K = 0.1 about 0.201 rad. Far out
    # in a direction theta off the parent's, the exterior angle tends to atan2(sin theta,
    # e^-r - cosh(r) (1 - cos theta)), r = asinh(1): 0.169 rad for theta = 0.07 (in), 0.288
    # for theta = 0.12 (out).
    far = 1e3
    off = points(*[(far * math.cos(a), far * math.sin(a)) for a in (0.07, 0.12)])
    assert in_cone(points((1.0, 0.0), (1.0, 0.0)), off, 1.0).tolist() == [True, False]


def test_centre_angle_and_fraction() -> None:
    reference = points((1.0, 0.0), (0.0, 3.0))  # directions only: the centre is (1, 1)/sqrt(2)
    angles = centre_angle(points((1.0, 0.0), (-1.0, -1.0), (2.0, 2.0)), reference)
    torch.testing.assert_close(angles, torch.tensor([math.pi / 4, math.pi, 0.0]), atol=1e-3, rtol=0)
    assert fraction(torch.tensor([True, False, True, True])).item() == 0.75
    assert math.isnan(fraction(torch.zeros(0, dtype=torch.bool)).item())


def sample_points() -> HierarchyEmbeddings:
    """Two articles (norms 1, 2) and their tables (norms 3, 1); a keyword (norm 0.5) of
    article 0, an abstract (norm 2) of article 1, no title."""
    empty = torch.zeros(0, 2)
    return HierarchyEmbeddings(
        article=points((1.0, 0.0), (0.0, 2.0)),
        table=points((3.0, 0.0), (0.0, -1.0)),
        texts={"keyword": points((0.5, 0.0)), "title": empty, "abstract": points((2.0, 0.0))},
        text_article={
            "keyword": torch.tensor([0]),
            "title": torch.zeros(0, dtype=torch.long),
            "abstract": torch.tensor([1]),
        },
    )


def test_measures_with_a_known_answer() -> None:
    def norm(x: torch.Tensor, same_modality: torch.Tensor) -> torch.Tensor:
        return x.norm(dim=-1)

    def farther(parent: torch.Tensor, child: torch.Tensor) -> torch.Tensor:
        return child.norm(dim=-1) > parent.norm(dim=-1)

    values = hierarchy_measures(sample_points(), norm, farther)
    expected = {
        "hier/table_farther": 0.5, "hier/table_in_cone": 0.5, "hier/dist0_article": 1.5,
        "hier/dist0_table": 2.0, "hier/dist0_keyword": 0.5, "hier/dist0_abstract": 2.0,
        # keyword (0.5) -> map of article 0 (1): in; abstract (2) -> map of article 1 (2): out
        "hier/text_entails_map": 0.5,
    }  # fmt: skip
    assert {k: pytest.approx(v.item()) for k, v in values.items()} == expected
    # The map as the parent: neither text is farther than its map.
    assert hierarchy_measures(sample_points(), norm, farther, text_is_parent=False)[
        "hier/text_entails_map"
    ].item() == pytest.approx(0.0)
    # No cones: no cone measure.
    assert set(hierarchy_measures(sample_points(), norm)) == set(expected) - CONES


def test_per_item_values_behind_the_measures() -> None:
    def norm(x: torch.Tensor, same_modality: torch.Tensor) -> torch.Tensor:
        return x.norm(dim=-1)

    def farther(parent: torch.Tensor, child: torch.Tensor) -> torch.Tensor:
        return child.norm(dim=-1) > parent.norm(dim=-1)

    values = hierarchy_values(sample_points(), norm, farther)
    # Fractions: one bool per pair; distances: one float per point.
    assert values["hier/table_farther"].tolist() == [True, False]
    assert values["hier/table_in_cone"].tolist() == [True, False]
    assert values["hier/text_entails_map"].tolist() == [True, False]  # keyword, abstract
    assert values["hier/dist0_article"].tolist() == pytest.approx([1.0, 2.0])
    assert values["hier/dist0_keyword"].tolist() == pytest.approx([0.5])
    # The measures are their means, from the same computation.
    measures = hierarchy_measures(sample_points(), norm, farther)
    assert {k: v.item() for k, v in summarise(values).items()} == pytest.approx(
        {k: v.item() for k, v in measures.items()}
    )


def test_lorentz_and_sphere_geometries() -> None:
    lorentz = LorentzGeometry(2, curvature=1.0, learn_curvature=False)
    values = summarise(lorentz.hierarchy_values(sample_points()))
    assert set(values) == ALL - {"hier/dist0_title"}
    # Table 0 on its article's ray, farther out: in the cone; table 1 across the origin: out.
    assert values["hier/table_in_cone"].item() == pytest.approx(0.5)
    assert values["hier/table_farther"].item() == pytest.approx(0.5)
    assert values["hier/dist0_article"].item() == pytest.approx(
        (math.asinh(1.0) + math.asinh(2.0)) / 2
    )
    assert values["hier/dist0_keyword"].item() == pytest.approx(math.asinh(0.5))

    sphere = summarise(CosineGeometry().hierarchy_values(sample_points()))
    assert set(sphere) == ALL - CONES - {"hier/dist0_title"}
    # Brain points' centre: the mean of directions (1,0), (0,1), (1,0), (0,-1) is (1, 0).
    assert sphere["hier/dist0_article"].item() == pytest.approx(math.pi / 4)
    assert sphere["hier/dist0_table"].item() == pytest.approx(math.pi / 4)


# -- the data module's sample ------------------------------------------------------------------
def test_hierarchy_sample(contrastive_runs: dict[str, dict[str, Any]]) -> None:
    data = contrastive_runs["clip"]["data"]
    sample = data.hierarchy_sample("val", 500)
    again = data.hierarchy_sample("val", 500)
    assert sample.article_ids == again.article_ids and sample.table_ids == again.table_ids
    val_ids = set(data.split.ids("val"))
    corpus = data.corpus
    assert 0 < len(sample) <= len(val_ids)
    for article_id, table_id in zip(sample.article_ids, sample.table_ids, strict=True):
        tables = data.peaks.tables[corpus.index_of(article_id)]
        assert article_id in val_ids and len(tables) >= 2 and table_id in tables
    ids, maps = data.article_maps("val")
    rows = [list(ids).index(i) for i in sample.article_ids]
    np.testing.assert_allclose(sample.article_maps, maps[rows], atol=1e-6)
    coordinates = corpus.coordinates[corpus.coordinates["id"].isin(sample.article_ids)]
    keys, table_maps = render_table_maps(coordinates, data.space, data.hparams.fwhm)
    keys = list(zip(keys["id"], keys["table_id"], strict=True))
    order = [keys.index(k) for k in zip(sample.article_ids, sample.table_ids, strict=True)]
    np.testing.assert_allclose(sample.table_maps, table_maps[order], atol=1e-6)
    titles = [corpus.articles[corpus.index_of(i)].title for i in sample.article_ids]
    assert sample.texts["title"] == [titles[r] for r in sample.text_article["title"]]
    assert len(data.hierarchy_sample("val", 2)) == 2
    assert len(data.hierarchy_sample("val", 0)) == 0


# -- the heads log them ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["clip", "mnm"])
def test_heads_log_the_measures_under_the_same_names(
    contrastive_runs: dict[str, dict[str, Any]], name: str
) -> None:
    run = contrastive_runs[name]
    logged = {k[len("val/") :]: v for k, v in run["metrics"].items() if k.startswith("val/hier/")}
    assert set(logged) == (ALL if name == "mnm" else ALL - CONES)
    assert all(math.isfinite(v) for v in logged.values())
    for key in ("hier/table_farther", *CONES & set(logged)):
        assert 0.0 <= logged[key] <= 1.0
    # What validation logged is the measure of the data module's sample with the weights.
    model, data = run["model"], run["data"]
    values = model.hierarchy_measures(data.hierarchy_sample("val", model.hierarchy_pairs))
    assert logged == pytest.approx({k: v.item() for k, v in values.items()}, rel=1e-4)


def test_test_stage_logs_them_and_zero_switches_them_off(
    contrastive_runs: dict[str, dict[str, Any]], tiny_bert: Path
) -> None:
    run = contrastive_runs["mnm"]
    tester = quiet_trainer()
    tester.test(run["model"], datamodule=run["data"], verbose=False)
    assert ALL <= {k[len("test/") :] for k in tester.callback_metrics}

    quiet = tiny_model("clip", tiny_bert, hierarchy_pairs=0)
    tester = quiet_trainer()
    tester.validate(quiet, datamodule=run["data"], verbose=False)
    assert "val/recall@10_t2b" in tester.callback_metrics
    assert not any("hier/" in k for k in tester.callback_metrics)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="hierarchy_pairs"):
            tiny_model("clip", tiny_bert, hierarchy_pairs=bad)
