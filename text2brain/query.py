"""`text2brain query`: brain maps for free-text queries, written as NIfTI files.

```bash
text2brain query "working memory" "move the tongue" --ckpt best.ckpt -o maps/ --png --html
text2brain query --queries-file queries.txt --ckpt best.ckpt -o maps/   # one query a line
text2brain query "working memory" --ckpt clip.ckpt --related -k 5   # nearest training articles
text2brain query --describe map.nii.gz --ckpt mnm.ckpt               # decode a map
```

`--related` and `--describe` (heads with a shared text-brain space: clip, mnm) print a
tab-separated table (query or map, rank, article_id, distance, title, keywords) on stdout.

Each query gives `<NNN>_<slug>.nii.gz` (the number keeps the input order and makes names
unique; the slug is the query, lowercased, other characters than a-z and 0-9 as "_", at most
60 characters), on request a glass-brain PNG and an interactive HTML viewer beside it, and
`queries.tsv` lists which file holds which query (slugs lose characters). Pictures are opt-in
because rendering takes far longer than predicting.

An output folder belongs to one run: a folder with a previous run's `queries.tsv` is refused
unless `--overwrite` (its listed files are deleted first) or `--append` (new maps numbered
after its own). Every file is written under a temporary name and renamed into place, and the
index is rewritten after every map, so an interrupted or failing run leaves whole maps that
its index lists.

This module imports nothing heavy at import time: `text2brain --help` must stay instant.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from text2brain.errors import add_debug_option
from text2brain.outputs import atomic_output, write_text

if TYPE_CHECKING:
    from text2brain.inference import Predictor

#: Longest slug of a query in a file name (the number prefix comes on top).
SLUG_LENGTH = 60
#: Show a progress bar from this many queries on.
PROGRESS_FROM = 11
#: Longest query shown as a picture's title.
TITLE_LENGTH = 80
INDEX_FILE = "queries.tsv"
#: numpy's note on nilearn's automatic threshold of a masked map (harmless, once per picture).
_MASKED_PARTITION = ".*'partition' will ignore the 'mask'"


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


#: Bad queries listed in one error message.
_LISTED = 10


#: How `write_query_maps` treats a folder that holds a previous run's index.
EXISTING = ("refuse", "overwrite", "append")
_MAP_NAME = re.compile(r"(\d{3,})_[a-z0-9_]+\.nii\.gz")


def read_index(out_dir: str | Path) -> list[tuple[str, str]] | None:
    """The (file, query) rows of the folder's queries.tsv, or None when it has none.

    Raises ValueError when the file is not an index `write_query_maps` wrote, since its rows
    name the files that --overwrite deletes.
    """
    index = Path(out_dir) / INDEX_FILE
    if not index.is_file():
        return None
    try:
        with index.open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{str(index)!r} is not a text2brain query index: {err}") from err
    bad = next(
        (
            n
            for n, row in enumerate(rows[1:], 2)
            if len(row) != 2 or not _MAP_NAME.fullmatch(row[0])
        ),
        None,
    )
    if not rows or rows[0] != ["file", "query"] or bad is not None:
        where = f" (row {bad})" if bad is not None else ""
        raise ValueError(
            f"{str(index)!r} is not a text2brain query index{where}; move it away or choose "
            "another output folder"
        )
    return [(row[0], row[1]) for row in rows[1:]]


class FolderInUse(FileExistsError):
    """The output folder holds a previous run's maps and neither overwrite nor append was asked.

    `message` words the way out for the caller: API arguments or command-line flags.
    """

    def __init__(self, folder: Path, taken: Path | None = None) -> None:
        self.folder, self.taken = folder, taken
        super().__init__(self.message("existing='overwrite'", "existing='append'"))

    def message(self, overwrite: str, append: str) -> str:
        if self.taken is not None:
            return (
                f"{str(self.taken)!r} exists (in a folder without {INDEX_FILE}); pass "
                f"{overwrite} to replace such files, or choose another folder"
            )
        return (
            f"output folder {str(self.folder)!r} holds the maps of a previous run (listed in "
            f"its {INDEX_FILE}); pass {overwrite} to replace them or {append} to add to them"
        )


def plan_outputs(
    out_dir: Path, queries: Sequence[str], existing: str = "refuse"
) -> tuple[list[tuple[str, str]], list[str]]:
    """(previous run's index rows, file stems of the new maps), or FolderInUse before any write.

    The new maps are numbered after the previous run's when appending; without an index, a
    folder may hold other files but not one of the names about to be written (unless
    overwriting).
    """
    if existing not in EXISTING:
        raise ValueError(f"existing must be one of {list(EXISTING)}, got {existing!r}")
    previous = read_index(out_dir)
    if previous is not None and existing == "refuse":
        raise FolderInUse(out_dir)
    previous = previous or []
    numbers = [int(_MAP_NAME.fullmatch(name)[1]) for name, _ in previous]
    first = 0 if existing == "overwrite" else 1 + max(numbers, default=-1)
    stems = file_stems(queries, first)
    if existing != "overwrite":
        taken = next((p for s in stems if (p := out_dir / f"{s}.nii.gz").exists()), None)
        if taken is not None:
            raise FolderInUse(out_dir, taken)
    return previous, stems


def write_query_maps(
    predictor: Predictor,
    queries: Sequence[str],
    out_dir: str | Path,
    png: bool = False,
    html: bool = False,
    batch_size: int = 64,
    progress: bool | None = None,
    existing: str = "refuse",
    strict: bool = False,
) -> list[Path]:
    """Predict and write one map per query (plus PNG / HTML on request); returns the files.

    Queries are predicted batch by batch and written as they come, so memory stays at one
    batch of maps whatever the number of queries. `progress` None: a bar from 11 queries on.
    The index (queries.tsv) is rewritten after every map, so it lists exactly the maps in the
    folder even when the run stops half-way.

    A folder holding a previous run's index is one run's output: `existing` "refuse" (default)
    raises FileExistsError, "overwrite" first deletes the files that index lists, "append"
    keeps them and numbers the new maps after theirs.

    Every query is checked before any map is written (`check_queries`: ValueError listing
    them all); queries of mostly unknown tokens get one `UnknownTokensWarning`, or fail the
    check under `strict`.
    """
    from text2brain.inference import UnknownTokensWarning
    from text2brain.text import check_texts

    queries = check_texts(queries)
    out_dir = Path(out_dir)
    previous, stems = plan_outputs(out_dir, queries, existing)
    unknown = check_queries(predictor, queries, strict=strict)
    if unknown:
        warnings.warn("; ".join(unknown), UnknownTokensWarning, stacklevel=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    if existing == "overwrite":
        for name, _ in previous:
            stem = name.removesuffix(".nii.gz")
            for suffix in (".nii.gz", ".png", ".html"):
                (out_dir / f"{stem}{suffix}").unlink(missing_ok=True)
        previous = []
    rows = list(previous)
    index = out_dir / INDEX_FILE
    _write_index(index, rows)
    written: list[Path] = []
    show = len(queries) >= PROGRESS_FROM if progress is None else progress
    bar = _progress_bar(len(queries), show)
    try:
        for start in range(0, len(queries), batch_size):
            batch = queries[start : start + batch_size]
            try:
                with warnings.catch_warnings():  # warned above, for all queries at once
                    warnings.simplefilter("ignore", UnknownTokensWarning)
                    images = predictor.predict_maps(batch, batch_size=batch_size)
            except ValueError as err:  # "texts[i]" counts within this batch
                shifted = re.sub(
                    r"texts\[(\d+)\]", lambda m, s=start: f"texts[{s + int(m[1])}]", str(err)
                )
                raise ValueError(shifted) from err
            for query, stem, image in zip(batch, stems[start:], images, strict=False):
                path = out_dir / f"{stem}.nii.gz"
                with atomic_output(path) as tmp:
                    image.to_filename(tmp)
                written.append(path)
                rows.append((path.name, query))
                _write_index(index, rows)
                if png:
                    written.append(_write_png(image, query, out_dir / f"{stem}.png"))
                if html:
                    written.append(_write_html(image, query, out_dir / f"{stem}.html"))
                bar(1)
    finally:
        bar(0, close=True)
    written.append(index)
    return written


def _write_index(index: Path, rows: Sequence[tuple[str, str]]) -> None:
    """queries.tsv (file, query), replaced whole: a reader never sees half of it."""
    with atomic_output(index) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["file", "query"])
        writer.writerows(rows)


def _progress_bar(total: int, show: bool) -> Callable[..., None]:
    """`update(n, close=False)` of a tqdm bar on stderr, or a no-op."""
    if not show:
        return lambda n, close=False: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="query", file=sys.stderr)

    def update(n: int, close: bool = False) -> None:
        bar.update(n)
        if close:
            bar.close()

    return update


def _title(query: str) -> str:
    return query if len(query) <= TITLE_LENGTH else query[: TITLE_LENGTH - 3] + "..."


def _write_png(image: Any, query: str, path: Path) -> Path:
    """A glass-brain view, drawn on a figure of its own (`new_figure`: no GUI, no leak)."""
    from nilearn import plotting

    from text2brain.figures import new_figure

    figure = new_figure((8, 3))
    with warnings.catch_warnings():
        # Harmless and repeated for every picture: glyphs (CJK, emoji) that the default font
        # lacks in a title, and the masked-array note.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        warnings.filterwarnings("ignore", message=_MASKED_PARTITION)
        plotting.plot_glass_brain(
            image, figure=figure, title=_title(query), plot_abs=False, colorbar=True
        )
        with atomic_output(path) as tmp:
            figure.savefig(tmp, dpi=100)
    figure.clear()
    return path


def _write_html(image: Any, query: str, path: Path) -> Path:
    """An interactive slice viewer: a standalone HTML page, no server needed.

    Written from `get_standalone()`: nilearn 0.14's `save_as_html` writes the page wrapped in
    an <iframe srcdoc=...> fragment instead of the page itself.
    """
    from nilearn import plotting

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MASKED_PARTITION)
        view = plotting.view_img(image, title=_title(query))
    return write_text(path, view.get_standalone())


# -- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="text2brain query",
        description="Predict a brain map for each text query and write it as NIfTI "
        "(<NNN>_<query>.nii.gz), with optional PNG and HTML views; with a contrastive head, "
        "list the training articles nearest to queries (--related) or to maps (--describe).",
    )
    parser.add_argument("queries", nargs="*", metavar="QUERY", help="text queries")
    parser.add_argument(
        "--queries-file",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="files of more queries, one a line (UTF-8; blank lines skipped; - reads stdin)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse queries made mostly of tokens unknown to the tokenizer (default: warn)",
    )
    parser.add_argument(
        "--ckpt",
        default=None,
        help="checkpoint written by `text2brain fit` (default: the released model)",
    )
    parser.add_argument(
        "-o", "--out-dir", default=None, help="folder to write the maps to (no maps without it)"
    )
    owner = parser.add_mutually_exclusive_group()
    owner.add_argument(
        "--overwrite",
        action="store_true",
        help="the output folder holds a previous run's maps: delete the files its queries.tsv "
        "lists, then write",
    )
    owner.add_argument(
        "--append",
        action="store_true",
        help="the output folder holds a previous run's maps: keep them, number the new maps "
        "after theirs and extend queries.tsv",
    )
    parser.add_argument("--png", action="store_true", help="also write a glass-brain PNG")
    parser.add_argument("--html", action="store_true", help="also write an interactive HTML")
    parser.add_argument(
        "--batch-size", type=_positive_int, default=64, metavar="N", help="texts per forward pass"
    )
    parser.add_argument(
        "--related",
        action="store_true",
        help="print the training articles nearest each query (contrastive heads: clip, mnm)",
    )
    parser.add_argument(
        "--describe",
        nargs="+",
        default=[],
        metavar="NIFTI",
        help="print the training articles nearest each NIfTI map, on the model's grid "
        "(contrastive heads: clip, mnm)",
    )
    parser.add_argument(
        "-k",
        "--top",
        type=_positive_int,
        default=10,
        metavar="K",
        help="articles listed per query or map (default: 10)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto (default: bf16 autocast on GPUs and CPUs with native bf16, fp16 on older "
        "CUDA GPUs, else fp32), fp32, or bf16/fp16 autocast (fp16 needs CUDA)",
    )
    add_debug_option(parser)
    return parser


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2, as argparse does for usage errors."""
    print(f"text2brain query: error: {' '.join(message.splitlines())}", file=sys.stderr)
    sys.exit(2)


def query(argv: list[str] | None = None) -> None:
    """`text2brain query` (the `COMMANDS` entry of text2brain.cli)."""
    args = build_parser().parse_args(argv)
    queries = list(args.queries)
    labels = [f"query {i}" for i in range(1, len(queries) + 1)]
    for source in args.queries_file:
        try:
            from_file, blank = read_queries(source)
        except (OSError, ValueError) as err:
            _fail(f"cannot read queries file {source!r}: {err}")
        if blank:
            print(f"skipped {blank} blank line(s) in {source}", file=sys.stderr)
        queries += [text for _, text in from_file]
        labels += [f"{source} line {n}" for n, _ in from_file]
    if not queries and not args.describe:
        _fail(
            "no query given: pass queries as arguments or with --queries-file (or maps to "
            "describe with --describe)"
        )
    if queries and args.out_dir is None and not args.related:
        _fail(
            "nothing to do with the queries: give -o/--out-dir to write their maps, or "
            "--related to list related training articles"
        )
    out_dir = None if args.out_dir is None else Path(args.out_dir)
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        _fail(f"output folder {str(out_dir)!r} exists and is not a folder")
    existing = "overwrite" if args.overwrite else "append" if args.append else "refuse"
    if out_dir is not None and queries and out_dir.is_dir():
        try:  # before the model loads: a refused folder should fail at once
            plan_outputs(out_dir, queries, existing)
        except FolderInUse as err:
            _fail(err.message("--overwrite", "--append"))
        except ValueError as err:
            _fail(str(err))

    from text2brain.inference import UnknownTokensWarning, load_predictor

    predictor = load_predictor(args.ckpt, device=args.device, precision=args.precision)
    for line in check_queries(predictor, queries, labels, args.strict):  # all at once
        print(f"text2brain query: warning: {line}", file=sys.stderr)
    with warnings.catch_warnings():  # the lines above said it, naming files and lines
        warnings.simplefilter("ignore", UnknownTokensWarning)
        if out_dir is not None and queries:
            written = write_query_maps(
                predictor,
                queries,
                out_dir,
                args.png,
                args.html,
                args.batch_size,
                existing=existing,
                strict=args.strict,
            )
            _report_maps(written, out_dir)
        if args.related and queries:
            found = [(q, predictor.related_articles(q, args.top)) for q in queries]
            print_articles(found, "query")
    if args.describe:
        found = [(m, predictor.describe_map(m, args.top)) for m in args.describe]
        print_articles(found, "map")


#: Columns of the article tables that --related and --describe print (after the query / map).
ARTICLE_COLUMNS = ("rank", "article_id", "distance", "title", "keywords")


def print_articles(found: Sequence[tuple[str, Sequence[Any]]], first: str) -> None:
    """A tab-separated table on stdout: one row per (query or map, related article)."""
    writer = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
    writer.writerow([first, *ARTICLE_COLUMNS])
    for source, articles in found:
        for rank, article in enumerate(articles, start=1):
            writer.writerow(
                [
                    source,
                    rank,
                    article.article_id,
                    f"{article.distance:.4g}",
                    article.title,
                    "; ".join(article.keywords),
                ]
            )


def _report_maps(written: list[Path], out_dir: Path) -> None:
    maps = [p for p in written if p.name.endswith(".nii.gz")]
    extras = [p for p in written if p.suffix in (".png", ".html")]
    print(
        f"wrote {len(maps)} map(s)"
        + (f" and {len(extras)} picture(s)" if extras else "")
        + f" to {out_dir}/ (index: {out_dir / INDEX_FILE})"
    )
    if len(maps) <= 10:
        for path in written[:-1]:
            print(f"  {path}")
