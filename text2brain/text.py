"""Plain-text helpers shared by corpus loaders and the text sampler."""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Lower-cased tokens ending in "." after which a sentence never ends. Single-letter dotted
#: sequences such as "e.g.", "i.e." or "U.S." are recognised by pattern, not listed here.
ABBREVIATIONS = frozenset(
    {
        "al.", "approx.", "ca.", "cf.", "ch.", "co.", "dr.", "eq.", "eqs.", "fig.", "figs.",
        "inc.", "jr.", "ltd.", "mr.", "mrs.", "ms.", "no.", "nos.", "pp.", "prof.", "ref.",
        "refs.", "resp.", "sec.", "sect.", "sr.", "st.", "suppl.", "tab.", "vol.", "vs.",
    }
)  # fmt: skip
_DOTTED_INITIALS = re.compile(r"^(?:[A-Za-z]\.){2,}$")
# End punctuation, optional closing quotes/brackets, whitespace, then (after an optional
# opening bracket or quote) an uppercase letter or a digit.
_BOUNDARY = re.compile(r"[.!?][\"')\]]*\s+(?=[(\[\"']?[A-Z0-9])")
_LAST_TOKEN = re.compile(r"\S+$")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences with a few transparent rules (no model, no dependency).

    Whitespace runs are collapsed to one space. A sentence ends at ``.``, ``!`` or ``?``
    (optionally followed by closing quotes or brackets) when whitespace and then an uppercase
    letter or a digit (possibly after an opening bracket or quote) follow. It does not end after
    a known abbreviation (`ABBREVIATIONS`: "et al.", "Fig.", "vs.", ...) or a dotted sequence of
    single letters ("e.g.", "i.e."). Lower-case continuations never start a sentence, so
    "approx. three" or "e.g. the" stay whole without being listed.
    """
    text = " ".join(str(text).split())
    if not text:
        return []
    sentences = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.start() + 1  # just after the end punctuation
        if text[match.start()] == ".":
            token = _LAST_TOKEN.search(text, start, end)
            word = token.group(0).lstrip("([\"'").lower() if token else ""
            if word in ABBREVIATIONS or _DOTTED_INITIALS.match(word):
                continue
        piece = text[start : match.end()].strip()
        if piece:
            sentences.append(piece)
        start = match.end()
    last = text[start:].strip()
    if last:
        sentences.append(last)
    return sentences


#: Longest query a user may give (the CLI, the Python API and the server), in characters. The
#: encoders read at most a few hundred tokens anyway, and a longer text is tokenised whole first:
#: a 100 MB one-line query took 11 GB of memory before this limit.
MAX_QUERY_CHARS = 1000


def too_long(text: str, max_chars: int = MAX_QUERY_CHARS) -> str | None:
    """Why a query is too long (the words for a message), or None when it is not."""
    if len(text) <= max_chars:
        return None
    return f"is too long: {len(text):,} characters, at most {max_chars:,}"


def check_texts(
    texts: Iterable[str], allow_empty: bool = True, max_chars: int | None = None
) -> list[str]:
    """The texts as a list, or an error naming the first bad one (before any model work).

    `max_chars` bounds each text's length (user queries: `MAX_QUERY_CHARS`; None for corpus
    texts such as abstracts, which the tokenizer cuts at the model's token limit).
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"texts must be a list of str, got a single {type(texts).__name__}; pass [text] "
            "(wrap a single text in a list) to predict one map"
        )
    if not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    texts = list(texts)
    if not texts and not allow_empty:
        raise ValueError("texts is empty")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty or whitespace-only ({text!r})")
        if "\x00" in text:  # tokenizers drop it silently: a sign of a binary or broken input
            raise ValueError(f"texts[{i}] contains a NUL character ({quoted(text)})")
        if max_chars is not None and (why := too_long(text, max_chars)):
            raise ValueError(f"texts[{i}] ({quoted(text)}) {why}")
    return texts


def quoted(text: str, width: int = 40) -> str:
    """A text for a message: its repr (control characters visible), cut to about `width`."""
    return repr(text if len(text) <= width else text[: width - 3] + "...")
