"""`text2brain compare FILE`: fit or load the models of a comparison file, score them, report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from text2brain.compare.report import log_to_wandb, write_report
from text2brain.compare.scoring import (
    hierarchy_scores,
    retrieval_scores,
    score_predictor,
    test_texts,
)
from text2brain.compare.spec import fit_config, load_spec
from text2brain.errors import add_debug_option


def run_comparison(spec: Mapping[str, Any], wandb_group: str | None = None) -> dict[str, Path]:
    """Fit / load every model, score them on the test split, write the outputs; their paths."""
    from text2brain.data import TextMapDataModule
    from text2brain.inference import load_predictor

    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    datamodule = TextMapDataModule(**{**spec["data"], "tokenizer": None})
    ids, texts, targets = test_texts(datamodule)

    predictors, scores = {}, []
    for name, model in spec["models"].items():
        source = model["source"]
        if source.endswith((".yaml", ".yml")):
            source = fit_config(source, model["args"], spec["data"], out_dir / "fits" / name)
        elif model["args"]:
            raise ValueError(f"model {name!r}: args only apply to a config, not {source!r}")
        predictor = load_predictor(source, device="cpu")
        predictors[name] = predictor
        scores.append(score_predictor(name, source, predictor, texts, targets))
        scores[-1].retrieval = retrieval_scores(predictor, texts, targets)
        scores[-1].hierarchy = hierarchy_scores(predictor, datamodule)

    table, paths = write_report(out_dir, scores, predictors, spec["queries"], ids, texts)
    if wandb_group:
        log_to_wandb(wandb_group, table, paths)
    return paths


def compare(argv: list[str] | None = None) -> None:
    """`text2brain compare FILE` (the `COMMANDS` entry of text2brain.cli)."""
    parser = argparse.ArgumentParser(
        prog="text2brain compare",
        description="Fit or load the models of a comparison file and score them side by side "
        "on one test split (see text2brain.compare).",
    )
    parser.add_argument("spec", help="comparison file (YAML): out_dir, data, models, queries")
    parser.add_argument("--out-dir", default=None, help="override the file's out_dir")
    parser.add_argument(
        "--wandb-group", default=None, help="also log the table and figures to wandb"
    )
    add_debug_option(parser)
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except ValueError as err:
        print(f"text2brain compare: error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.out_dir:
        spec["out_dir"] = Path(args.out_dir)
    paths = run_comparison(spec, args.wandb_group)
    print(paths["results.md"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
