"""JSONL and pubget corpus loaders, and the sentence splitter, on tiny synthetic fixtures."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from text2brain.brain import BrainSpace
from text2brain.corpus.base import Article, Corpus
from text2brain.corpus.jsonl import load_jsonl_corpus, normalize_keywords, write_jsonl_corpus
from text2brain.corpus.pubget import discussion_sentences, load_pubget_corpus
from text2brain.text import split_sentences


@pytest.fixture
def space() -> BrainSpace:
    """A 10x12x10 grid of 4 mm voxels from (-20, -24, -20) mm; the outer voxel layer is not brain.

    Grid: x in [-20, 16], y in [-24, 20], z in [-20, 16] mm; brain: one voxel further in.
    """
    mask = np.zeros((10, 12, 10), dtype=bool)
    mask[1:-1, 1:-1, 1:-1] = True
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-20.0, -24.0, -20.0]
    return BrainSpace(mask, affine)


def _single_warning(record: pytest.WarningsRecorder) -> str:
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    return messages[0]


# -- sentence splitter ---------------------------------------------------------------------------


def test_split_sentences_rules() -> None:
    text = (
        "Activation was found in the amygdala (e.g. Fig. 2). Smith et al. (2005) reported\n"
        "this  too.   Did it replicate? Yes! 3 studies agree, i.e. Jones and Lee. "
        "Effects were approx. three times larger vs. Controls. p was 0.05. Done"
    )
    assert split_sentences(text) == [
        "Activation was found in the amygdala (e.g. Fig. 2).",
        "Smith et al. (2005) reported this too.",
        "Did it replicate?",
        "Yes!",
        "3 studies agree, i.e. Jones and Lee.",
        # a lower-case start never opens a sentence (documented limitation)
        "Effects were approx. three times larger vs. Controls. p was 0.05.",
        "Done",
    ]


def test_split_sentences_edge_cases() -> None:
    assert split_sentences("") == []
    assert split_sentences("   \n ") == []
    assert split_sentences("no end punctuation") == ["no end punctuation"]
    assert split_sentences("A value of 3.5 mm. next is lower case.") == [
        "A value of 3.5 mm. next is lower case."
    ]
    assert split_sentences('He said "stop." Then left. (See Table 1.) After') == [
        'He said "stop."',
        "Then left.",
        "(See Table 1.)",
        "After",
    ]
    assert split_sentences("Data from the U.S. National Institutes. More") == [
        "Data from the U.S. National Institutes.",
        "More",
    ]


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


def test_load_jsonl_keeps_good_records_and_counts_the_rest(tmp_path: Path, space) -> None:
    path = _write_jsonl(tmp_path / "mine.jsonl")
    with pytest.warns(UserWarning, match=r"corpus 'mine': skipped 1 malformed JSON lines") as rec:
        corpus = load_jsonl_corpus(path, space)
    message = _single_warning(rec)
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


def test_jsonl_bad_bytes_and_fields_are_named(tmp_path: Path, space) -> None:
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
    message = _single_warning(rec)
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


def test_pubget_csv_that_is_not_utf8_is_named(tmp_path: Path, space) -> None:
    data = _write_pubget(tmp_path)
    text = data / "text.csv"
    text.write_bytes(text.read_bytes() + "505,Schmerz \xfcber,,,\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"text.csv' is not a readable CSV file \(line \d+ is"):
        load_pubget_corpus(data, space)


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


# -- pubget --------------------------------------------------------------------------------------

_BODY_101 = (
    " \n## Introduction \n  \nMemory matters . \n\n## Methods \n  \nWe used fMRI ( ) . \n"
    "\n## Discussion \n  \nWe found activation in the dlPFC ( ; ) . This agrees with e.g. "
    "earlier work \n by Smith et al. (2005) . \n\n### Limitations \n  \nThe sample was small . "
    "\n\n## Conclusion \n  \nDone . \n## Data availability\nOn request. "
)


def _write_pubget(tmp_path: Path, tables_csv: bool = True, spaces: bool = True) -> Path:
    """A query folder as `pubget run` leaves it: extracted CSVs and, beside them, articles/."""
    data = tmp_path / "query_abc" / "subset_allArticles_extractedData"
    data.mkdir(parents=True)
    pd.DataFrame(
        {
            "pmcid": [101, 202, 303, 404],
            "title": ["Working memory in PFC", "Talairach study", "", "No peaks"],
            "keywords": ["working memory\nprefrontal cortex\n", "", "", "pain"],
            "abstract": [
                "\n## Background \n  \nWe studied memory . \n\n## Methods \n  \nfMRI was used . ",
                "",
                "Plain abstract.",
                "",
            ],
            "body": [_BODY_101, "\n## Discussion \n  \nTAL text.", "No headings here.", ""],
        }
    ).to_csv(data / "text.csv", index=False)
    pd.DataFrame(
        {
            "pmcid": [101, 303],
            "pmid": [1, 3],
            "doi": ["d1", "d3"],
            "title": ["Working memory in PFC", "Title from metadata"],
            "journal": ["J", "J"],
            "publication_year": [2020, 2021],
            "license": ["cc", "cc"],
        }
    ).to_csv(data / "metadata.csv", index=False)
    pd.DataFrame(
        {
            "pmcid": [101, 101, 101, 202, 303],
            "table_id": ["tbl1", "tbl1", "tbl2", "T1", "t1"],
            "table_label": ["Table 1", "Table 1", "Table 2", "Table 1", "Table 1"],
            "x": [-8.0, 4.0, 0.0, 0.0, 8.0],
            "y": [4.0, 0.0, 4.0, 0.0, -8.0],
            "z": [8.0, 0.0, 0.0, 0.0, 4.0],
        }
    ).to_csv(data / "coordinates.csv", index=False)
    if spaces:
        pd.DataFrame(
            {"pmcid": [101, 202, 303, 404], "coordinate_space": ["MNI", "TAL", "UNKNOWN", "MNI"]}
        ).to_csv(data / "coordinate_space.csv", index=False)
    captions = {
        ("101", "tbl1"): "Regions active in the 2-back  vs. 0-back contrast . Peaks in MNI.",
        ("101", "tbl2"): "Deactivations.",
        ("303", "t1"): "Main effect of task.",
        ("303", "t9"): "A table without coordinates.",
    }
    if tables_csv:
        pd.DataFrame(
            [
                {
                    "pmcid": int(p),
                    "table_id": t,
                    "table_label": "Table",
                    "table_caption": c,
                    "table_foot": "",
                    "n_header_rows": 1,
                    "table_data_file": "x.csv",
                }
                for (p, t), c in captions.items()
            ]
        ).to_csv(data / "tables.csv", index=False)
    else:
        for n, ((pmcid, table_id), caption) in enumerate(captions.items()):
            bucket = hashlib.md5(pmcid.encode()).hexdigest()[:3]
            tables = tmp_path / "query_abc" / "articles" / bucket / f"pmcid_{pmcid}" / "tables"
            tables.mkdir(parents=True, exist_ok=True)
            info = {
                "table_id": table_id,
                "table_label": "Table",
                "table_caption": caption,
                "n_header_rows": 1,
                "table_data_file": f"table_{n:03}.csv",
            }
            (tables / f"table_{n:03}_info.json").write_text(json.dumps(info), "utf-8")
    return data


@pytest.mark.parametrize("tables_csv", [True, False], ids=["tables.csv", "articles-dir"])
def test_load_pubget_corpus(tmp_path: Path, space, tables_csv: bool) -> None:
    data = _write_pubget(tmp_path, tables_csv=tables_csv)
    with pytest.warns(UserWarning, match=r"1 articles with peaks in TAL space") as rec:
        corpus = load_pubget_corpus(data, space)
    message = _single_warning(rec)
    assert "1 articles with peaks but no Discussion section" in message
    assert "1 articles without any peak inside the brain mask" in message  # 404
    assert "peaks of articles with no article record" not in message  # TAL peaks went with it

    assert corpus.name == "subset_allArticles_extractedData"
    assert corpus.ids == ["101", "303"]
    a101, a303 = corpus.articles
    assert a101.title == "Working memory in PFC"
    assert a101.keywords == ("working memory", "prefrontal cortex")
    assert a101.abstract == "We studied memory. fMRI was used."
    assert a101.discussion == (
        "We found activation in the dlPFC.",
        "This agrees with e.g. earlier work by Smith et al. (2005).",
        "The sample was small.",
    )
    assert a101.table_captions == {
        "tbl1": "Regions active in the 2-back vs. 0-back contrast. Peaks in MNI.",
        "tbl2": "Deactivations.",
    }
    assert a303.title == "Title from metadata"
    assert a303.keywords == ()
    assert a303.abstract == "Plain abstract."
    assert a303.discussion == ()
    assert a303.table_captions == {"t1": "Main effect of task."}
    assert corpus.coordinates.values.tolist() == [
        ["101", "tbl1", -8.0, 4.0, 8.0],
        ["101", "tbl1", 4.0, 0.0, 0.0],
        ["101", "tbl2", 0.0, 4.0, 0.0],
        ["303", "t1", 8.0, -8.0, 4.0],
    ]


def test_load_pubget_options_and_missing_optional_files(tmp_path: Path, space) -> None:
    data = _write_pubget(tmp_path, spaces=False)
    with pytest.warns(UserWarning, match=r"3 articles without a coordinate space") as rec:
        corpus = load_pubget_corpus(data, space, name="pg")
    _single_warning(rec)
    assert corpus.name == "pg"
    assert corpus.ids == ["101", "202", "303"]  # UNKNOWN everywhere: TAL not detected
    assert corpus.articles[1].discussion == ("TAL text.",)

    data.joinpath("tables.csv").unlink()  # and no articles/ folder beside it
    with pytest.warns(UserWarning, match=r"4 tables without a caption"):
        corpus = load_pubget_corpus(data, space, spaces=("mni", "unknown", "tal"))
    assert all(a.table_captions == {} for a in corpus.articles)


def test_load_pubget_missing_required(tmp_path: Path, space) -> None:
    data = _write_pubget(tmp_path)
    data.joinpath("coordinates.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"coordinates.csv not found.*pubget extract_data"):
        load_pubget_corpus(data, space)
    pd.DataFrame({"pmcid": [1], "x": [0], "y": [0], "z": [0]}).to_csv(
        data / "coordinates.csv", index=False
    )
    with pytest.raises(ValueError, match=r"coordinates.csv.*lacks column\(s\) \['table_id'\]"):
        load_pubget_corpus(data, space)
    data.joinpath("coordinates.csv").unlink()
    _write_pubget(tmp_path / "other")
    text = tmp_path / "other" / "query_abc" / "subset_allArticles_extractedData" / "text.csv"
    text.unlink()
    with pytest.raises(FileNotFoundError, match="text.csv not found"):
        load_pubget_corpus(text.parent, space)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pubget_corpus(tmp_path / "nowhere", space)


def test_discussion_sentences() -> None:
    body = (
        "## 1. Introduction\nIntro.\n## 4. Results and Discussion\nFirst point . Second"
        " point.\n\n### 4.1 Memory\nThird point.\n## Study 2\n### Discussion\nFourth point.\n"
        "## References\nNot this."
    )
    assert discussion_sentences(body) == [
        "First point.",
        "Second point.",
        "Third point.",
        "Fourth point.",
    ]
    assert discussion_sentences("") == []
    assert discussion_sentences("# of trials was 12. Discussion of it.") == []


def test_load_pubget_empty_csv_is_an_error(tmp_path: Path, space) -> None:
    data = _write_pubget(tmp_path)
    data.joinpath("coordinate_space.csv").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"coordinate_space.csv.*not a readable CSV"):
        load_pubget_corpus(data, space)
