"""Tiny generated corpora with known structure, shared by the tests, and the helpers that
build tiny data modules and trainers on them and train tiny heads.

Each article is about one topic; a topic has a word and a region of the small grid, and its
articles report peaks near that region, so a model or baseline that learns anything must map
the topic word to the topic region.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


#: Three queries of the tiny vocabulary, for the maps of the tiny heads.
QUERIES = ["working memory in the prefrontal cortex", "pain and the insula", "visual cortex"]

#: Texts that are hard to tokenise: accents, scripts without spaces, emoji, special-token
#: look-alikes, invisible characters and one text longer than 128 tokens.
HARD_TEXTS = [
    "self-generated thought",
    "Schmerz über 痛み 🧠",
    "naïve CAFÉ résumé, ÅNGSTRÖM Ω ﬁ",
    "中文字符测试 日本語のテキスト",
    "The default-mode network (DMN) is deactivated during external tasks; " * 12,
    "x\u200by\tz\n\nw  [CLS] [SEP] [MASK] [PAD]",
    "emoji 😀👍 end",
]


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


def topic_region(space: BrainSpace, topic: str, radius_mm: float = 8.0) -> np.ndarray:
    """Which brain voxels (a mask over `space`'s vector) lie within `radius_mm` of the topic's
    centre."""
    centres = space.affine[:3, :3] @ np.argwhere(space.mask).T + space.affine[:3, 3:4]
    return np.linalg.norm(centres.T - topic_centres(space)[topic], axis=1) <= radius_mm


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


def tiny_data_args(
    files: dict[str, str], encoder: Path | str | None = None, **options: Any
) -> dict[str, Any]:
    """The data module arguments of a generated corpus (`write_corpus_files`): 8 test and 8
    validation articles, batches of 8 tokenised by `encoder`'s tokenizer (none: untokenised),
    no loader workers; `options` add to or override these."""
    return {
        **files,
        "n_test": 8,
        "n_val": 8,
        "keyword_max_df": 0.05,
        "tokenizer": None if encoder is None else str(encoder),
        "batch_size": 8,
        "num_workers": 0,
        **options,
    }


def tiny_datamodule(
    files: dict[str, str], encoder: Path | str | None = None, **options: Any
) -> Any:
    """The data module of `tiny_data_args`."""
    from text2brain.data import TextMapDataModule

    return TextMapDataModule(**tiny_data_args(files, encoder, **options))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on `n` threads inside the block, as many as before after it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    import lightning as L
    from model_configs import tiny_model

    data = tiny_datamodule(write_corpus_files(folder), encoder)
    L.seed_everything(0, verbose=False)
    model = tiny_model("text2brain", encoder, **overrides)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    path = folder / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def train_tiny_contrastive(
    name: str,
    files: dict[str, str],
    folder: Path,
    encoder: Path,
    hierarchy_tables: int = 2,
    **overrides: Any,
) -> dict[str, Any]:
    """A contrastive head (CLIP, MNM) fitted 3 bf16 steps on hierarchy batches, validated and
    saved to `folder`: its model (in eval mode), data module, checkpoint path, the values
    logged at each training step and the metrics after validation. `overrides` change its
    tiny init args."""
    import lightning as L
    from model_configs import tiny_model

    class Logged(L.Callback):
        """Every value logged at each training batch end (`trainer.callback_metrics`)."""

        def __init__(self) -> None:
            self.steps: list[dict[str, float]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.steps.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    data = tiny_datamodule(files, encoder, hierarchy_tables=hierarchy_tables)
    L.seed_everything(0, verbose=False)
    model = tiny_model(name, encoder, **overrides)
    logged = Logged()
    run = quiet_trainer(
        folder, num_sanity_val_steps=0, max_steps=3, precision="bf16-mixed", callbacks=[logged]
    )
    run.fit(model, datamodule=data)
    run.validate(model, datamodule=data, verbose=False)
    path = folder / f"{name}.ckpt"
    run.save_checkpoint(path)
    return {
        "model": model.eval(),
        "data": data,
        "path": path,
        "logged": logged.steps,
        "metrics": {k: float(v) for k, v in run.callback_metrics.items()},
    }
