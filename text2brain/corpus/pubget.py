"""Import the CSV files that pubget (https://github.com/neuroquery/pubget) extracts from PMC.

`pubget run DIR -q QUERY` (or `pubget extract_data ARTICLES_DIR`) writes, under
``DIR/query_<md5>/subset_allArticles_extractedData/`` (``subset_articlesWithCoords_...`` with
``--articles_with_coords_only``), one row per article or per peak, joined on ``pmcid``:

- ``text.csv``: pmcid, title, keywords, abstract, body. Keywords are separated by newlines.
  Section titles in abstract and body are lines of ``#`` marks (``##`` for a top-level
  section, one more per nesting level), a space and the title; paragraphs are separated by
  newlines.
- ``coordinates.csv``: pmcid, table_id, table_label, x, y, z (one row per peak).
- ``coordinate_space.csv``: pmcid, coordinate_space in {"MNI", "TAL", "UNKNOWN"} (a guess from
  the article text, Neurosynth's heuristic).
- ``tables.csv`` (recent pubget): pmcid, table_id, table_label, table_caption, table_foot, ...
  Older pubget only keeps captions in ``articles/<bucket>/pmcid_<pmcid>/tables/
  table_<n>_info.json`` (keys table_id, table_label, table_caption), next to the extracted data.
- ``metadata.csv`` (pmcid, pmid, doi, title, journal, publication_year, license), ``authors.csv``,
  ``links.csv``, ``info.json``: only ``metadata.csv``'s title is used, when text.csv has none.

Decisions (all counted in the corpus' skip report, so they show in its one warning):

- Article id = the PMC id as a string without the "PMC" prefix ("6759467"), as pubget writes it.
- Coordinate spaces: articles guessed MNI or UNKNOWN are kept as they are (most fMRI software
  reports MNI); Talairach (TAL) articles are skipped, peaks and all, since they would be
  misplaced by several mm (pass ``spaces=("MNI", "UNKNOWN", "TAL")`` to keep them anyway).
  A missing coordinate_space.csv means UNKNOWN for every article.
- Discussion: the text under every section heading containing the word "discussion" ("4.
  Discussion", "Results and discussion", ...) down to the next heading of the same or a higher
  level, subsection titles removed, split into paragraphs then into sentences with
  `split_sentences`. Articles without such a heading keep an empty discussion.
- Captions: from tables.csv, else from the articles directory (given, or found as the sibling
  ``articles`` folder); if neither exists, captions are empty.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterator
from os import PathLike
from pathlib import Path
from typing import Any

import pandas as pd

from text2brain.brain import BrainSpace
from text2brain.corpus.base import Article, Corpus, SkipReport
from text2brain.text import split_sentences

__all__ = ["load_pubget_corpus", "discussion_sentences", "clean_pubget_text"]

_PRODUCED_BY = (
    "it is written by `pubget extract_data <articles dir>` (run by `pubget run <data dir> -q "
    "<query>`); pass the `subset_*_extractedData` folder"
)
_HEADING = re.compile(r"^[ \t]*(#{2,})[ \t]+(.*?)\s*$")
_DISCUSSION = re.compile(r"\bdiscussions?\b", re.IGNORECASE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_TEXT_CHUNK_ROWS = 2000


def load_pubget_corpus(
    extracted_data_dir: str | PathLike,
    space: BrainSpace,
    name: str | None = None,
    articles_dir: str | PathLike | None = None,
    spaces: Collection[str] = ("MNI", "UNKNOWN"),
) -> Corpus:
    """A `Corpus` from pubget's extracted-data folder (layout and decisions: module docstring).

    `articles_dir` is pubget's ``articles`` folder, read for table captions only when the
    extracted data has no tables.csv (default: the ``articles`` folder next to
    `extracted_data_dir`, if there is one). `spaces` lists the coordinate spaces kept. `name`
    defaults to the folder's name. Raises FileNotFoundError naming a missing text.csv or
    coordinates.csv and ValueError naming a file that lacks a needed column.
    """
    data_dir = Path(extracted_data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"pubget extracted-data folder {str(data_dir)!r} does not exist; {_PRODUCED_BY}"
        )
    name = name if name is not None else data_dir.name
    keep_spaces = {s.upper() for s in spaces}
    report = SkipReport()

    coordinates_path = _required(data_dir, "coordinates.csv")
    text_path = _required(data_dir, "text.csv")
    coordinates = _read_coordinates(coordinates_path)
    with_peaks = set(coordinates["id"].dropna())

    article_space = _read_spaces(data_dir / "coordinate_space.csv")
    if article_space is None:
        report.add(
            "articles without a coordinate space (coordinate_space.csv missing; kept as UNKNOWN)",
            len(with_peaks),
        )
        article_space = {}
    dropped_space: dict[str, int] = {}
    for article_id in with_peaks:
        label = article_space.get(article_id, "UNKNOWN")
        if label not in keep_spaces:
            dropped_space[label] = dropped_space.get(label, 0) + 1
    for label, n in sorted(dropped_space.items()):
        report.add(f"articles with peaks in {label} space (spaces kept: {sorted(keep_spaces)})", n)
    skip_ids = {i for i in with_peaks if article_space.get(i, "UNKNOWN") not in keep_spaces}
    if skip_ids:
        coordinates = coordinates[~coordinates["id"].isin(skip_ids)]

    titles = _read_metadata_titles(data_dir / "metadata.csv")
    captions = _read_captions(data_dir, articles_dir, coordinates, report)

    articles: list[Article] = []
    n_no_discussion = 0
    for row in _iter_text(text_path):
        article_id = row["id"]
        if article_id in skip_ids:
            continue
        discussion = discussion_sentences(row["body"])
        if not discussion and article_id in with_peaks:
            n_no_discussion += 1
        articles.append(
            Article(
                id=article_id,
                title=clean_pubget_text(row["title"]) or titles.get(article_id, ""),
                keywords=_keywords(row["keywords"]),
                abstract=_abstract(row["abstract"]),
                discussion=tuple(discussion),
                table_captions=captions.get(article_id, {}),
            )
        )
    report.add(
        "articles with peaks but no Discussion section in text.csv (kept, discussion empty)",
        n_no_discussion,
    )
    return Corpus.build(name, articles, coordinates, space, skipped=report)


# -- text ----------------------------------------------------------------------------------------


def clean_pubget_text(text: str) -> str:
    """One line of prose from pubget text: whitespace collapsed, XSLT spacing artefacts fixed.

    pubget's stylesheet puts a space after every text node and drops citations, which leaves
    "word ." and "( )" behind; those are tidied so sentences split and read normally.
    """
    text = " ".join(str(text).split())
    text = re.sub(r"[(\[][\s,;–-]*[)\]]", "", text)  # brackets emptied by dropped citations
    text = re.sub(r"\s+([.,;:!?)\]])", r"\1", text)
    text = re.sub(r"([(\[])\s+", r"\1", text)
    return " ".join(text.split())


def discussion_sentences(body: str) -> list[str]:
    """Sentences of the body's discussion section(s), or [] if no heading names a discussion.

    A section starts at a heading line (``## Title``, more ``#`` for subsections) whose title
    contains "discussion" and runs to the next heading of the same or a higher level;
    subsection titles inside it are dropped. Several such sections are concatenated.
    """
    if not body or "#" not in body:
        return []
    collected: list[str] = []
    level = 0  # heading level of the discussion being collected, 0 when outside one
    for line in str(body).split("\n"):
        heading = _HEADING.match(line)
        if heading is None:
            if level:
                collected.append(line)
            continue
        depth = len(heading.group(1))
        if level and depth > level:
            collected.append("")  # a subsection title: drop it, keep a paragraph break
        elif _DISCUSSION.search(heading.group(2)):
            level = depth
            collected.append("")
        else:
            level = 0
    sentences: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split("\n".join(collected)):
        sentences.extend(split_sentences(clean_pubget_text(paragraph)))
    return sentences


def _abstract(text: str) -> str:
    """The abstract without its section-title lines (structured abstracts' "## Methods")."""
    lines = [line for line in str(text).split("\n") if not _HEADING.match(line)]
    return clean_pubget_text(" ".join(lines))


def _keywords(text: str) -> tuple[str, ...]:
    """pubget writes one keyword per line; ';' inside one is also treated as a separator."""
    parts = re.split(r"[\n;]", str(text))
    return tuple(k for k in (" ".join(p.split()) for p in parts) if k)


# -- files ---------------------------------------------------------------------------------------


def _required(data_dir: Path, file_name: str) -> Path:
    path = data_dir / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"{file_name} not found in pubget extracted-data folder {str(data_dir)!r}; "
            f"{_PRODUCED_BY}"
        )
    return path


def _header(path: Path) -> pd.Index:
    """A CSV's column names; an empty or unparsable file is an error naming it."""
    return _read_csv(path, nrows=0).columns


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """`pd.read_csv`, where a file that is not UTF-8 CSV is a ValueError naming it."""
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: Exception) -> ValueError:
    where = ""
    if isinstance(err, UnicodeDecodeError):
        with path.open("rb") as f:
            for number, line in enumerate(f, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    where = f" (line {number} is not UTF-8; pubget writes UTF-8)"
                    break
    reason = " ".join(str(err).split())[:200]
    return ValueError(f"{str(path)!r} is not a readable CSV file{where}: {reason}")


def _id_column(columns: Collection[str], path: Path) -> str:
    """pubget names the article column 'pmcid'; some versions write 'id' ('pmcid_123')."""
    for column in ("pmcid", "id"):
        if column in columns:
            return column
    raise ValueError(f"{str(path)!r} has no 'pmcid' column (columns: {list(columns)})")


def _normalise_ids(values: pd.Series) -> pd.Series:
    """PMC ids as strings without 'PMC' / 'pmcid_' prefixes or a float's '.0'."""
    ids = values.astype("string").str.strip()
    ids = ids.str.replace(r"^(?:pmcid_|PMC)", "", regex=True)
    return ids.str.replace(r"^(\d+)\.0+$", r"\1", regex=True)


def _check_columns(path: Path, columns: Collection[str], needed: Collection[str]) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks column(s) {missing} (columns: {list(columns)}); is it a "
            "pubget extract_data output?"
        )


def _read_coordinates(path: Path) -> pd.DataFrame:
    header = _header(path)
    id_column = _id_column(header, path)
    _check_columns(path, header, ("table_id", "x", "y", "z"))
    df = _read_csv(
        path,
        usecols=[id_column, "table_id", "x", "y", "z"],
        dtype={id_column: str, "table_id": str},
    )
    return pd.DataFrame(
        {
            "id": _normalise_ids(df[id_column]).astype(object),
            "table_id": df["table_id"].str.strip().astype(object),
            "x": df["x"],
            "y": df["y"],
            "z": df["z"],
        }
    )


def _read_spaces(path: Path) -> dict[str, str] | None:
    if not path.is_file():
        return None
    header = _header(path)
    id_column = _id_column(header, path)
    _check_columns(path, header, ("coordinate_space",))
    df = _read_csv(path, usecols=[id_column, "coordinate_space"], dtype=str)
    ids = _normalise_ids(df[id_column]).fillna("")
    labels = df["coordinate_space"].fillna("UNKNOWN").str.strip().str.upper()
    return dict(zip(ids, labels, strict=True))


def _read_metadata_titles(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    header = _header(path)
    if "title" not in header:
        return {}
    id_column = _id_column(header, path)
    df = _read_csv(path, usecols=[id_column, "title"], dtype=str, keep_default_na=False)
    return {
        i: clean_pubget_text(t)
        for i, t in zip(_normalise_ids(df[id_column]).fillna(""), df["title"], strict=True)
        if t.strip()
    }


def _iter_text(path: Path) -> Iterator[dict[str, str]]:
    """text.csv rows in chunks, so a large corpus' bodies never all sit in memory at once."""
    header = _header(path)
    id_column = _id_column(header, path)
    fields = ("title", "keywords", "abstract", "body")
    present = [c for c in fields if c in header]
    reader = _read_csv(
        path,
        usecols=[id_column, *present],
        dtype=str,
        keep_default_na=False,
        chunksize=_TEXT_CHUNK_ROWS,
    )
    while True:
        try:
            chunk = next(reader)
        except StopIteration:
            return
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise _unreadable(path, err) from err
        ids = _normalise_ids(chunk[id_column]).fillna("")
        columns = {c: chunk[c].tolist() if c in chunk else [""] * len(chunk) for c in fields}
        for i, article_id in enumerate(ids.tolist()):
            yield {"id": article_id, **{c: columns[c][i] for c in fields}}


def _read_captions(
    data_dir: Path,
    articles_dir: str | PathLike | None,
    coordinates: pd.DataFrame,
    report: SkipReport,
) -> dict[str, dict[str, str]]:
    """{article id: {table id: caption}} for the tables that have peaks."""
    tables = coordinates[["id", "table_id"]].dropna().drop_duplicates()
    wanted: dict[str, set[str]] = {}
    for article_id, table_id in zip(tables["id"], tables["table_id"], strict=True):
        wanted.setdefault(str(article_id), set()).add(str(table_id))

    found: dict[str, dict[str, str]] = {}
    tables_csv = data_dir / "tables.csv"
    if tables_csv.is_file():
        header = _header(tables_csv)
        id_column = _id_column(header, tables_csv)
        _check_columns(tables_csv, header, ("table_id", "table_caption"))
        df = _read_csv(
            tables_csv,
            usecols=[id_column, "table_id", "table_caption"],
            dtype=str,
            keep_default_na=False,
        )
        for article_id, table_id, caption in zip(
            _normalise_ids(df[id_column]).fillna(""),
            df["table_id"],
            df["table_caption"],
            strict=True,
        ):
            _add_caption(found, wanted, article_id, table_id, caption)
        return found

    folder = Path(articles_dir) if articles_dir is not None else data_dir.parent / "articles"
    if not folder.is_dir():
        if articles_dir is not None:
            raise FileNotFoundError(f"pubget articles folder {str(folder)!r} does not exist")
        report.add(
            "tables without a caption (no tables.csv and no pubget articles folder found)",
            len(tables),
        )
        return found
    for article_id in wanted:
        bucket = hashlib.md5(article_id.encode("utf-8")).hexdigest()[:3]
        tables_dir = folder / bucket / f"pmcid_{article_id}" / "tables"
        for info_file in sorted(tables_dir.glob("table_*_info.json")):
            try:
                info = json.loads(info_file.read_text("utf-8"))
            except (OSError, ValueError):
                report.add("unreadable table info files (captions left empty)", 1)
                continue
            if isinstance(info, dict):
                _add_caption(
                    found, wanted, article_id, info.get("table_id"), info.get("table_caption")
                )
    return found


def _add_caption(
    found: dict[str, dict[str, str]],
    wanted: dict[str, set[str]],
    article_id: str,
    table_id: object,
    caption: object,
) -> None:
    if not isinstance(table_id, str) or not isinstance(caption, str):
        return
    table_id = table_id.strip()
    if table_id in wanted.get(article_id, ()):
        text = clean_pubget_text(caption)
        if text:
            found.setdefault(article_id, {})[table_id] = text
