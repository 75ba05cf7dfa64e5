"""Is the data pipeline ever what a training step waits for? Lightning's profiler says.

Trains the default Text2Brain model (bundled MiniLM, bf16 autocast) for a few steps on
NeuroQuery with the shared data module and reports, from `SimpleProfiler`, the mean time the
loop waited for the next batch against the mean time of a whole training step; then times the
bare model (forward, backward, optimizer step on one fixed batch, no Lightning, no loader) in
the same process as the reference the whole step is compared with, and how that bare step
splits into text encoder forward, decoder (and readout) forward with the loss, backward and
optimizer step.

`--model configs/model/text2brain-release.yaml` benches the released model's settings (frozen
encoder) instead of the head's defaults.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.profilers import SimpleProfiler

from text2brain.bench.machine import describe_machine, peak_rss_gb
from text2brain.data import TextMapDataModule
from text2brain.models.text2brain import Text2Brain


def profiled_means(profiler: SimpleProfiler) -> dict[str, float]:
    return {
        name: sum(durations) / len(durations)
        for name, durations in profiler.recorded_durations.items()
        if durations
    }


def bare_step(model: Text2Brain, batch: dict, precision: str, steps: int = 10) -> dict:
    """Median seconds of forward + backward + AdamW on one batch, without Lightning ("total"),
    and of its phases: encoder forward, decoder + loss, backward, optimizer step.

    The encoder is timed by hooks around its forward, so the step runs the head's own loss.
    """
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    encoder = model.net.text_encoder
    marks: dict[str, float] = {}
    hooks = [
        encoder.register_forward_pre_hook(lambda *_: marks.update(enc0=time.perf_counter())),
        encoder.register_forward_hook(lambda *_: marks.update(enc1=time.perf_counter())),
    ]
    phases: dict[str, list[float]] = {
        "text encoder forward": [],
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
            encoder_time = marks["enc1"] - marks["enc0"]
            phases["text encoder forward"].append(encoder_time)
            phases["decoder + readout forward, loss"].append(forward - start - encoder_time)
            phases["backward"].append(backward - forward)
            phases["optimizer step"].append(end - backward)
            phases["total"].append(end - start)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: statistics.median(times[2:]) for name, times in phases.items()}


def model_from_config(path: str | None) -> Text2Brain:
    """The Text2Brain head of a model config (class_path + init_args), or the defaults."""
    if path is None:
        return Text2Brain()
    config = yaml.safe_load(Path(path).read_text())
    if not str(config.get("class_path", "")).endswith("Text2Brain"):
        raise SystemExit(f"{path}: bench data times the Text2Brain head; got {config!r:.80}")
    return Text2Brain(**config.get("init_args", {}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m text2brain.bench data", description=__doc__)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--model", default=None, help="model config YAML (a Text2Brain head)")
    args = parser.parse_args(argv)

    print(f"machine: {describe_machine()}")
    L.seed_everything(0, verbose=False)
    data = TextMapDataModule(
        data_dir=args.data_dir, batch_size=args.batch_size, num_workers=args.num_workers
    )
    profiler = SimpleProfiler()
    trainer = L.Trainer(
        max_steps=args.steps,
        limit_val_batches=0,
        precision=args.precision,
        profiler=profiler,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    model = model_from_config(args.model)
    trainer.fit(model, datamodule=data)
    wall = time.perf_counter() - start
    means = profiled_means(profiler)
    wait = next(v for k, v in means.items() if k.endswith("train_dataloader_next"))
    step = means["run_training_batch"]
    print(
        f"{args.steps} steps at batch {args.batch_size}, {args.precision}, "
        f"{args.num_workers} loader workers ({wall:.0f} s with setup)"
    )
    print(f"mean training step (forward+backward+optimizer): {step * 1e3:.0f} ms")
    print(f"mean wait for the next batch: {wait * 1e3:.1f} ms = {wait / step:.1%} of a step")
    batch = next(iter(data.train_dataloader()))
    parts = bare_step(model.cpu(), batch, args.precision)
    bare = parts.pop("total")
    print(
        f"bare model step (same batch size, no Lightning, no loader): {bare * 1e3:.0f} ms; "
        f"whole training step / bare = {(step + wait) / bare:.2f}"
    )
    print(
        "bare step breakdown: "
        + ", ".join(f"{name} {seconds * 1e3:.0f} ms" for name, seconds in parts.items())
    )
    samples_per_s = args.batch_size / (step + wait)
    print(f"throughput: {samples_per_s:.1f} samples/s; peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
