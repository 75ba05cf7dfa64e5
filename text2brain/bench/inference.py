"""Inference latency of a checkpoint: cold start of `text2brain query`, one query, batches.

Prints the time to load a predictor, the median latency of one query (warm), batched
throughput, the wall time of a whole `text2brain query` command (a new process: imports,
loading, one map written) and the peak memory.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from text2brain.bench.machine import describe_machine, peak_rss_gb
from text2brain.inference import load_predictor

QUERIES = [
    "self-generated thought",
    "task-unrelated thought",
    "default network",
    "2-back vs 0-back",
    "move tongue",
    "working memory",
    "fear of faces in the amygdala",
    "reward anticipation in the ventral striatum",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m text2brain.bench inference", description=__doc__
    )
    parser.add_argument(
        "--ckpt",
        default=None,
        help="checkpoint or export folder (default: the released model)",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-batched", type=int, default=512)
    args = parser.parse_args(argv)
    print(f"machine: {describe_machine()}")

    start = time.perf_counter()
    predictor = load_predictor(args.ckpt, device=args.device, precision=args.precision)
    print(f"load_predictor: {time.perf_counter() - start:.2f} s ({predictor})")
    predictor.predict_vectors(QUERIES[:2])  # warm-up: tokenizer, kernels

    single = []
    for i in range(30):
        start = time.perf_counter()
        predictor.predict_vectors([QUERIES[i % len(QUERIES)]])
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        single.append(time.perf_counter() - start)
    print(f"one query, warm: median {statistics.median(single) * 1e3:.1f} ms")

    texts = [QUERIES[i % len(QUERIES)] + f" {i}" for i in range(args.n_batched)]
    start = time.perf_counter()
    predictor.predict_vectors(texts, batch_size=args.batch_size)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(
        f"batched: {len(texts) / elapsed:.0f} queries/s "
        f"({len(texts)} queries, batch {args.batch_size})"
    )
    print(f"peak RSS: {peak_rss_gb():.2f} GB")

    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "text2brain", "query", QUERIES[0], "-o", out]
        if args.ckpt is not None:
            command += ["--ckpt", args.ckpt]
        for png in (False, True):
            start = time.perf_counter()
            subprocess.run(command + ["--png"] * png, check=True, capture_output=True)
            print(
                f"cold `text2brain query` (new process, one map{' and its PNG' * png}): "
                f"{time.perf_counter() - start:.2f} s"
            )


if __name__ == "__main__":
    main()
