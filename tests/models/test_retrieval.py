"""The retrieval head (text2brain.models.retrieval): nearest training titles, mean of maps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_configs import tiny_model
from synthetic import quiet_trainer, small_space, tiny_datamodule

from text2brain.checkpoint import load_model
from text2brain.models.contrastive.retrieval import DenseMaps, PeakMaps, RetrievalBank
from text2brain.models.retrieval import Retrieval, RetrievalInference
from text2brain.models.targets import scaled_targets

#: Registered name -> tiny init_args (tests/model_configs.py gathers it for the registry tests).
TINY_CONFIGS = {
    "retrieval": lambda encoder: {
        "text": {"encoder": encoder, "pretrained": False},
        "k_grid": [2, 5],
        "temperature_grid": [0.05, 1.0],
    }
}


def bank(model: Retrieval, embeddings: torch.Tensor, maps: torch.Tensor) -> Retrieval:
    """`model` with a hand-made bank of unit embeddings and dense maps (no fit)."""
    n = len(maps)
    ids = [f"a{i}" for i in range(n)]
    articles = RetrievalBank(ids, ids, [[]] * n, DenseMaps(maps), F.normalize(embeddings, dim=1))
    model.use_bank(articles)
    return model


@pytest.fixture
def built(tiny_bert: Path) -> Retrieval:
    model = Retrieval(**TINY_CONFIGS["retrieval"](str(tiny_bert)))
    model.set_space(small_space())
    return model


def test_the_nearest_articles_maps_are_averaged_by_softmax_weights(built: Retrieval) -> None:
    n_voxels = built.space.n_voxels
    maps = torch.zeros(3, n_voxels)
    maps[0, :10], maps[1, 10:20], maps[2, 20:30] = 1.0, 1.0, 1.0
    bank(built, torch.eye(3, 4), maps)
    query = F.normalize(torch.tensor([[1.0, 0.2, 0.0, 0.0]]), dim=1)
    one = built.retrieve(query, k=1, temperature=0.1)
    torch.testing.assert_close(one[0], maps[0])  # k = 1: the nearest map itself
    two = built.retrieve(query, k=2, temperature=0.1)
    similarity = query @ F.normalize(torch.eye(3, 4), dim=1).T
    weights = torch.softmax(similarity[0, :2] / 0.1, dim=0)
    torch.testing.assert_close(two[0], weights[0] * maps[0] + weights[1] * maps[1])
    # Many queries take the dense product: the same maps.
    many = built.retrieve(query.expand(3000, -1), k=2, temperature=0.1)
    torch.testing.assert_close(many[-1], two[0])
    # k beyond the bank: all of it.
    assert built.retrieve(query, k=50, temperature=1e3)[0, :30].sub(1 / 3).abs().max() < 1e-2


def test_k_and_temperature_are_chosen_on_validation(
    closed_form_heads: dict[str, Retrieval],
) -> None:
    model = closed_form_heads["retrieval"]
    scores = model.validation_scores
    assert scores.shape == (2, 2) and bool((scores > 0).all())
    best = int(scores.argmax())
    assert int(model.k) == [2, 5][best // 2]
    assert float(model.temperature) == pytest.approx([0.05, 1.0][best % 2])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"k_grid": []}, "k and k_grid must be positive ints"),
        ({"k": 0}, "k and k_grid must be positive ints"),
        ({"temperature_grid": [0.1, -1.0]}, "must be > 0"),
        ({"target_transform": "cube"}, "target_transform 'cube' is not one of"),
    ],
)
def test_bad_arguments_are_refused(tiny_bert: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Retrieval(**{**TINY_CONFIGS["retrieval"](str(tiny_bert)), **overrides})


def test_the_bank_holds_the_training_maps_on_the_transformed_scale(
    fit_closed_form: Callable[..., Retrieval], data_files: dict[str, str]
) -> None:
    data = tiny_datamodule(data_files)
    data.setup()
    titles, maps = data.titled_article_maps("train")
    maps = torch.from_numpy(np.asarray(maps, np.float32))
    for transform in ("none", "power:0.1"):
        model = fit_closed_form("retrieval", target_transform=transform)
        assert model.bank.titles == titles and isinstance(model.bank.maps, PeakMaps)
        expected = scaled_targets(maps, transform)
        torch.testing.assert_close(model.bank_maps(), expected)  # rebuilt from the peaks
        assert float(model.bank_maps().amax()) == pytest.approx(1.0)  # max-scaled either way
    # The 0.1 power lifts the shoulders of the peaks: a map's mean moves towards its maximum.
    assert float(expected.mean()) > float(scaled_targets(maps, "none").mean())


def test_a_few_queries_render_only_their_neighbours(
    closed_form_heads: dict[str, Retrieval],
) -> None:
    """Before the whole bank is rendered, a query reads only its k neighbours' peaks, and the
    maps are those the rendered bank gives."""
    model = closed_form_heads["retrieval"]
    queries = model.embed_queries(["visual cortex", "motor response"])
    model._dense_maps = None
    few = model.retrieve(queries, 3, 0.1)
    assert model._dense_maps is None
    model.bank_maps()
    torch.testing.assert_close(model.retrieve(queries, 3, 0.1), few)


def test_the_checkpoint_keeps_peaks_and_titles_not_maps(
    data_files: dict[str, str], tiny_bert: Path, tmp_path: Path
) -> None:
    model = tiny_model("retrieval", tiny_bert)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_datamodule(data_files))
    trainer.save_checkpoint(tmp_path / "retrieval.ckpt")
    saved = torch.load(tmp_path / "retrieval.ckpt", map_location="cpu", weights_only=True)
    stored = saved["text2brain"]["bank"]
    assert "peaks" in stored and "maps" not in stored
    assert stored["embeddings"].dtype == torch.float16
    assert not [k for k in saved["state_dict"] if k.startswith("bank")]

    loaded = load_model(tmp_path / "retrieval.ckpt")
    assert type(loaded) is RetrievalInference  # what load_predictor builds: no Lightning
    texts = ["visual cortex", "motor response"]
    torch.testing.assert_close(loaded.predict_texts(texts), model.eval().predict_texts(texts))
    found = loaded.related_articles(texts, k=3)
    assert [len(row) for row in found] == [3, 3]
    assert all(a.title in model.bank.titles for a in found[0])
    distances = [a.distance for a in found[0]]
    assert distances == sorted(distances) and 0 <= distances[0] <= 2


def test_a_format_4_checkpoint_with_dense_maps_still_predicts(
    data_files: dict[str, str], tiny_bert: Path, tmp_path: Path
) -> None:
    """Format 4 kept the transformed maps and embeddings in the state dict, and a
    `map_dtype` argument: it loads, predicts the same maps, and cannot list articles."""
    model = tiny_model("retrieval", tiny_bert)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_datamodule(data_files))
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    old = torch.load(tmp_path / "new.ckpt", map_location="cpu", weights_only=True)
    old["text2brain"]["format_version"] = 4
    del old["text2brain"]["bank"]
    old["hyper_parameters"]["map_dtype"] = "float32"
    old["state_dict"]["bank_embeddings"] = model.bank_vectors().cpu()
    old["state_dict"]["bank_maps"] = model.bank_maps().cpu()
    torch.save(old, tmp_path / "old.ckpt")

    loaded = load_model(tmp_path / "old.ckpt")
    texts = ["visual cortex", "motor response"]
    torch.testing.assert_close(loaded.predict_texts(texts), model.eval().predict_texts(texts))
    with pytest.raises(ValueError, match="refit it to find related articles"):
        loaded.related_articles(texts)


def test_fixed_k_and_temperature_skip_the_search(tiny_bert: Path) -> None:
    model = Retrieval(**TINY_CONFIGS["retrieval"](str(tiny_bert)), k=3, temperature=0.2)
    assert model.ks == [3] and model.temperatures == [0.2]


def test_maps_are_float32_under_bf16_autocast(built: Retrieval) -> None:
    maps = torch.rand(6, built.space.n_voxels)
    bank(built, torch.randn(6, 4), maps)
    queries = F.normalize(torch.randn(3000, 4), dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        few, many = built.retrieve(queries[:2], 3, 0.1), built.retrieve(queries, 3, 0.1)
    assert few.dtype == many.dtype == torch.float32
    torch.testing.assert_close(many[:2], few)
