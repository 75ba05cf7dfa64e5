"""The corpus data model shared by every source: articles with text, and their peak tables.

A corpus is kept columnar where it is large (peaks: one pandas row per peak) and as small
frozen records where it is text (one `Article` per article), so that rendering is vectorised
and text sampling stays simple. Every loader funnels through `Corpus.build`, which cleans the
peaks and reports, in one warning, everything it had to skip.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from text2brain.brain import BrainSpace

COORDINATE_COLUMNS = ("id", "table_id", "x", "y", "z")


@dataclass(frozen=True)
class Article:
    """One article's text. Missing text is an empty string or an empty tuple.

    `table_captions` maps a table id (as used in the corpus coordinates) to its caption.
    `abstract_is_bag_of_terms` marks abstracts rebuilt from term counts (NeuroQuery): the text
    is the article's vocabulary terms, not prose.
    """

    id: str
    title: str = ""
    keywords: tuple[str, ...] = ()
    abstract: str = ""
    discussion: tuple[str, ...] = ()
    table_captions: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    abstract_is_bag_of_terms: bool = False


@dataclass
class SkipReport:
    """Counts of what a loader dropped, by reason, so nothing is dropped silently."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, n: int) -> None:
        if n:
            self.counts[reason] = self.counts.get(reason, 0) + int(n)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def message(self, source: str) -> str:
        parts = "; ".join(f"{n:,} {reason}" for reason, n in self.counts.items())
        return f"{source}: skipped {parts}"

    def warn(self, source: str) -> None:
        if self:
            warnings.warn(self.message(source), stacklevel=3)


@dataclass
class Corpus:
    """Articles (ordered) and their peaks (columns id, table_id, x, y, z in MNI mm)."""

    name: str
    articles: list[Article]
    coordinates: pd.DataFrame
    skipped: SkipReport = field(default_factory=SkipReport)

    def __post_init__(self) -> None:
        self._index = {a.id: i for i, a in enumerate(self.articles)}

    def __len__(self) -> int:
        return len(self.articles)

    @property
    def ids(self) -> list[str]:
        return [a.id for a in self.articles]

    def index_of(self, article_id: str) -> int:
        return self._index[article_id]

    def subset(self, ids: Iterable[str]) -> Corpus:
        """The corpus restricted to `ids`, in the order given."""
        ids = list(ids)
        unknown = [i for i in ids if i not in self._index]
        if unknown:
            raise KeyError(f"{len(unknown)} ids not in corpus {self.name!r}, e.g. {unknown[:3]}")
        position = {article_id: i for i, article_id in enumerate(ids)}
        coords = self.coordinates[self.coordinates["id"].isin(position)]
        coords = coords.iloc[np.argsort(coords["id"].map(position).to_numpy(), kind="stable")]
        articles = [self.articles[self._index[i]] for i in ids]
        return Corpus(self.name, articles, coords.reset_index(drop=True), self.skipped)

    @classmethod
    def build(
        cls,
        name: str,
        articles: Sequence[Article],
        coordinates: pd.DataFrame,
        space: BrainSpace,
        skipped: SkipReport | None = None,
    ) -> Corpus:
        """Clean peaks and articles, warn once with the counts of everything skipped.

        Skipped: peak rows with a missing id or table id, non-numeric or non-finite
        coordinates, exact duplicate peaks within a table, peaks outside the grid, peaks of
        articles the corpus has no record of, duplicate article records, and articles with no
        peak inside the brain mask. `skipped` carries counts a loader already made.
        """
        report = skipped if skipped is not None else SkipReport()
        missing = [c for c in COORDINATE_COLUMNS if c not in coordinates.columns]
        if missing:
            raise ValueError(
                f"corpus {name!r}: coordinates lack column(s) {missing}; "
                f"expected columns {list(COORDINATE_COLUMNS)}"
            )
        coords = clean_coordinates(coordinates[list(COORDINATE_COLUMNS)], report)

        unique: dict[str, Article] = {}
        for article in articles:
            if not isinstance(article.id, str) or not article.id.strip():
                report.add("articles with a missing id", 1)
            elif article.id.strip() in unique:
                report.add("duplicate article records", 1)
            else:
                unique[article.id.strip()] = replace(article, id=article.id.strip())

        known = coords["id"].isin(unique.keys())
        report.add("peaks of articles with no article record", int((~known).sum()))
        coords = coords[known]

        inside_grid = space.contains_mm(coords[["x", "y", "z"]].to_numpy())
        report.add("peaks outside the brain grid", int((~inside_grid).sum()))
        coords = coords[inside_grid]

        in_mask = space.in_mask_mm(coords[["x", "y", "z"]].to_numpy())
        ids_in_brain = set(coords.loc[in_mask, "id"])
        no_peaks = [i for i in unique if i not in ids_in_brain]
        report.add("articles without any peak inside the brain mask", len(no_peaks))
        kept = [a for i, a in unique.items() if i in ids_in_brain]
        coords = coords[coords["id"].isin(ids_in_brain)].reset_index(drop=True)

        report.warn(f"corpus {name!r}")
        return cls(name, kept, coords, report)


def clean_coordinates(coordinates: pd.DataFrame, report: SkipReport) -> pd.DataFrame:
    """Normalise id/table_id to strings and x/y/z to float64, dropping (and counting) bad rows."""
    df = coordinates.copy()
    bad_id = df["id"].isna() | (df["id"].astype(str).str.strip() == "")
    bad_table = df["table_id"].isna() | (df["table_id"].astype(str).str.strip() == "")
    report.add("peak rows with a missing article id", int(bad_id.sum()))
    report.add("peak rows with a missing table id", int((bad_table & ~bad_id).sum()))
    df = df[~(bad_id | bad_table)]

    xyz = df[["x", "y", "z"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    finite = np.isfinite(xyz).all(axis=1)
    report.add("peak rows with non-numeric or non-finite coordinates", int((~finite).sum()))
    df = pd.DataFrame(
        {
            "id": df["id"].to_numpy()[finite],
            "table_id": df["table_id"].to_numpy()[finite],
            "x": xyz[finite, 0],
            "y": xyz[finite, 1],
            "z": xyz[finite, 2],
        }
    )
    df["id"] = df["id"].map(_id_to_str)
    df["table_id"] = df["table_id"].map(_id_to_str)
    duplicated = df.duplicated(keep="first")
    report.add("duplicate peaks within a table", int(duplicated.sum()))
    return df[~duplicated].reset_index(drop=True)


def _id_to_str(value: object) -> str:
    """Ids as strings; integral floats (a pandas artefact of missing values) lose their '.0'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()
