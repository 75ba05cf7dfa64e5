"""The NeuroQuery-style head: its tiny config, the smoothing of queries by NMF term embeddings,
and a fit and test through `text2brain` with the shipped config (the two other closed-form
heads share every part of that path but the maths)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml
from model_configs import tiny_init_args, tiny_model, tiny_terms
from synthetic import small_space, tiny_datamodule

from text2brain.cli import main
from text2brain.inference import load_predictor
from text2brain.models.neuroquery.smoothing import nmf_term_embeddings, smooth_queries
from text2brain.models.targets import scaled_targets

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


#: The NeuroQuery-style head's tiny config (model_configs.tiny_configs gathers it).
TINY_CONFIGS = {
    "neuroquery": lambda encoder: {
        **tiny_terms(encoder),
        "alphas": [0.1, 1.0, 10.0],
        "loo_voxels": None,
        "smoothing_components": 3,
        "nmf_iterations": 20,
    }
}


# -- smoothing -----------------------------------------------------------------------------------
def test_nmf_embeddings_and_smoothing() -> None:
    # Terms 0 and 1 always co-occur, term 2 never with them, term 3 in no document.
    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [2, 2, 0, 0], [0, 0, 1, 0], [0, 0, 3, 0.0]]))
    embeddings = nmf_term_embeddings(x, n_components=2, iterations=200)
    assert (embeddings >= 0).all()
    assert np.linalg.norm(embeddings, axis=1) == pytest.approx([1, 1, 1, 0], abs=1e-6)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.99 and similarity[0, 2] < 0.05

    query = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    smoothed = smooth_queries(query, torch.from_numpy(embeddings), 0.1)
    assert smoothed.norm() == pytest.approx(1.0)
    assert smoothed[0, 1] > 0.04 and smoothed[0, 2] < 1e-3 and smoothed[0, 3] == 0
    assert torch.equal(smooth_queries(query, torch.from_numpy(embeddings), 0.0), query)


# -- a transform of the targets: a variant, not the baseline -------------------------------------
def test_a_target_transform_is_a_variant_beside_the_raw_maps(
    fit_closed_form, data_files: dict[str, str], tiny_bert: Path
) -> None:
    """By default the head fits NeuroQuery's raw article maps; `target_transform` fits the
    max-scaled maps through the transform instead, its mean map on that scale too."""
    data = tiny_datamodule(data_files)
    data.setup()
    _, maps = data.article_maps("train")
    maps = torch.from_numpy(np.asarray(maps, np.float32))
    raw = fit_closed_form("neuroquery")
    torch.testing.assert_close(raw.mean_map, maps.mean(0))
    power = fit_closed_form("neuroquery", target_transform="power:0.1")
    torch.testing.assert_close(power.mean_map, scaled_targets(maps, "power:0.1").mean(0))
    texts = ["vision", "motor cortex"]
    raw_maps, power_maps = raw.predict_texts(texts), power.predict_texts(texts)
    assert bool(torch.isfinite(power_maps).all()) and not torch.allclose(raw_maps, power_maps)
    with pytest.raises(ValueError, match="target_transform 'cube' is not one of"):
        tiny_model("neuroquery", tiny_bert, target_transform="cube")


def test_fit_and_test_with_the_shipped_config(
    data_files: dict[str, str], tmp_path: Path, monkeypatch, cli_overrides
) -> None:
    # The NeuroQuery-style head: the other two share every part of this path but the maths.
    name = "neuroquery"
    monkeypatch.chdir(tmp_path)
    config = ["-c", str(REPO / "configs" / f"{name}.yaml"), "-c", str(cli_overrides(name))]
    main(["fit", *config])
    best = tmp_path / "checkpoints" / name / "best.ckpt"
    assert best.is_file()
    logs = sorted((tmp_path / "runs").rglob("metrics.csv"))
    assert logs and "val/dice_auc" in logs[-1].read_text().splitlines()[0]
    assert list((tmp_path / "runs").rglob("dice_curve.png"))  # the shipped map figures

    main(["test", *config, "--ckpt_path", str(best)])
    header = sorted((tmp_path / "runs").rglob("metrics.csv"))[-1].read_text().splitlines()[0]
    assert "test/dice_auc" in header
    assert "test/unknown_queries" in header
    assert load_predictor(best, device="cpu").predict_vectors(["vision"]).shape == (
        1,
        small_space().n_voxels,
    )


@pytest.fixture
def cli_overrides(data_files: dict[str, str], tmp_path: Path):
    """A second config for the shipped one: tiny data and model, CSV logs, no downloads."""

    def write(name: str) -> Path:
        overrides = {
            "trainer": {
                "accelerator": "cpu",
                "devices": 1,
                "enable_progress_bar": False,
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": "runs"},
                },
            },
            "model": {"init_args": tiny_init_args(name, "")},
            "data": {
                **data_files,
                "n_test": 8,
                "n_val": 8,
                "keyword_max_df": 0.05,
                "num_workers": 0,
            },
        }
        path = tmp_path / f"{name}-tiny.yaml"
        path.write_text(yaml.safe_dump(overrides, sort_keys=False))
        return path

    return write
