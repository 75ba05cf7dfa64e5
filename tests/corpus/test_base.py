"""`Corpus.build`'s cleaning and skip report, and subsets (text2brain.corpus.base)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from text2brain.brain import BrainSpace
from text2brain.corpus.base import Article, Corpus, SkipReport

CORNER = (-24.0, -28.0, -24.0)  # voxel (0, 0, 0) of small_space: in the grid, not in the mask


def _peak_rows(frame: pd.DataFrame) -> list[tuple]:
    return list(frame[["id", "table_id", "x", "y", "z"]].itertuples(index=False, name=None))


# -- Corpus.build --------------------------------------------------------------------------------

#: (id, table_id, x, y, z, why): every kind of row Corpus.build drops, and the rows it keeps
MESSY_ROWS = [
    ("A1", "t1", 0.0, 0.0, 0.0, "kept"),
    ("A1", "t1", 4.0, 0.0, 0.0, "kept"),
    ("A1", "t1", 4.0, 0.0, 0.0, "duplicate"),
    ("A1", "t2", 4.0, 0.0, 0.0, "kept"),  # the same peak in another table is not a duplicate
    (None, "t1", 0.0, 0.0, 0.0, "missing id"),
    ("  ", "t1", 4.0, 4.0, 4.0, "missing id"),
    (None, None, 8.0, 0.0, 0.0, "missing id"),  # both missing: counted once, as a missing id
    ("A2", None, 0.0, 0.0, 0.0, "missing table"),
    ("A2", "t1", "abc", 0.0, 0.0, "non-numeric"),
    ("A2", "t1", 0.0, np.inf, 0.0, "non-numeric"),
    ("A2", "t1", 0.0, 0.0, np.nan, "non-numeric"),
    ("A2", "t1", "8", 8.0, 8.0, "kept"),  # numeric text is a number
    ("A2", "t1", 100.0, 0.0, 0.0, "outside grid"),
    ("A2", "t3", 0.0, -31.0, 0.0, "outside grid"),  # y voxel -0.75 rounds to -1
    ("GHOST", "t1", 0.0, 0.0, 0.0, "no article"),
    ("GHOST", "t2", 4.0, 4.0, 4.0, "no article"),
    ("A4", "t1", *CORNER, "kept if its article were"),  # A4's only peak is outside the mask
    ("A3", "tX", 0.0, 4.0, -4.0, "kept"),
    ("A3", "t1", *CORNER, "kept"),  # outside the mask, but A3 has a peak in the brain
]

EXPECTED_COUNTS = {
    "peak rows with a missing article id": 3,
    "peak rows with a missing table id": 1,
    "peak rows with non-numeric or non-finite coordinates": 3,
    "duplicate peaks within a table": 1,
    "articles with a missing id": 1,
    "duplicate article records": 1,
    "peaks of articles with no article record": 2,
    "peaks outside the brain grid": 2,
    "articles without any peak inside the brain mask": 2,
}


def messy_inputs() -> tuple[list[Article], pd.DataFrame]:
    articles = [
        Article("A1", title="first A1", keywords=("memory",)),
        Article("A2", title="A2"),
        Article("A1", title="second A1 (duplicate record)"),
        Article("", title="no id"),
        Article("A4", title="peaks only outside the mask"),
        Article("A5", title="no peaks at all"),
        Article("A3", title="A3", abstract="some text"),
    ]
    coordinates = pd.DataFrame(
        [row[:5] for row in MESSY_ROWS], columns=["id", "table_id", "x", "y", "z"]
    )
    coordinates["extra"] = "ignored"
    return articles, coordinates


def test_build_skips_and_counts_every_bad_row(
    small_space: BrainSpace, single_warning: Callable[[pytest.WarningsRecorder], str]
) -> None:
    articles, coordinates = messy_inputs()
    with pytest.warns(UserWarning) as record:
        corpus = Corpus.build("toy", articles, coordinates, small_space)
    message = single_warning(record)
    assert message.startswith("corpus 'toy': skipped ")
    for reason, n in EXPECTED_COUNTS.items():
        assert f"{n} {reason}" in message
    assert corpus.skipped.counts == EXPECTED_COUNTS

    assert corpus.name == "toy"
    assert corpus.ids == ["A1", "A2", "A3"]
    assert len(corpus) == 3
    assert corpus.articles[0].title == "first A1"  # the first of duplicate records wins
    assert corpus.articles[2].abstract == "some text"
    assert [corpus.index_of(i) for i in corpus.ids] == [0, 1, 2]

    kept = [row[:5] for row in MESSY_ROWS if row[5] == "kept"]
    kept = [(i, t, float(x), float(y), float(z)) for i, t, x, y, z in kept]
    assert _peak_rows(corpus.coordinates) == kept
    assert list(corpus.coordinates.columns) == ["id", "table_id", "x", "y", "z"]
    assert corpus.coordinates[["x", "y", "z"]].dtypes.eq(np.float64).all()
    assert corpus.coordinates.index.equals(pd.RangeIndex(len(kept)))
    # the input frame is left alone
    assert len(coordinates) == len(MESSY_ROWS) and "extra" in coordinates.columns


def test_build_clean_corpus_is_silent_and_normalises_ids(small_space: BrainSpace) -> None:
    articles = [Article("12"), Article("7")]
    coordinates = pd.DataFrame(
        {
            "id": [12.0, 12.0, 7],  # float ids (pandas' doing, with missing values) lose ".0"
            "table_id": [1, 1.0, " T2 "],
            "x": [0.0, 4.0, 0.0],
            "y": [0, 0, 4],
            "z": [0.0, 0.0, 0.0],
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corpus = Corpus.build("clean", articles, coordinates, small_space)
    assert not corpus.skipped
    assert corpus.ids == ["12", "7"]
    assert _peak_rows(corpus.coordinates) == [
        ("12", "1", 0.0, 0.0, 0.0),
        ("12", "1", 4.0, 0.0, 0.0),
        ("7", "T2", 0.0, 4.0, 0.0),
    ]


def test_build_merges_a_loader_report(
    small_space: BrainSpace, single_warning: Callable[[pytest.WarningsRecorder], str]
) -> None:
    report = SkipReport()
    report.add("malformed lines", 1234)
    articles = [Article("A"), Article("B")]
    coordinates = pd.DataFrame(
        {"id": ["A", "A"], "table_id": ["1", "1"], "x": [0.0] * 2, "y": [0.0] * 2, "z": [0.0] * 2}
    )
    with pytest.warns(UserWarning) as record:
        corpus = Corpus.build("merged", articles, coordinates, small_space, skipped=report)
    message = single_warning(record)
    assert message == (
        "corpus 'merged': skipped 1,234 malformed lines; 1 duplicate peaks within a table; "
        "1 articles without any peak inside the brain mask"
    )
    assert corpus.skipped is report
    assert corpus.ids == ["A"]


@pytest.mark.parametrize("column", ["id", "table_id", "x", "y", "z"])
def test_build_missing_column(small_space: BrainSpace, column: str) -> None:
    _, coordinates = messy_inputs()
    with pytest.raises(ValueError, match=f"'{column}'"):
        Corpus.build("toy", [Article("A1")], coordinates.drop(columns=column), small_space)


def test_subset(small_space: BrainSpace) -> None:
    articles, coordinates = messy_inputs()
    with pytest.warns(UserWarning):
        corpus = Corpus.build("toy", articles, coordinates, small_space)
    sub = corpus.subset(["A3", "A1"])
    assert sub.name == "toy"
    assert sub.ids == ["A3", "A1"]
    assert sub.articles == [corpus.articles[2], corpus.articles[0]]
    assert sub.index_of("A3") == 0 and sub.index_of("A1") == 1
    # Peaks follow the requested article order, so rendering a subset keeps its order.
    coords = corpus.coordinates
    expected = pd.concat([coords[coords["id"] == "A3"], coords[coords["id"] == "A1"]])
    pd.testing.assert_frame_equal(sub.coordinates, expected.reset_index(drop=True))
    assert sub.skipped is corpus.skipped
    assert len(corpus.subset([])) == 0
    with pytest.raises(KeyError, match="GHOST"):
        corpus.subset(["A1", "GHOST"])
    with pytest.raises(KeyError):
        corpus.index_of("A4")


def test_skip_report() -> None:
    report = SkipReport()
    assert not report
    report.add("nothing", 0)
    assert not report and report.counts == {}
    report.add("rows", 2)
    report.add("rows", np.int64(3))
    report.add("others", 1_000_000)
    assert report and report.counts == {"rows": 5, "others": 1_000_000}
    assert report.message("src") == "src: skipped 5 rows; 1,000,000 others"
    with pytest.warns(UserWarning, match="src: skipped 5 rows"):
        report.warn("src")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SkipReport().warn("silent")
