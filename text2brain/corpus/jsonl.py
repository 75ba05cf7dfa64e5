"""A plain JSON Lines format for a user's own full-text corpus, and a small sentence splitter.

One JSON object per line, one line per article::

    {"id": "12345", "title": "...", "keywords": ["working memory", "fMRI"],
     "abstract": "...", "discussion": ["First sentence.", "Second sentence."],
     "tables": [{"table_id": "t1", "caption": "Table 1. Activations for ...",
                 "peaks": [[-42, 18, 24], [38, 20, 22]]}]}

Fields:

- ``id`` (required): string or integer, unique in the file.
- ``tables`` (required): list of tables; each has ``peaks`` (list of ``[x, y, z]`` JSON numbers
  in MNI mm; ``["10", "20", "30"]`` is refused), and optionally ``table_id`` (string or
  integer, unique within the article; default: the table's 1-based position) and ``caption``
  (string).
- ``title``, ``abstract`` (optional): strings (anything else is counted and left empty).
- ``keywords`` (optional): list of strings, or one string split on ``;``. Whitespace around each
  keyword is stripped, case is kept, empty keywords are dropped.
- ``discussion`` (optional): list of sentences, or one string split by `split_sentences`.
- ``abstract_is_bag_of_terms`` (optional): true when the abstract is a list of vocabulary terms
  rather than prose (as in NeuroQuery-derived corpora).

Other fields are ignored. The file is UTF-8 (a byte order mark is accepted); other bytes are an
error naming the line. The loader never drops input silently: malformed lines, records
without an id, duplicate ids, tables without peaks or with a repeated table_id, malformed
peaks and titles or abstracts that are not strings are counted and reported, with everything
`Corpus.build` removes, in one warning.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from os import PathLike
from pathlib import Path
from typing import Any

import pandas as pd

from text2brain.brain import BrainSpace
from text2brain.corpus.base import Article, Corpus, SkipReport
from text2brain.outputs import atomic_output
from text2brain.text import split_sentences

__all__ = ["load_jsonl_corpus", "write_jsonl_corpus", "normalize_keywords"]


def normalize_keywords(value: Any) -> tuple[str, ...]:
    """Keywords as a tuple of stripped, non-empty strings (case kept); a string splits on ';'."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: Iterable[Any] = value.split(";")
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        items = [value]
    return tuple(s for s in (str(k).strip() for k in items if k is not None) if s)


# -- reading -------------------------------------------------------------------------------------


def load_jsonl_corpus(path: str | PathLike, space: BrainSpace, name: str | None = None) -> Corpus:
    """Read a JSON Lines corpus (format in this module's docstring) into a cleaned `Corpus`.

    Raises FileNotFoundError if `path` does not exist and ValueError if no line of it is a
    JSON object. Bad records are skipped and counted; `name` defaults to the file's stem.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"JSONL corpus {str(path)!r} is a folder, not a .jsonl file (a pubget corpus is a "
            "folder of its extracted CSV files)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"JSONL corpus {str(path)!r} does not exist")
    name = name if name is not None else path.stem
    report = SkipReport()
    articles: list[Article] = []
    seen: set[str] = set()
    ids: list[str] = []
    table_ids: list[str] = []
    xs: list[float] = []
    ys: list[float] = []
    zs: list[float] = []
    n_lines = n_objects = n_repeated = 0
    first_error = first_repeated = ""

    with path.open("rb") as f:
        for line_number, raw in enumerate(f, start=1):
            line = _decode(raw, path, line_number)
            if not line.strip():
                continue
            n_lines += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                first_error = first_error or f"line {line_number}: {err}"
                report.add("malformed JSON lines", 1)
                continue
            except RecursionError:  # one record nested thousands deep must not stop the load
                first_error = first_error or f"line {line_number}: nested too deeply"
                report.add("JSON lines nested too deeply", 1)
                continue
            if not isinstance(record, dict):
                first_error = first_error or f"line {line_number}: not a JSON object"
                report.add("JSON lines that are not an object", 1)
                continue
            n_objects += 1
            article_id = _record_id(record.get("id"))
            if article_id is None:
                report.add("records without an id", 1)
                continue
            if article_id in seen:
                report.add("records with an already seen id (later lines skipped)", 1)
                continue
            tables = record.get("tables")
            if not isinstance(tables, list):
                report.add("records without a 'tables' list", 1)
                continue
            seen.add(article_id)

            captions: dict[str, str] = {}
            table_ids_seen: set[str] = set()
            for position, table in enumerate(tables, start=1):
                if not isinstance(table, dict):
                    report.add("tables that are not a JSON object", 1)
                    continue
                peaks = table.get("peaks")
                if not isinstance(peaks, list) or not peaks:
                    report.add("tables without peaks", 1)
                    continue
                table_id = _record_id(table.get("table_id"))
                table_id = table_id if table_id is not None else str(position)
                if table_id in table_ids_seen:
                    n_repeated += 1
                    first_repeated = first_repeated or (
                        f"article {article_id!r}, table_id {table_id!r}, line {line_number}"
                    )
                    continue
                table_ids_seen.add(table_id)
                n_good = 0
                for peak in peaks:
                    if not _is_peak(peak):
                        report.add("malformed peaks (not a list of three numbers [x, y, z])", 1)
                        continue
                    x, y, z = (float(v) for v in peak)
                    ids.append(article_id)
                    table_ids.append(table_id)
                    xs.append(x)
                    ys.append(y)
                    zs.append(z)
                    n_good += 1
                caption = table.get("caption")
                if n_good and isinstance(caption, str) and caption.strip():
                    captions[table_id] = " ".join(caption.split())

            for key in ("title", "abstract"):
                if not isinstance(record.get(key, ""), (str, type(None))):
                    report.add(f"records whose {key!r} is not a string (left empty)", 1)
                    record[key] = None
            articles.append(
                Article(
                    id=article_id,
                    title=_text(record.get("title")),
                    keywords=normalize_keywords(record.get("keywords")),
                    abstract=_text(record.get("abstract")),
                    discussion=_discussion(record.get("discussion")),
                    table_captions=captions,
                    abstract_is_bag_of_terms=bool(record.get("abstract_is_bag_of_terms", False)),
                )
            )

    report.add(
        "tables whose table_id repeats an earlier table's of the same article (skipped, not "
        f"merged; first: {first_repeated})",
        n_repeated,
    )
    if n_lines == 0:
        raise ValueError(f"JSONL corpus {str(path)!r} is empty: expected one JSON object per line")
    if n_objects == 0:
        raise ValueError(
            f"JSONL corpus {str(path)!r} is not JSON Lines: none of its {n_lines} line(s) is a "
            f"JSON object ({first_error}); expected one JSON object per line, one per article"
        )
    coordinates = pd.DataFrame({"id": ids, "table_id": table_ids, "x": xs, "y": ys, "z": zs})
    return Corpus.build(name, articles, coordinates, space, skipped=report)


def _record_id(value: Any) -> str | None:
    """A record or table id as a non-empty string (integers allowed), else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, (str, int)):
        text = str(value).strip()
        return text or None
    return None


def _decode(raw: bytes, path: Path, line_number: int) -> str:
    """A line as text; a UTF-8 byte order mark (Windows editors) is dropped from the first."""
    try:
        return raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"JSONL corpus {str(path)!r} is not UTF-8 text (line {line_number}, byte "
            f"{err.start + 1}: {err.reason}); save it as UTF-8 (JSON Lines is UTF-8)"
        ) from err


def _is_peak(value: Any) -> bool:
    """[x, y, z] of JSON numbers: strings ("10") are refused, not read as numbers."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _text(value: Any) -> str:
    if value is None:
        return ""
    return " ".join(str(value).split())


def _discussion(value: Any) -> tuple[str, ...]:
    """Sentences as given (a list), or split from a single string."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(split_sentences(value))
    if isinstance(value, (list, tuple)):
        return tuple(s for s in (_text(v) for v in value if v is not None) if s)
    return tuple(split_sentences(str(value)))


# -- writing -------------------------------------------------------------------------------------


def write_jsonl_corpus(corpus: Corpus, path: str | PathLike) -> Path:
    """Write `corpus` in the JSONL format so `load_jsonl_corpus` gives it back unchanged.

    Tables are written in their order in `corpus.coordinates`; a caption is written with the
    table it belongs to (captions of tables without peaks have no table to go with and are
    left out). Returns the path written.
    """
    path = Path(path)
    coords = corpus.coordinates
    tables: dict[str, dict[str, list[list[float]]]] = {}
    for article_id, table_id, x, y, z in zip(
        coords["id"].astype(str).to_numpy(),
        coords["table_id"].astype(str).to_numpy(),
        coords["x"].to_numpy(dtype=float),
        coords["y"].to_numpy(dtype=float),
        coords["z"].to_numpy(dtype=float),
        strict=True,
    ):
        tables.setdefault(article_id, {}).setdefault(table_id, []).append(
            [float(x), float(y), float(z)]
        )
    with atomic_output(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for article in corpus.articles:
            record: dict[str, Any] = {"id": article.id}
            if article.title:
                record["title"] = article.title
            if article.keywords:
                record["keywords"] = list(article.keywords)
            if article.abstract:
                record["abstract"] = article.abstract
            if article.abstract_is_bag_of_terms:
                record["abstract_is_bag_of_terms"] = True
            if article.discussion:
                record["discussion"] = list(article.discussion)
            record["tables"] = []
            for table_id, peaks in tables.get(article.id, {}).items():
                table: dict[str, Any] = {"table_id": table_id}
                caption = article.table_captions.get(table_id)
                if caption:
                    table["caption"] = caption
                table["peaks"] = peaks
                record["tables"].append(table)
            f.write(json.dumps(record, ensure_ascii=False))
            f.write("\n")
    return path
