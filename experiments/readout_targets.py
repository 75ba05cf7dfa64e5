"""Validation Dice-AUC of Text2Brain's ridge readout alone, over target transforms and penalties.

The readout is fitted in closed form at fit start (text2brain.models.text2brain); with the
decoder's zero-initialised output layer the model then predicts the training mean map plus
the readout, so this measures what the closed form gives before any step. Each row fits the
readout on the training titles (frozen MiniLM, from the embedding cache) and scores the
validation titles; selection happens here, on validation; the test split is not read.

    python experiments/readout_targets.py --transforms none sqrt power:0.25 power:0.1 \
        --alphas loo 0.01 0.03 0.1 0.3 1 --ranks 32 64 full

Prints one row per (transform, penalty) and the machine; writes the table as CSV (--out).
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml

from text2brain.bench.machine import describe_machine
from text2brain.data import TextMapDataModule
from text2brain.models.text2brain import Text2Brain

REPO = Path(__file__).resolve().parents[1]


def readout_score(
    data: TextMapDataModule, init_args: dict, transform: str, alpha: float | None
) -> tuple[float, float]:
    """(validation Dice-AUC, seconds) of the readout alone."""
    model = Text2Brain(**{**init_args, "target_transform": transform, "readout_alpha": alpha})
    trainer = L.Trainer(
        accelerator="cpu",
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=0,  # on_fit_start fits the mean map and the readout; no step
        max_epochs=1,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*limit_train_batches=0.*")
        trainer.fit(model, datamodule=data)
        (metrics,) = trainer.validate(model, datamodule=data, verbose=False)
    return metrics["val/dice_auc"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "configs/model/text2brain.yaml"))
    parser.add_argument("--transforms", nargs="+", default=["none", "sqrt", "power:0.25"])
    parser.add_argument("--alphas", nargs="+", default=["loo"], help="'loo' or relative penalties")
    parser.add_argument(
        "--ranks",
        nargs="+",
        default=None,
        help="readout ranks ('full' or ints; default: the config's)",
    )
    parser.add_argument("--out", default=None, help="CSV file for the table")
    args = parser.parse_args()

    torch.set_float32_matmul_precision("highest")
    init_args = yaml.safe_load(Path(args.model).read_text()).get("init_args", {})
    data = TextMapDataModule(batch_size=64, num_workers=0)
    print(describe_machine())
    print(f"{'transform':>12} {'alpha':>8} {'rank':>5} {'val Dice-AUC':>13} {'seconds':>8}")
    rows = []
    for rank_arg in args.ranks or [str(init_args.get("readout_rank"))]:
        rank = None if rank_arg in ("full", "None") else int(rank_arg)
        for transform in args.transforms:
            for alpha_arg in args.alphas:
                alpha = None if alpha_arg == "loo" else float(alpha_arg)
                ranked = {**init_args, "readout_rank": rank}
                score, seconds = readout_score(data, ranked, transform, alpha)
                print(
                    f"{transform:>12} {alpha_arg:>8} {rank_arg:>5} {score:13.4f} {seconds:8.1f}",
                    flush=True,
                )
                rows.append(
                    {"transform": transform, "alpha": alpha_arg, "rank": rank_arg, "val": score}
                )
    if args.out:
        with open(args.out, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
