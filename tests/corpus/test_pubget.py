"""The pubget corpus loader (text2brain.corpus.pubget) on tiny synthetic pubget folders."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from text2brain.corpus.pubget import discussion_sentences, load_pubget_corpus

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
def test_load_pubget_corpus(
    tmp_path: Path,
    space,
    tables_csv: bool,
    single_warning: Callable[[pytest.WarningsRecorder], str],
) -> None:
    data = _write_pubget(tmp_path, tables_csv=tables_csv)
    with pytest.warns(UserWarning, match=r"1 articles with peaks in TAL space") as rec:
        corpus = load_pubget_corpus(data, space)
    message = single_warning(rec)
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


def test_load_pubget_options_and_missing_optional_files(
    tmp_path: Path, space, single_warning: Callable[[pytest.WarningsRecorder], str]
) -> None:
    data = _write_pubget(tmp_path, spaces=False)
    with pytest.warns(UserWarning, match=r"3 articles without a coordinate space") as rec:
        corpus = load_pubget_corpus(data, space, name="pg")
    single_warning(rec)
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


def test_pubget_csv_that_is_not_utf8_is_named(tmp_path: Path, space) -> None:
    data = _write_pubget(tmp_path)
    text = data / "text.csv"
    text.write_bytes(text.read_bytes() + "505,Schmerz \xfcber,,,\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"text.csv' is not a readable CSV file \(line \d+ is"):
        load_pubget_corpus(data, space)
