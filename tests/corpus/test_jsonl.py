"""The JSONL corpus loader and writer (text2brain.corpus.jsonl) on tiny synthetic files."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from text2brain.corpus.base import Article, Corpus
from text2brain.corpus.jsonl import load_jsonl_corpus, normalize_keywords, write_jsonl_corpus


def test_normalize_keywords() -> None:
    assert normalize_keywords(" Working memory ; fMRI;; ") == ("Working memory", "fMRI")
    assert normalize_keywords(["  PFC ", "", None, "EEG"]) == ("PFC", "EEG")
    assert normalize_keywords(None) == ()


# -- JSONL ---------------------------------------------------------------------------------------


def _write_jsonl(path: Path) -> Path:
    lines = [
        json.dumps(
            {
                "id": "1",
                "title": "  Working   memory ",
                "keywords": "working memory; fMRI ;",
                "abstract": "We scanned people.",
                "discussion": "The PFC was active, e.g. in Fig. 1. Smith et al. agree.",
                "tables": [
                    {
                        "table_id": "t1",
                        "caption": "Table 1. Activations for\n 2-back.",
                        "peaks": [[-8, 4, 8], [4, 0, 0], [4, 0, 0]],  # one duplicate
                    }
                ],
                "extra_field": "ignored",
            }
        ),
        '{"id": "2", "tables": [',  # malformed JSON
        "",  # blank lines are not records
        json.dumps({"title": "no id", "tables": [{"peaks": [[0, 0, 0]]}]}),
        json.dumps(
            {
                "id": "3",
                "keywords": ["  Pain ", "insula"],
                "discussion": ["First sentence.", "  Second sentence. "],
                "tables": [
                    {"table_id": 7, "peaks": [[0, 0, float("nan")], [4, None, 0], [0, 4, 8]]},
                    {"table_id": "empty", "caption": "No peaks here.", "peaks": []},
                ],
            }
        ),
        json.dumps({"id": "4", "tables": [{"peaks": [[100, 100, 100], [-20, -24, -20]]}]}),
        json.dumps({"id": 5, "tables": [{"peaks": [[0, 0, 0]]}]}),  # no text at all
        json.dumps({"id": "1", "tables": [{"peaks": [[8, 8, 8]]}]}),  # duplicate id
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_keeps_good_records_and_counts_the_rest(
    tmp_path: Path, space, single_warning: Callable[[pytest.WarningsRecorder], str]
) -> None:
    path = _write_jsonl(tmp_path / "mine.jsonl")
    with pytest.warns(UserWarning, match=r"corpus 'mine': skipped 1 malformed JSON lines") as rec:
        corpus = load_jsonl_corpus(path, space)
    message = single_warning(rec)
    for expected in (
        "1 records without an id",
        "1 records with an already seen id",
        "1 tables without peaks",
        "1 peak rows with non-numeric or non-finite coordinates",
        "1 malformed peaks (not a list of three numbers [x, y, z])",
        "1 duplicate peaks within a table",
        "1 peaks outside the brain grid",
        "1 articles without any peak inside the brain mask",
    ):
        assert expected in message

    assert corpus.name == "mine"
    assert corpus.ids == ["1", "3", "5"]
    first, third, fifth = corpus.articles
    assert first.title == "Working memory"
    assert first.keywords == ("working memory", "fMRI")
    assert first.abstract == "We scanned people."
    assert first.discussion == ("The PFC was active, e.g. in Fig. 1.", "Smith et al. agree.")
    assert first.table_captions == {"t1": "Table 1. Activations for 2-back."}
    assert third.keywords == ("Pain", "insula")
    assert third.discussion == ("First sentence.", "Second sentence.")
    assert third.table_captions == {}
    assert fifth == Article(id="5")

    coords = corpus.coordinates
    assert list(coords.columns) == ["id", "table_id", "x", "y", "z"]
    assert coords[["id", "table_id"]].values.tolist() == [
        ["1", "t1"],
        ["1", "t1"],
        ["3", "7"],
        ["5", "1"],
    ]
    assert coords[["x", "y", "z"]].values.tolist() == [
        [-8, 4, 8],
        [4, 0, 0],
        [0, 4, 8],
        [0, 0, 0],
    ]


def test_load_jsonl_whole_file_errors(tmp_path: Path, space) -> None:
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_jsonl_corpus(tmp_path / "missing.jsonl", space)
    not_json = tmp_path / "table.jsonl"
    not_json.write_text("id,x,y,z\n1,0,0,0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"table.jsonl.*not JSON Lines"):
        load_jsonl_corpus(not_json, space)
    array = tmp_path / "array.jsonl"
    array.write_text(json.dumps([{"id": "1", "tables": []}]), encoding="utf-8")
    with pytest.raises(ValueError, match="not a JSON object"):
        load_jsonl_corpus(array, space)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_jsonl_corpus(empty, space)


def test_jsonl_bad_bytes_and_fields_are_named(
    tmp_path: Path, space, single_warning: Callable[[pytest.WarningsRecorder], str]
) -> None:
    good = {"id": "1", "title": "Working memory", "tables": [{"peaks": [[0, 0, 0]]}]}
    bom = tmp_path / "bom.jsonl"
    bom.write_text("\ufeff" + json.dumps(good) + "\n", encoding="utf-8")
    assert load_jsonl_corpus(bom, space).ids == ["1"]  # a Windows editor's BOM: kept

    latin1 = tmp_path / "latin1.jsonl"
    second = json.dumps({**good, "id": "2", "title": "Schmerz über"}, ensure_ascii=False)
    latin1.write_bytes((json.dumps(good) + "\n" + second + "\n").encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.jsonl' is not UTF-8 text \(line 2, byte 31"):
        load_jsonl_corpus(latin1, space)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=r"binary.jsonl' is not UTF-8 text \(line 2, byte 118"):
        load_jsonl_corpus(binary, space)

    fields = tmp_path / "fields.jsonl"
    records = [
        {"id": "1", "title": ["a", "b"], "tables": [{"peaks": [[0, 0, 0]]}]},
        {"id": "2", "tables": [{"peaks": [["10", "20", "30"], [0, 4, 0]]}]},
        {
            "id": "3",
            "tables": [
                {"table_id": "t1", "peaks": [[0, 0, 0]]},
                {"table_id": "t1", "peaks": [[4, 4, 4]]},
            ],
        },
    ]
    fields.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning) as rec:
        corpus = load_jsonl_corpus(fields, space)
    message = single_warning(rec)
    assert "1 records whose 'title' is not a string (left empty)" in message
    assert "1 malformed peaks (not a list of three numbers [x, y, z])" in message
    assert "1 tables whose table_id repeats" in message
    assert "first: article '3', table_id 't1', line 3" in message
    assert corpus.articles[0].title == ""
    assert corpus.coordinates[["id", "x", "y", "z"]].values.tolist() == [
        ["1", 0, 0, 0],
        ["2", 0, 4, 0],
        ["3", 0, 0, 0],
    ]


def test_jsonl_round_trip(tmp_path: Path, space) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corpus = load_jsonl_corpus(_write_jsonl(tmp_path / "a.jsonl"), space)
    bag = Article(
        "9",
        title="T",
        keywords=("k",),
        abstract="amygdala fear",
        abstract_is_bag_of_terms=True,
        table_captions={"tb": "Peaks."},
    )
    extra = pd.DataFrame(
        {
            "id": ["9", "9"],
            "table_id": ["tb", "tc"],
            "x": [0.5, 4.0],
            "y": [-3.25, 8.0],
            "z": [1.0, 0.0],
        }
    )
    corpus = Corpus.build(
        "a", [*corpus.articles, bag], pd.concat([corpus.coordinates, extra]), space
    )

    out = write_jsonl_corpus(corpus, tmp_path / "b.jsonl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean corpus reloads without any skip
        again = load_jsonl_corpus(out, space, name="a")
    assert again.articles == corpus.articles
    assert [a.table_captions for a in again.articles] == [a.table_captions for a in corpus.articles]
    assert again.articles[-1].abstract_is_bag_of_terms
    pd.testing.assert_frame_equal(again.coordinates, corpus.coordinates)


def test_one_deeply_nested_record_is_skipped_and_counted(
    tmp_path: Path, space, single_warning: Callable[[pytest.WarningsRecorder], str]
) -> None:
    """100,000 `[` on one line used to abort the whole load with a RecursionError."""
    path = _write_jsonl(tmp_path / "mine.jsonl")
    with path.open("a", encoding="utf-8") as f:
        f.write("[" * 100_000 + "\n")
    with pytest.warns(UserWarning) as rec:
        corpus = load_jsonl_corpus(path, space)
    assert "1 JSON lines nested too deeply" in single_warning(rec)
    assert len(corpus) > 0


def test_a_folder_named_like_a_jsonl_corpus_says_so(tmp_path: Path, space) -> None:
    from text2brain.corpus import load_corpus

    folder = tmp_path / "corpus.jsonl"
    folder.mkdir()
    for load in (load_jsonl_corpus, load_corpus):
        with pytest.raises(IsADirectoryError, match=r"corpus.jsonl' is a folder, not a .jsonl"):
            load(str(folder), space)
