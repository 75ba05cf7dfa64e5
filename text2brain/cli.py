"""The `text2brain` command.

- `text2brain fit|validate|test|predict -c configs/text2brain.yaml`: LightningCLI over every
  model of the zoo and the shared data module (configs/ has model/, data/ and trainer/ parts).
- `text2brain prepare`: fetch and verify a corpus, build (or check) its split and render its
  article maps into the cache, so later training and evaluation start at once.
- `text2brain compare FILE`: models side by side on one test split (text2brain.compare).
- `text2brain export CKPT -o FOLDER`: weights (safetensors) + JSON config for release
  (text2brain.export); `text2brain query` and `load_predictor` read the folder.
- `text2brain serve`: a local page and JSON/HTTP API over the models (text2brain.serve; the
  `web` extra).
"""

from __future__ import annotations

import argparse
import sys
import time

from text2brain.errors import DEBUG_FLAG, add_debug_option, corpus_file_errors, run_command
from text2brain.query import query


def prepare(argv: list[str]) -> None:
    """Fetch and verify a corpus, build (or check) its split and render its maps into the cache.

    Later training and evaluation then start at once.
    """
    from text2brain.data import TextMapDataModule

    parser = argparse.ArgumentParser(prog="text2brain prepare", description=prepare.__doc__)
    parser.add_argument(
        "--corpus", default="neuroquery", help="neuroquery, a .jsonl file or a pubget folder"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="NeuroQuery files folder (default: $TEXT2BRAIN_DATA_DIR or cache)",
    )
    parser.add_argument(
        "--mask", default=None, help="NIfTI brain mask (default: NeuroQuery's 4 mm mask)"
    )
    parser.add_argument("--split-file", default=None, help="split JSON to use or create")
    parser.add_argument("--fwhm", type=float, default=9.0)
    add_debug_option(parser)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    data = TextMapDataModule(
        corpus=args.corpus,
        data_dir=args.data_dir,
        mask=args.mask,
        split_file=args.split_file,
        fwhm=args.fwhm,
        tokenizer=None,
    )
    data.prepare_data()
    data.setup()
    for stage in ("train", "val", "test"):
        data.article_maps(stage)
    stats = ", ".join(f"{k} {v:,}" for k, v in data.split.stats.items())
    print(
        f"corpus {data.corpus.name!r}: {len(data.corpus):,} articles on a {data.space.shape} grid"
    )
    print(f"split: {stats}")
    print(f"ready in {time.perf_counter() - start:.1f} s")


def compare(argv: list[str]) -> None:
    """`text2brain compare` (imported on use, so that `query` does not load its imports)."""
    from text2brain.compare import compare as run_compare

    run_compare(argv)


def export(argv: list[str]) -> None:
    """`text2brain export` (imported on use: it needs torch, `--help` of the rest does not)."""
    from text2brain.export import export as run_export

    run_export(argv)


def serve(argv: list[str]) -> None:
    """`text2brain serve` (imported on use: the web extra is optional)."""
    from text2brain.serve.cli import serve as run_serve

    run_serve(argv)


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def lightning(argv: list[str]) -> None:
    """Run a LightningCLI subcommand with the zoo's models and the shared data module."""
    from text2brain.run_watch import TrainingDiverged
    from text2brain.training import ConfigError, run_lightning_cli

    def stops_in_one_line(err: BaseException) -> bool:
        """A bad configuration, a missing or corrupt corpus file (found when the run prepares
        its data) or a diverged training; anything else that stops a run keeps its traceback."""
        return isinstance(err, (ConfigError, TrainingDiverged, *corpus_file_errors()))

    def run(args: list[str]) -> None:
        run_lightning_cli([argv[0], *(arg for arg in args if arg != DEBUG_FLAG)])

    run_command(argv[0], run, argv[1:], user_error=stops_in_one_line)


COMMANDS = {
    "prepare": prepare,
    "query": query,
    "compare": compare,
    "export": export,
    "serve": serve,
}

#: One line per command, for `text2brain --help`.
SUMMARIES = {
    "fit": "train a model (LightningCLI, e.g. -c configs/text2brain.yaml)",
    "validate": "score a model on the validation split",
    "test": "score a model on the keyword-disjoint test split",
    "predict": "predict the test split's maps",
    "prepare": "fetch a corpus, build its split and render its maps into the cache",
    "query": "brain maps for text queries (NIfTI, PNG, HTML); related articles of a text or map",
    "compare": "models side by side on one test split",
    "export": "a checkpoint as safetensors weights + JSON config, for release",
    "serve": "a local web page and JSON/HTTP API: query box, brain viewer, downloads",
}


def usage() -> str:
    """The usage line and every command with its summary."""
    commands = "\n".join(f"  {name:<10}{summary}" for name, summary in SUMMARIES.items())
    return (
        f"usage: text2brain {{{'|'.join(SUMMARIES)}}} [options]\n\n"
        "Free-form neuroscience text -> 3D brain activation maps, and back.\n\n"
        f"commands:\n{commands}\n\n"
        "text2brain COMMAND --help shows the options of a command."
    )


def main(argv: list[str] | None = None) -> None:
    """Dispatch to a command; usage errors exit with status 2, as argparse's do."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command in LIGHTNING_COMMANDS:
        lightning(argv)
    elif command in COMMANDS:
        run_command(command, COMMANDS[command], argv[1:])
    elif command in ("-h", "--help"):
        print(usage())
    else:
        if command is not None:
            print(f"text2brain: unknown command {command!r}", file=sys.stderr)
        print(usage(), file=sys.stderr)
        sys.exit(2)
