"""`text2brain query`: its options, the run from arguments to files, and the article tables."""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from text2brain.errors import add_debug_option
from text2brain.query.files import INDEX_FILE, FolderInUse, plan_outputs, write_query_maps
from text2brain.query.texts import check_queries, read_queries
from text2brain.releases import UnknownReleaseError, describe_releases, resolve_release
from text2brain.text import too_long as too_long_text

#: `--meta-analysis` choices (text2brain.interop.nimare.ESTIMATORS, not imported at start).
ESTIMATOR_CHOICES = ("ale", "mkda")
#: Default -k: articles listed (--related, --describe), studies meta-analysed.
LISTED, META_STUDIES = 10, 50


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="text2brain query",
        description="Predict a brain map for each text query and write it as NIfTI "
        "(<NNN>_<query>.nii.gz), with optional PNG and HTML views; with a head that keeps its "
        "training articles, list those nearest to queries (--related: clip, mnm, retrieval) "
        "or to maps (--describe: clip, mnm).",
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
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--ckpt",
        default=None,
        help="checkpoint written by `text2brain fit`, or an export folder (default: the "
        "released default model)",
    )
    which.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="a released model, by its name or its head's name (mnm-minilm, or mnm); "
        "installed: " + describe_releases().replace("%", "%%"),
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
        help="print the training articles nearest each query (heads with a bank of articles: "
        "clip, mnm, retrieval)",
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
        default=None,
        metavar="K",
        help="articles listed per query or map (default: 10), or studies meta-analysed per "
        "query (default: 50)",
    )
    meta = parser.add_argument_group(
        'meta-analysis of retrieved studies (needs: pip install "text2brain[nimare]")'
    )
    meta.add_argument(
        "--meta-analysis",
        choices=list(ESTIMATOR_CHOICES),
        default=None,
        help="run NiMARE's ALE or MKDA density over the K studies the model retrieves for "
        "each query, and write the corrected z map, the thresholded map, its PNG and the "
        "study list beside the query's map (-o, default: the current folder)",
    )
    meta.add_argument(
        "--correction",
        choices=["fdr", "fwe"],
        default="fdr",
        help="fdr (default) or Monte-Carlo voxel-level fwe",
    )
    meta.add_argument(
        "--n-iters",
        type=_positive_int,
        default=None,
        metavar="N",
        help="Monte-Carlo iterations of --correction fwe (default: NiMARE's, 5000)",
    )
    meta.add_argument(
        "--alpha", type=float, default=0.05, help="corrected p threshold (default: 0.05)"
    )
    meta.add_argument(
        "--n-cores",
        type=int,
        default=1,
        metavar="N",
        help="cores NiMARE may use (default: 1; -1: all)",
    )
    meta.add_argument(
        "--corpus",
        default=None,
        metavar="SPEC",
        help="where the studies and their peaks come from: a .jsonl file or a pubget folder "
        "(default: the NeuroQuery corpus at $TEXT2BRAIN_DATA_DIR, its training articles)",
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
    too_long = [
        f"{label} {why}"
        for label, q in zip(labels, queries, strict=True)
        if (why := too_long_text(q))
    ]
    if too_long:
        more = f" (and {len(too_long) - 3} more)" if len(too_long) > 3 else ""
        _fail(f"{'; '.join(too_long[:3])}{more}; shorten the queries, nothing was written")
    if not queries and not args.describe:
        _fail(
            "no query given: pass queries as arguments or with --queries-file (or maps to "
            "describe with --describe)"
        )
    if args.meta_analysis is None and args.corpus is not None:
        _fail("--corpus is for --meta-analysis")
    if args.meta_analysis is not None:
        if not queries:
            _fail("--meta-analysis needs queries")
        if args.n_iters is not None and args.correction != "fwe":
            _fail("--n-iters counts Monte-Carlo iterations: it needs --correction fwe")
        if not 0 < args.alpha < 1:
            _fail(f"--alpha must be in (0, 1), got {args.alpha}")
        if args.n_cores == 0 or args.n_cores < -1:
            _fail(f"--n-cores must be a positive integer or -1, got {args.n_cores}")
        from text2brain.errors import MissingExtraError
        from text2brain.interop.nimare import require_nimare

        try:  # before the model loads
            require_nimare("--meta-analysis")
        except MissingExtraError as err:
            _fail(str(err))
        if args.out_dir is None:
            args.out_dir = "."
    if queries and args.out_dir is None and not args.related:
        _fail(
            "nothing to do with the queries: give -o/--out-dir to write their maps, or "
            "--related to list related training articles"
        )
    try:  # a released model by name; --ckpt is always a path, never a name
        model = resolve_release(args.model) if args.model else args.ckpt and Path(args.ckpt)
    except UnknownReleaseError as err:
        _fail(f"--model {args.model!r}: {err}")
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

    predictor = load_predictor(model, device=args.device, precision=args.precision)
    for line in check_queries(predictor, queries, labels, args.strict):  # all at once
        print(f"text2brain query: warning: {line}", file=sys.stderr)
    corpus = None
    if args.meta_analysis is not None:  # every option checked before any file is written
        corpus = _check_meta_k(predictor, args)
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
            if args.meta_analysis is not None:
                stems = [
                    p.name.removesuffix(".nii.gz")
                    for p in written
                    if p.suffixes[-2:] == [".nii", ".gz"]
                ]
                _meta_analyses(predictor, queries, stems, out_dir, args, corpus)
        if args.related and queries:
            found = [(q, predictor.related_articles(q, args.top or LISTED)) for q in queries]
            print_articles(found, "query")
    if args.describe:
        found = [(m, predictor.describe_map(m, args.top or LISTED)) for m in args.describe]
        print_articles(found, "map")


def _check_meta_k(predictor: Any, args: argparse.Namespace) -> Any:
    """--meta-analysis's -k against the studies there are to retrieve (it used to fail after
    the maps were written); the --corpus, loaded here once, or None."""
    from text2brain.interop.meta import studies_available

    corpus = None
    if args.corpus is not None:
        from text2brain.corpus import load_corpus

        corpus = load_corpus(args.corpus, predictor.space)
    k = args.top or META_STUDIES
    available = studies_available(predictor, corpus)
    if available is not None and k > available:
        _fail(
            f"-k {k} is more than the {available:,} studies there are to meta-analyse; ask "
            f"for at most {available}, nothing was written"
        )
    return corpus


def _meta_analyses(
    predictor: Any,
    queries: list[str],
    stems: list[str],
    out_dir: Path,
    args: argparse.Namespace,
    corpus: Any,
) -> None:
    """--meta-analysis: each query's studies meta-analysed, its files written beside its map."""
    from text2brain.interop.meta import write_meta_analysis

    for query, stem in zip(queries, stems, strict=True):
        result = predictor.meta_analysis(
            query,
            args.top or META_STUDIES,
            args.meta_analysis,
            args.correction,
            corpus=corpus,
            alpha=args.alpha,
            n_iters=args.n_iters,
            n_cores=args.n_cores,
        )
        paths = write_meta_analysis(result, out_dir, stem)
        print(
            f"{query!r}: {result.settings['estimator']} of {len(result.studies)} studies "
            f"({result.retrieval}), {result.correction_label}: {result.n_significant:,} "
            f"significant voxels, Dice with the learned map {result.dice:.3f}"
        )
        for path in paths:
            print(f"  {path}")


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
