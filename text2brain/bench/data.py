"""Training step time of a Text2Brain head: with and without the embedding cache, per precision.

Trains the head of a model config (default: the released model's settings, frozen MiniLM) for
a few steps on NeuroQuery with the shared data module, once per variant, in one process:

- precision: 32-true, and bf16-mixed where the CPU has native bf16 (AVX512-BF16 or AMX) or a
  GPU runs the bench; `--variants` names others (bf16-mixed on a CPU without native bf16 is
  emulated: expect it to be tens of times slower);
- embedding cache off (the frozen encoder runs at every step, as before the cache) and on.

For each it reports Lightning's mean training step, the loader wait and the throughput; then
the bare model step (forward, backward and AdamW on one fixed batch, no Lightning, no loader)
split into text encoder (or cache lookup), decoder with readout and loss, backward and optimizer.
The first run's setup (mean map, readout fit, building the cache when missing) is timed apart;
later runs reuse the fitted readout. Ratios are against the first variant, which is today's
default step before the cache (cache off, bf16-mixed where native, else 32-true).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.profilers import SimpleProfiler

from text2brain.bench.machine import describe_machine, peak_rss_gb
from text2brain.data import TextMapDataModule
from text2brain.models.text2brain import Text2Brain
from text2brain.precision import cpu_bf16

RELEASE_CONFIG = "configs/model/text2brain-release.yaml"


def profiled_means(profiler: SimpleProfiler) -> dict[str, float]:
    return {
        name: sum(durations) / len(durations)
        for name, durations in profiler.recorded_durations.items()
        if durations
    }


def bare_step(model: Text2Brain, batch: dict, precision: str, steps: int = 10) -> dict:
    """Median seconds of forward + backward + AdamW on one batch, without Lightning ("total"),
    and of its phases: text features (encoder or cache), decoder + loss, backward, optimizer.
    """
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    marks: dict[str, float] = {}
    text_features = model.text_features

    def timed_features(batch: dict[str, Any]) -> torch.Tensor:
        marks["text0"] = time.perf_counter()
        features = text_features(batch)
        marks["text1"] = time.perf_counter()
        return features

    model.text_features = timed_features
    phases: dict[str, list[float]] = {
        "text features": [],
        "decoder + readout forward, loss": [],
        "backward": [],
        "optimizer step": [],
        "total": [],
    }
    try:
        for _ in range(steps + 2):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = model.training_loss(batch)["loss"]
            forward = time.perf_counter()
            loss.backward()
            backward = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            end = time.perf_counter()
            text_time = marks["text1"] - marks["text0"]
            phases["text features"].append(text_time)
            phases["decoder + readout forward, loss"].append(forward - start - text_time)
            phases["backward"].append(backward - forward)
            phases["optimizer step"].append(end - backward)
            phases["total"].append(end - start)
    finally:
        del model.text_features
    return {name: statistics.median(times[2:]) for name, times in phases.items()}


def model_from_config(path: str | None) -> Text2Brain:
    """The Text2Brain head of a model config (class_path + init_args), or the defaults."""
    if path is None:
        return Text2Brain()
    config = yaml.safe_load(Path(path).read_text())
    if not str(config.get("class_path", "")).endswith("Text2Brain"):
        raise SystemExit(f"{path}: bench data times the Text2Brain head; got {config!r:.80}")
    return Text2Brain(**config.get("init_args", {}))


def run_variant(
    model: Text2Brain, data: TextMapDataModule, precision: str, cache: bool, steps: int
) -> dict[str, float]:
    """One profiled fit of `steps` steps: the mean step, the loader wait, the fit-start setup."""
    model.text_settings = dataclasses.replace(model.text_settings, embedding_cache=cache)
    model.text_cache = None
    # The per-hook table goes to a file in the run folder, not the terminal.
    profiler = SimpleProfiler(
        dirpath=tempfile.mkdtemp(prefix="text2brain-bench-"), filename="profile"
    )
    trainer = L.Trainer(
        max_steps=steps,
        limit_val_batches=0,
        precision=precision,
        profiler=profiler,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    means = profiled_means(profiler)
    return {
        "step": means["run_training_batch"],
        "wait": next(v for k, v in means.items() if k.endswith("train_dataloader_next")),
        "setup": means.get("[LightningModule]Text2Brain.on_fit_start", 0.0),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m text2brain.bench data", description=__doc__)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="PRECISION:CACHE",
        help="runs to time, e.g. bf16-mixed:off 32-true:on (default: 32-true, plus "
        "bf16-mixed where native, each with the cache off and on)",
    )
    parser.add_argument("--model", default=RELEASE_CONFIG, help="model config YAML (Text2Brain)")
    args = parser.parse_args(argv)

    print(f"machine: {describe_machine()}")
    fast_bf16 = cpu_bf16()[0] or torch.cuda.is_available()
    precisions = ["bf16-mixed", "32-true"] if fast_bf16 else ["32-true"]
    variants = [
        (precision, cache == "on")
        for precision, _, cache in (v.partition(":") for v in args.variants or [])
    ] or [(precision, cache) for precision in precisions for cache in (False, True)]
    L.seed_everything(0, verbose=False)
    data = TextMapDataModule(
        data_dir=args.data_dir, batch_size=args.batch_size, num_workers=args.num_workers
    )
    model = model_from_config(args.model)
    print(
        f"{args.model}: batch {args.batch_size}, {args.steps} steps a run, "
        f"{args.num_workers} loader workers; text encoder frozen: "
        f"{model.text_settings.freeze_embeddings and model.text_settings.freeze_layers}"
    )
    rows = []
    for precision, cache in variants:
        result = run_variant(model, data, precision, cache, args.steps)
        print(
            f"{precision}, cache {'on' if cache else 'off'}: fit start {result['setup']:.1f} s"
            + (f" ({len(model.text_cache):,} cached texts)" if model.text_cache else "")
        )
        model.fit_readout = lambda: None  # fitted in the first run; the step is the same
        batch = next(iter(data.train_dataloader()))
        parts = bare_step(model.cpu(), batch, precision)
        rows.append({"precision": precision, "cache": cache, **result, "parts": parts})
    reference = rows[0]["step"] + rows[0]["wait"]
    print(
        "\n| precision | cache | step | loader wait | samples/s | vs first | bare step: "
        "text / decoder+loss / backward / optimizer |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        whole = row["step"] + row["wait"]
        parts = row["parts"]
        print(
            f"| {row['precision']} | {'on' if row['cache'] else 'off'} "
            f"| {row['step'] * 1e3:.0f} ms | {row['wait'] * 1e3:.1f} ms "
            f"| {args.batch_size / whole:.1f} | {reference / whole:.2f}x "
            f"| {parts['total'] * 1e3:.0f} ms: "
            + " / ".join(f"{parts[name] * 1e3:.0f}" for name in list(parts) if name != "total")
            + " ms |"
        )
    print(f"peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
