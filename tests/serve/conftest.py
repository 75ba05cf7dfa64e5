"""Fixtures of the `text2brain serve` tests: a tiny CLIP checkpoint beside tests/conftest.py's
tiny Text2Brain, both served by one app, and the framework's test client.

The modules that need the web extra skip themselves without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from starlette.testclient import TestClient

    from text2brain.inference import Predictor


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(contrastive_runs: dict[str, dict[str, Any]]) -> Path:
    """The session's tiny CLIP run (tests/conftest.py), with its retrieval bank."""
    return contrastive_runs["clip"]["path"]


@pytest.fixture(scope="module")
def served(tiny_predictor: Predictor, tiny_clip_checkpoint: Path) -> dict[str, Predictor]:
    """What the app serves: the tiny Text2Brain (the default, no embedding space) and CLIP."""
    from text2brain.inference import load_predictor

    return {"tiny": tiny_predictor, "clip": load_predictor(tiny_clip_checkpoint, device="cpu")}


@pytest.fixture(scope="module")
def client(served: dict[str, Predictor]) -> Iterator[TestClient]:
    from starlette.testclient import TestClient

    from text2brain.serve.app import create_app

    with TestClient(create_app(served, max_upload_bytes=2**20)) as test_client:
        yield test_client
