"""Inference latency of a checkpoint: cold start of `text2brain query`, one query, batches.

Prints the time to load a predictor, the median latency of one query (warm), batched
throughput, the peak memory, the stages of a cold query (each timed in a new process: the
imports of torch, tokenizers, text2brain's inference, nibabel and the PNG plotting, loading the
model, the first query, writing the NIfTI and the PNG), and the median wall time of whole
`text2brain query` commands with and without --png.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from text2brain.bench.machine import describe_machine, peak_rss_gb
from text2brain.inference import load_predictor

#: A cold query, stage by stage, run in a new process; prints "stage<TAB>seconds" lines.
COLD_STAGES = """
import sys, time
from pathlib import Path
last = time.perf_counter()
def done(stage):
    global last
    now = time.perf_counter()
    print(f"{stage}\t{now - last:.3f}")
    last = now
import torch; done("import torch")
import tokenizers, safetensors.torch; done("import tokenizers + safetensors")
import text2brain.query.pictures, text2brain.inference; done("import text2brain inference")
import nibabel; done("import nibabel")
predictor = text2brain.inference.load_predictor(sys.argv[1] or None)  # "": the released model
done("load the model")
image = predictor.predict_maps([sys.argv[2]])[0]; done("first query")
out = Path(sys.argv[3])
image.to_filename(out / "map.nii.gz"); done("write the NIfTI")
from nilearn import plotting; from text2brain import figures; done("import nilearn plotting")
text2brain.query.pictures.write_png(image, sys.argv[2], out / "map.png"); done("draw the PNG")
"""

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
    parser.add_argument("--cold-runs", type=int, default=5, help="new processes per cold timing")
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
        print_cold_start(args.ckpt, out, args.cold_runs)


def print_cold_start(ckpt: str | None, out: str, runs: int) -> None:
    """Median stages of a cold query, then median wall times of whole query commands."""
    stages: dict[str, list[float]] = {}
    for _ in range(runs):
        command = [sys.executable, "-c", COLD_STAGES, ckpt or "", QUERIES[0], out]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        for line in result.stdout.splitlines():
            stage, seconds = line.split("\t")
            stages.setdefault(stage, []).append(float(seconds))
    print(f"cold query by stage (new processes, median of {runs}):")
    for stage, times in stages.items():
        print(f"  {stage:32s} {statistics.median(times):.2f} s")
    command = [sys.executable, "-m", "text2brain", "query", QUERIES[0]]
    if ckpt is not None:
        command += ["--ckpt", ckpt]
    for png in (False, True):
        walls = []
        for run in range(runs):
            # A new output folder each time, as a user's first query (a used one is refused).
            folder = ["-o", str(Path(out) / f"{'png' if png else 'map'}-{run}")]
            start = time.perf_counter()
            subprocess.run(command + folder + ["--png"] * png, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
        print(
            f"cold `text2brain query` (new process, one map{' and its PNG' * png}): median "
            f"{statistics.median(walls):.2f} s of {runs} (min {min(walls):.2f} s)"
        )


if __name__ == "__main__":
    main()
