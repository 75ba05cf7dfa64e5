"""Tiny generated corpora with known structure, shared by the tests.

Each article is about one topic; a topic has a word and a region of the small grid, and its
articles report peaks near that region, so a model or baseline that learns anything must map
the topic word to the topic region.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from text2brain.brain import BrainSpace
from text2brain.corpus.base import Article, Corpus

TOPICS = ("vision", "audition", "motor", "memory")

#: Whole-word pieces of the tiny test tokenizer (conftest.tiny_bert).
TINY_VOCABULARY = (
    "working memory attention pain fear reward language motor visual auditory face emotion "
    "cortex prefrontal amygdala hippocampus insula task fmri brain activation the of and in "
    "a to with for study number vision audition motor memory healthy adults area"
).split()


def ellipsoid_space(
    shape: tuple[int, int, int] = (12, 14, 12),
    voxel_size: float = 4.0,
    origin: tuple[float, float, float] = (-24.0, -28.0, -24.0),
) -> BrainSpace:
    """A box of `voxel_size` mm voxels from `origin` mm whose brain is the inscribed ellipsoid."""
    centre = (np.asarray(shape) - 1) / 2
    half = np.asarray(shape) / 2
    ijk = np.indices(shape).reshape(3, -1).T
    mask = (((ijk - centre) / half) ** 2).sum(axis=1) <= 1.0
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = origin
    return BrainSpace(mask.reshape(shape), affine)


def small_space() -> BrainSpace:
    """The 12x14x12 ellipsoid space every generated corpus lives in."""
    return ellipsoid_space()


def random_coordinates(
    space: BrainSpace,
    n_articles: int = 4,
    max_tables: int = 3,
    max_peaks: int = 5,
    margin: int = 4,
    seed: int = 0,
) -> pd.DataFrame:
    """Random peaks (columns id, table_id, x, y, z in mm) for articles "a0", "a1", ...

    Each article gets 1..max_tables tables ("t0", ...) of 1..max_peaks peaks, at continuous
    positions whose nearest voxel is at least `margin` voxels from every face of the grid
    (margin 4 keeps a 9 mm FWHM kernel on a 4 mm grid clear of the grid boundary).
    """
    rng = np.random.default_rng(seed)
    low = np.full(3, margin - 0.49)
    high = np.asarray(space.shape) - 1 - margin + 0.49
    if (high < low).any():
        raise ValueError(f"margin {margin} leaves no room in a {space.shape} grid")
    rows = []
    for a in range(n_articles):
        for t in range(int(rng.integers(1, max_tables + 1))):
            for _ in range(int(rng.integers(1, max_peaks + 1))):
                voxel = rng.uniform(low, high)
                x, y, z = space.affine[:3, 3] + voxel * space.voxel_size
                rows.append((f"a{a}", f"t{t}", x, y, z))
    return pd.DataFrame(rows, columns=["id", "table_id", "x", "y", "z"])


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


def write_corpus_files(folder: Path, n_articles: int = 80) -> dict[str, str]:
    """A generated JSONL corpus and its mask in `folder`, with where its split file goes.

    The keys are TextMapDataModule's `corpus`, `mask` and `split_file` arguments.
    """
    from text2brain.corpus.jsonl import write_jsonl_corpus

    space = small_space()
    corpus = make_corpus(space, n_articles=n_articles)
    return {
        "corpus": str(write_jsonl_corpus(corpus, folder / "synthetic.jsonl")),
        "mask": str(write_mask(space, folder / "mask.nii.gz")),
        "split_file": str(folder / "split.json"),
    }


def tiny_datamodule(files: dict[str, str], encoder: Path | str) -> Any:
    """The data module of a generated corpus (`write_corpus_files`): 8 test and 8 validation
    articles, batches of 8 tokenised by `encoder`'s tokenizer, no loader workers."""
    from text2brain.data import TextMapDataModule

    return TextMapDataModule(
        **files,
        n_test=8,
        n_val=8,
        keyword_max_df=0.05,
        tokenizer=str(encoder),
        batch_size=8,
        num_workers=0,
    )


def quiet_trainer(root: Path | None = None, **options: Any) -> Any:
    """A CPU `lightning.Trainer` without logger, checkpoints, progress bar or model summary.

    `options` add to or override those settings; `root` is the default_root_dir.
    """
    import lightning as L

    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    if root is not None:
        settings["default_root_dir"] = root
    return L.Trainer(**{**settings, **options})


def train_tiny_text2brain(folder: Path, encoder: Path, **overrides: object) -> Path:
    """Two Lightning steps of a tiny Text2Brain on a generated corpus; the checkpoint's path.

    What `text2brain fit` writes, for tests of loading and exporting (not an imitation).
    `overrides` change the tiny config's init args.
    """
    return train_tiny_head("text2brain", folder, encoder, **overrides)


def train_tiny_head(name: str, folder: Path, encoder: Path, **overrides: object) -> Path:
    """`train_tiny_text2brain` for any registered head (`name` in text2brain.models.MODELS):
    two steps of its tiny config (a contrastive head's checkpoint holds its retrieval bank)."""
    import lightning as L
    import pytest
    from model_configs import merged, tiny_init_args

    from text2brain.models import model_class
    from text2brain.paths import CACHE_DIR_ENV

    with pytest.MonkeyPatch.context() as mp:  # module-scoped callers: no autouse cache yet
        mp.setenv(CACHE_DIR_ENV, str(folder / "cache"))
        data = tiny_datamodule(write_corpus_files(folder), encoder)
        L.seed_everything(0, verbose=False)
        model = model_class(name)(**merged(tiny_init_args(name, encoder), overrides))
        trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
        trainer.fit(model, datamodule=data)
        path = folder / "tiny.ckpt"
        trainer.save_checkpoint(path)
    return path
