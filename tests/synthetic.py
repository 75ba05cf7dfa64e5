"""Tiny generated corpora with known structure, shared by the tests.

Each article is about one topic; a topic has a word and a region of the small grid, and its
articles report peaks near that region, so a model or baseline that learns anything must map
the topic word to the topic region.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from text2brain.brain import BrainSpace
from text2brain.corpus.base import Article, Corpus

TOPICS = ("vision", "audition", "motor", "memory")


def small_space() -> BrainSpace:
    """A 12x14x12 grid of 4 mm voxels from (-24, -28, -24) mm with an ellipsoid mask."""
    shape = (12, 14, 12)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    centre = (np.asarray(shape) - 1) / 2
    mask = (((grid - centre) / (np.asarray(shape) / 2)) ** 2).sum(-1) <= 1.0
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = (-24, -28, -24)
    return BrainSpace(mask, affine)


def topic_centres(space: BrainSpace) -> dict[str, np.ndarray]:
    """MNI mm centre of each topic's region, well inside the mask and far apart."""
    voxels = {
        "vision": (6, 3, 6),
        "audition": (2, 7, 6),
        "motor": (9, 7, 6),
        "memory": (6, 10, 3),
    }
    return {t: space.affine[:3, :3] @ np.array(v) + space.affine[:3, 3] for t, v in voxels.items()}


def make_corpus(
    space: BrainSpace,
    n_articles: int = 80,
    seed: int = 0,
    captions: bool = True,
    discussion: bool = True,
) -> Corpus:
    """Articles about one topic each, with keywords (a generic one, the topic, a unique one)."""
    rng = np.random.default_rng(seed)
    centres = topic_centres(space)
    articles, rows = [], []
    for i in range(n_articles):
        topic = TOPICS[i % len(TOPICS)]
        article_id = f"a{i:03d}"
        n_tables = 1 + i % 3
        table_captions = {}
        for t in range(n_tables):
            table_id = f"t{t}"
            if captions:
                table_captions[table_id] = f"Table {t + 1}. Peaks for {topic} task {t}. Extra text."
            for _ in range(int(rng.integers(2, 6))):
                x, y, z = centres[topic] + np.clip(rng.normal(0, 3, size=3), -6, 6)
                rows.append((article_id, table_id, x, y, z))
        articles.append(
            Article(
                id=article_id,
                title=f"A study of {topic} number {i}",
                keywords=("fmri", topic, f"unique{i}"),
                abstract=f"We studied {topic} in healthy adults. It activated the {topic} area.",
                discussion=(
                    (f"{topic.capitalize()} engaged the region.", "This replicates earlier work.")
                    if discussion
                    else ()
                ),
                table_captions=table_captions,
            )
        )
    coordinates = pd.DataFrame(rows, columns=["id", "table_id", "x", "y", "z"])
    return Corpus.build("synthetic", articles, coordinates, space)


def write_mask(space: BrainSpace, path: Path) -> Path:
    space.mask_image().to_filename(path)
    return path
