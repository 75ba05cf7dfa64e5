"""A query run's output folder: its index (queries.tsv), who owns it, and writing the maps."""

from __future__ import annotations

import contextlib
import csv
import glob
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from text2brain.errors import Interrupted
from text2brain.outputs import atomic_output, remove_stale_temporaries
from text2brain.query.pictures import write_html, write_png
from text2brain.query.texts import check_queries, file_stems

if TYPE_CHECKING:
    from text2brain.inference import Predictor

#: Show a progress bar from this many queries on.
PROGRESS_FROM = 11
INDEX_FILE = "queries.tsv"
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
    # Maps a killed run left outside the index count too, so an appended map never meets one.
    names = [name for name, _ in previous] + [f"{stem}.nii.gz" for stem in unlisted_maps(out_dir)]
    numbers = [int(_MAP_NAME.fullmatch(name)[1]) for name in names]
    first = 0 if existing == "overwrite" else 1 + max(numbers, default=-1)
    stems = file_stems(queries, first)
    if existing != "overwrite":
        taken = next((p for s in stems if (p := out_dir / f"{s}.nii.gz").exists()), None)
        if taken is not None:
            raise FolderInUse(out_dir, taken)
    return previous, stems


def unlisted_maps(out_dir: Path) -> list[str]:
    """Stems of the maps in a folder with an index that the index does not list: what a run
    killed between writing a map and its index entry leaves."""
    listed = read_index(out_dir)
    if listed is None:
        return []
    names = {name for name, _ in listed}
    return sorted(
        path.name.removesuffix(".nii.gz")
        for path in out_dir.glob("*.nii.gz")
        if _MAP_NAME.fullmatch(path.name) and path.name not in names
    )


def _remove_run_files(out_dir: Path, stems: Sequence[str]) -> None:
    """Delete each stem's map, pictures and --meta-analysis files."""
    from text2brain.interop.meta import META_FILE

    for stem in stems:
        for suffix in (".nii.gz", ".png", ".html"):
            (out_dir / f"{stem}{suffix}").unlink(missing_ok=True)
        for meta in out_dir.glob(f"{glob.escape(stem)}_*"):
            if META_FILE.fullmatch(meta.name.removeprefix(stem)):
                meta.unlink()


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
    The index (queries.tsv) is rewritten after every map, and a map whose entry could not be
    written is removed again, so it lists exactly the maps in the folder even when the run
    stops half-way (a full disk, Ctrl-C).

    A folder holding a previous run's index is one run's output: `existing` "refuse" (default)
    raises FileExistsError, "overwrite" first deletes the files that index lists (and the maps
    a killed run left unlisted), "append" keeps them and numbers the new maps after theirs.

    Every query is checked before any map is written (`check_queries`: ValueError listing
    them all); queries of mostly unknown tokens get one `UnknownTokensWarning`, or fail the
    check under `strict`.
    """
    from text2brain.inference import UnknownTokensWarning
    from text2brain.text import MAX_QUERY_CHARS, check_texts

    queries = check_texts(queries, max_chars=MAX_QUERY_CHARS)
    out_dir = Path(out_dir)
    previous, stems = plan_outputs(out_dir, queries, existing)
    unknown = check_queries(predictor, queries, strict=strict)
    if unknown:
        warnings.warn("; ".join(unknown), UnknownTokensWarning, stacklevel=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    if existing == "overwrite":  # the listed maps and those a killed run left unlisted
        earlier = [name.removesuffix(".nii.gz") for name, _ in previous]
        _remove_run_files(out_dir, earlier + unlisted_maps(out_dir))
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
                written += _write_one(out_dir, stem, query, image, png, html, rows)
                bar(1)
    except KeyboardInterrupt as err:  # what was written, in one line (text2brain.errors)
        raise Interrupted(
            f"wrote {len(rows) - len(previous)} of {len(queries)} map(s) to {out_dir}/, each "
            f"whole and listed in {index}; add the rest with --append"
        ) from err
    finally:
        bar(0, close=True)
    written.append(index)
    return written


def _write_one(
    out_dir: Path,
    stem: str,
    query: str,
    image: Any,
    png: bool,
    html: bool,
    rows: list[tuple[str, str]],
) -> list[Path]:
    """A query's map (and pictures) and its index entry, as one unit: when any step fails
    (a full disk, Ctrl-C) before the index lists the map, its files are removed again, so the
    folder holds exactly the maps its index lists. Appends the entry to `rows`."""
    path = out_dir / f"{stem}.nii.gz"
    files = [path]
    indexed = False
    try:
        with atomic_output(path) as tmp:
            image.to_filename(tmp)
        if png:
            files.append(write_png(image, query, out_dir / f"{stem}.png"))
        if html:
            files.append(write_html(image, query, out_dir / f"{stem}.html"))
        _write_index(out_dir / INDEX_FILE, [*rows, (path.name, query)])
        indexed = True
    finally:
        if not indexed:
            for file in files:
                with contextlib.suppress(OSError):
                    file.unlink(missing_ok=True)
    rows.append((path.name, query))
    return files


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
