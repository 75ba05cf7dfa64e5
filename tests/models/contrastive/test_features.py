"""The contrastive heads' cached features (text2brain.models.contrastive.features): the map
basis, the MLP towers, the feature batches, MNM's official loss terms, and a feature-trained
fit of both heads through Lightning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from model_configs import tiny_model
from synthetic import quiet_trainer, tiny_datamodule

from text2brain import lorentz
from text2brain.models.contrastive import losses
from text2brain.models.contrastive.features import (
    FeatureBatches,
    FeatureTables,
    MapBasis,
    ProjectionTower,
    group_rows,
    map_breadth,
)

pytestmark = pytest.mark.usefixtures("one_thread")

#: The tiny heads trained on cached features: frozen pretrained encoder, basis brain tower.
FEATURES = {
    "text": {"pretrained": True, "freeze_embeddings": True, "freeze_layers": 2},
    "brain": {"kind": "basis", "components": 8, "width": 32, "blocks": 1, "dropout": 0.1},
    "text_tower": {"kind": "mlp", "width": 32, "dropout": 0.1},
    "feature_sources": ["title", "keywords", "abstract"],
}


def test_basis_recovers_low_rank_maps() -> None:
    generator = torch.Generator().manual_seed(0)
    factors = torch.rand(200, 3, generator=generator)
    patterns = torch.rand(3, 50, generator=generator)
    maps = (factors @ patterns).numpy()
    basis = MapBasis(50, n_components=3, transform="none")
    basis.fit(maps)
    assert basis.fitted
    assert float(basis.explained) > 0.999
    coefficients = basis(torch.from_numpy(maps))
    assert coefficients.shape == (200, 3)
    # Standardised on the training maps; a refit gives the same basis (seeded).
    assert torch.allclose(coefficients.std(dim=0), torch.ones(3), atol=1e-4)
    again = MapBasis(50, n_components=3, transform="none")
    again.fit(maps)
    assert torch.allclose(again.components, basis.components)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"n_components": 0}, "n_components must be in"),
        ({"n_components": 51}, "n_components must be in"),
        ({"n_components": 5, "transform": "cube"}, "target_transform 'cube' is not one of"),
    ],
)
def test_basis_rejects_bad_settings(arguments: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MapBasis(50, **arguments)


def test_basis_needs_more_maps_than_components() -> None:
    with pytest.raises(ValueError, match="needs more than that many training maps"):
        MapBasis(50, n_components=10).fit(np.random.rand(10, 50))


@pytest.mark.parametrize("output_norm", [False, True])
def test_projection_tower_shapes(output_norm: bool) -> None:
    tower = ProjectionTower(7, 5, width=16, blocks=2, dropout=0.5, output_norm=output_norm)
    out = tower.eval()(torch.randn(4, 7))
    assert out.shape == (4, 5)
    norms = out.norm(dim=1)
    # A final LayerNorm fixes every output's norm; without it norms differ between inputs.
    assert (norms.std() < 1e-2) == output_norm


def test_breadth_counts_voxels_near_the_maximum() -> None:
    maps = torch.tensor([[1.0, 0.5, 0.04, 0.0], [2.0, 0.0, 0.0, 0.0]])
    assert map_breadth(maps).tolist() == [2.0, 1.0]


def _tables(n_tables: list[int], texts_per_article: int = 2) -> FeatureTables:
    a = len(n_tables)
    text_rows = np.repeat(np.arange(a), texts_per_article)
    table_rows = np.repeat(np.arange(a), n_tables)
    return FeatureTables(
        # Row i's vectors hold its article's number, so a batch can be checked.
        text=torch.from_numpy(text_rows[:, None].repeat(3, 1).astype(np.float32)),
        text_start=group_rows(text_rows, a),
        article=torch.arange(a, dtype=torch.float32)[:, None].repeat(1, 4),
        article_breadth=torch.full((a,), 10.0),
        table=torch.from_numpy(table_rows[:, None].repeat(4, 1).astype(np.float32)) + 0.5,
        table_start=group_rows(table_rows, a),
        table_breadth=torch.ones(len(table_rows)),
    )


def test_feature_batches_pair_each_article_with_its_own_text_and_tables() -> None:
    tables = _tables([0, 3, 2, 5, 1])
    torch.manual_seed(0)
    batch = FeatureBatches(tables, hierarchy_tables=2)([1, 3, 0, 4, 2])
    rows = [1, 3, 0, 4, 2]
    assert batch["text_features"][:, 0].tolist() == rows
    brain = batch["brain_features"][:, 0]
    assert brain[:5].tolist() == rows
    parent, child = batch["hierarchy_parent"], batch["hierarchy_child"]
    # Articles 1, 3 and 2 have 2+ tables: two each, distinct, of their own article.
    assert len(parent) == 6 and len(child) == 6
    assert (brain[child] - 0.5).tolist() == [rows[p] for p in parent.tolist()]
    for article in (1, 3, 2):
        own = child[torch.tensor([rows[p] for p in parent.tolist()]) == article]
        assert len(own) == 2
    assert batch["breadth"].tolist() == [10.0] * 5 + [1.0] * 6


def test_feature_batches_draw_tables_without_replacement() -> None:
    tables = _tables([4], texts_per_article=1)
    tables.table = torch.arange(4, dtype=torch.float32)[:, None].repeat(1, 4)
    seen = set()
    for seed in range(30):
        torch.manual_seed(seed)
        picked = FeatureBatches(tables, hierarchy_tables=3)([0])["brain_features"][1:, 0]
        assert len(set(picked.tolist())) == 3
        seen.update(picked.tolist())
    assert seen == {0.0, 1.0, 2.0, 3.0}


def test_feature_tables_refuse_offsets_that_do_not_match() -> None:
    tables = _tables([2, 2])
    with pytest.raises(ValueError, match="do not end"):
        FeatureTables(**{**tables.__dict__, "text_start": np.array([0, 1, 2])})


def test_centroid_lies_on_the_hyperboloid_and_between_its_points() -> None:
    c = torch.tensor(1.3)
    points = torch.randn(6, 4)
    middle = lorentz.centroid(points, c)
    inner = lorentz.lorentz_inner(middle, middle, c)
    assert torch.allclose(inner, -1 / c, atol=1e-5)
    assert torch.allclose(lorentz.centroid(points[:1], c), points[0], atol=1e-5)
    # Twice the same point: the point itself.
    assert torch.allclose(lorentz.centroid(points[[2, 2]], c), points[2], atol=1e-5)


def test_centroid_loss_is_zero_at_its_target() -> None:
    c = torch.tensor(1.0)
    point = torch.tensor([[0.7, 0.0]])
    target = float(lorentz.dist0(point, c)[0])
    assert float(losses.centroid_loss(point, c, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.centroid_loss(point, c, target + 0.5)) == pytest.approx(0.5, abs=1e-5)


def test_breadth_ordering_penalises_a_broad_map_farther_out() -> None:
    c = torch.tensor(1.0)
    near, far = torch.tensor([0.1, 0.0]), torch.tensor([2.0, 0.0])
    breadth = torch.tensor([100.0, 10.0])  # the first map is the broad one
    right = losses.breadth_ordering_loss(torch.stack([near, far]), breadth, c, partners=8)
    wrong = losses.breadth_ordering_loss(torch.stack([far, near]), breadth, c, partners=8)
    assert float(right) == 0.0
    assert float(wrong) > 0.5


@pytest.fixture(scope="module")
def feature_runs(
    tmp_path_factory: pytest.TempPathFactory, data_files: dict[str, str], tiny_bert: Path
) -> dict[str, Any]:
    """CLIP and MNM fitted 2 epochs on cached features (batch 64) and validated."""
    runs = {}
    for name, extra in (
        ("clip", {}),
        ("mnm", {"entailment": "centroid", "breadth_weight": 1.0}),
    ):
        data = tiny_datamodule(data_files, tiny_bert, hierarchy_tables=2, batch_size=64)
        L.seed_everything(0, verbose=False)
        model = tiny_model(name, tiny_bert, **FEATURES, **extra)
        trainer = quiet_trainer(
            tmp_path_factory.mktemp(f"features-{name}"), max_epochs=2, num_sanity_val_steps=0
        )
        trainer.fit(model, datamodule=data)
        runs[name] = {"model": model, "data": data, "trainer": trainer}
    return runs


@pytest.mark.parametrize("name", ["clip", "mnm"])
def test_feature_training_runs_and_validates(feature_runs: dict[str, Any], name: str) -> None:
    run = feature_runs[name]
    model, data, trainer = run["model"], run["data"], run["trainer"]
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert np.isfinite(metrics["train/loss"])
    assert 0 <= metrics["val/recall@10_t2b"] <= 1 and np.isfinite(metrics["val/dice_auc"])
    # The fit drew its batches from the cached features, not from rendered maps.
    assert isinstance(trainer.train_dataloader.collate_fn, FeatureBatches)
    tables = model.feature_tables
    n_train = len(data.article_maps("train")[0])
    assert len(tables.article) == n_train
    # Each epoch is the training articles in batches of 64.
    assert trainer.global_step == 2 * -(-len(tables.trainable()) // 64)
    assert model.net.basis.fitted
    if name == "mnm":
        assert len(tables.table) > 0 and "train/breadth" in metrics
    # The bank embedded from the cached coefficients equals the maps rendered and projected.
    model.prepare_bank()
    rendered = model.embed_map_chunks(len(model.bank), lambda s, e: model.bank.render(range(s, e)))
    assert torch.allclose(model.bank.embeddings.float(), rendered, atol=1e-2)


def test_feature_sources_need_a_basis_tower_and_a_frozen_encoder(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="brain.kind: basis"):
        tiny_model("clip", tiny_bert, feature_sources=["title"])
    with pytest.raises(ValueError, match="feature_sources must be some of"):
        tiny_model("clip", tiny_bert, **{**FEATURES, "feature_sources": ["discussion"]})
    model = tiny_model("clip", tiny_bert, **{**FEATURES, "text": {"pretrained": False}})
    from synthetic import small_space

    with pytest.raises(ValueError, match="needs a frozen text encoder"):
        model.set_space(small_space())


def test_an_unfitted_basis_is_refused_before_evaluation(
    data_files: dict[str, str], tiny_bert: Path, tmp_path: Path
) -> None:
    model = tiny_model("mnm", tiny_bert, **FEATURES)
    data = tiny_datamodule(data_files, tiny_bert, hierarchy_tables=2)
    with pytest.raises(ValueError, match="map basis is not fitted: train the head first"):
        quiet_trainer(tmp_path).validate(model, datamodule=data, verbose=False)


def test_a_bad_basis_transform_is_refused_at_construction(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="target_transform 'cube' is not one of"):
        tiny_model(
            "mnm", tiny_bert, **{**FEATURES, "brain": {"kind": "basis", "transform": "cube"}}
        )
