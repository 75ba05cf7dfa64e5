"""Queries as text: their file-name slugs, queries files, and the checks before any map."""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from text2brain.inference import Predictor

#: Longest slug of a query in a file name (the number prefix comes on top).
SLUG_LENGTH = 60
#: Bad queries listed in one error message.
_LISTED = 10


def slugify(text: str, max_length: int = SLUG_LENGTH) -> str:
    """File-name-safe ASCII form of a query: "Schmerz über X" -> "schmerz_uber_x".

    Accents are dropped rather than replaced ("über" -> "uber") so names stay readable; a query
    with no ASCII letter or digit becomes "query" (the number prefix keeps names unique).
    """
    spaced = " ".join(text.split())  # any whitespace separates words (U+2028 too)
    ascii_text = unicodedata.normalize("NFKD", spaced).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")
    return slug[:max_length].rstrip("_") or "query"


def file_stems(queries: Sequence[str], first: int = 0) -> list[str]:
    """`000_slug`, `001_slug`, ... from `first` on: input order, unique even when slugs collide."""
    width = max(3, len(str(first + len(queries) - 1)))
    return [f"{i:0{width}d}_{slugify(q)}" for i, q in enumerate(queries, start=first)]


def read_queries(source: str | Path) -> tuple[list[tuple[int, str]], int]:
    """(line number, query) of a UTF-8 file (or stdin for "-"), and the number of blank lines.

    Lines end at "\\n" or "\\r\\n" only: other characters that `str.splitlines` breaks at
    (form feed, U+2028, ...) belong to the query. A UTF-8 byte order mark is skipped; text that
    is not UTF-8 is an error naming the file and the line.
    """
    if str(source) == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
    else:
        data = Path(source).read_bytes()
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise ValueError(
                f"queries file {str(source)!r} is not UTF-8 text (line {line}: {err.reason}); "
                "save it as UTF-8"
            ) from err
    lines = data.split("\n")
    if lines and not lines[-1]:
        lines.pop()  # the end of the last line
    queries = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    return queries, len(lines) - len(queries)


def check_queries(
    predictor: Predictor,
    queries: Sequence[str],
    labels: Sequence[str] = (),
    strict: bool = False,
) -> list[str]:
    """Check every query before any map is written; warnings (one line each) to show.

    Raises ValueError listing every bad query by its label (default texts[i]) and text:
    empty, with a NUL character, without tokens, or (with `strict`) mostly tokens unknown to
    the tokenizer, which otherwise is a warning.
    """
    from text2brain.inference import MOSTLY_UNKNOWN
    from text2brain.text import quoted

    names = list(labels) or [f"texts[{i}]" for i in range(len(queries))]
    problems = {}
    for i, text in enumerate(queries):
        if not isinstance(text, str):
            raise TypeError(f"{names[i]} must be a str, got {type(text).__name__}")
        if not text.strip():
            problems[i] = "is empty or whitespace-only"
        elif "\x00" in text:
            problems[i] = "contains a NUL character (a binary file?)"
    rest = [i for i in range(len(queries)) if i not in problems]
    counts = predictor.token_counts([queries[i] for i in rest]) if rest else None
    warned = []
    for i, (words, unknown) in zip(rest, counts or [], strict=counts is not None):
        if not words:
            problems[i] = "gives no tokens (only control or special characters?)"
        elif unknown / words >= MOSTLY_UNKNOWN:
            why = f"has {unknown} of its {words} tokens unknown to the tokenizer ([UNK])"
            if strict:
                problems[i] = f"{why} (strict)"
            else:
                warned.append(
                    f"{names[i]} ({quoted(queries[i])}) {why}: its map says little about it"
                )
    if problems:
        listed = [f"{names[i]} ({quoted(queries[i])}) {why}" for i, why in sorted(problems.items())]
        shown = listed[:_LISTED] + (
            [f"and {len(listed) - _LISTED} more"] if len(listed) > _LISTED else []
        )
        raise ValueError(
            f"{len(problems)} bad quer{'y' if len(problems) == 1 else 'ies'}, nothing written: "
            + "; ".join(shown)
        )
    return warned
