"""Size of a contrastive release: a CLIP or MNM head exported with a full training bank.

A release of a contrastive head carries its retrieval bank (ids, titles, keywords, peaks and
embeddings of every training article), so its size is mostly the bank's, and the bank's size
does not depend on the weights. This builds the head with random weights and its text encoder
frozen as a release has it (`--frozen-layers`), gives it the bank of the data module's
training split (NeuroQuery by default: 10,086 articles), embeds the bank, saves a checkpoint as
`text2brain fit` does, runs `text2brain export` on it, loads the export back and prints the
size of each part and the load and first-retrieval times.

```bash
python -m text2brain.bench export --model mnm [--out-dir FOLDER] [--data-dir PATH]
```
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from text2brain.bench.machine import describe_machine, peak_rss_gb
from text2brain.checkpoint import SECTION_PREFIX, STATE_PREFIX
from text2brain.data import TextMapDataModule
from text2brain.export import export_checkpoint
from text2brain.inference import load_predictor
from text2brain.models import model_class
from text2brain.models.contrastive.bank import training_bank


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m text2brain.bench export", description=__doc__)
    parser.add_argument("--model", choices=["clip", "mnm"], default="mnm")
    parser.add_argument("--data-dir", default=None, help="NeuroQuery folder (default: as fit)")
    parser.add_argument("--out-dir", default=None, help="keep the checkpoint and export here")
    parser.add_argument(
        "--frozen-layers", type=int, default=6, help="frozen encoder layers (MiniLM: 6, all)"
    )
    args = parser.parse_args(argv)
    print(describe_machine())
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(args.out_dir) if args.out_dir else Path(tmp))


def run(args: argparse.Namespace, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = TextMapDataModule(data_dir=args.data_dir, tokenizer=None)
    data.setup()
    bank = training_bank(data)
    print(f"bank of the training split: {len(bank):,} articles, {len(bank.maps.xyz):,} peaks "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip

    torch.manual_seed(0)
    text = {"freeze_embeddings": True, "freeze_layers": args.frozen_layers}
    model = model_class(args.model)(text=text)
    model.set_space(data.space)
    model.bank = bank
    start = time.perf_counter()
    model.refresh_bank()
    print(f"embedded the bank's maps in {time.perf_counter() - start:.1f} s")

    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "epoch": 0,
        "global_step": 0,
    }
    model.on_save_checkpoint(checkpoint)
    ckpt_path = out / f"{args.model}.ckpt"
    torch.save(checkpoint, ckpt_path)
    folder = out / f"{args.model}-export"
    summary = export_checkpoint(ckpt_path, folder, overwrite=True)
    print(summary.describe())
    report_sizes(folder, ckpt_path)

    start = time.perf_counter()
    predictor = load_predictor(folder, device="cpu")
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    predictor.related_articles("working memory", k=10)
    first = time.perf_counter() - start
    print(f"load the export: {loaded:.2f} s; first related_articles: {first:.2f} s "
          f"(the bank is not embedded again); peak RSS {peak_rss_gb():.1f} GB")  # fmt: skip


def report_sizes(folder: Path, ckpt_path: Path) -> None:
    """The export's files and the bytes of each kind of tensor in its weights file."""
    from safetensors import safe_open

    parts: dict[str, int] = defaultdict(int)
    with safe_open(folder / "model.safetensors", "pt") as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensor = weights.get_tensor(key)
            size = tensor.numel() * tensor.element_size()
            if key.startswith(SECTION_PREFIX + "bank/"):
                parts[f"bank {key.removeprefix(SECTION_PREFIX + 'bank/')} ({tensor.dtype})"] += size
            elif key.startswith(STATE_PREFIX):
                parts["weights (state dict, text encoder left out)"] += size
            else:
                parts[f"other {key}"] += size
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    print(f"checkpoint {ckpt_path.stat().st_size / 1e6:.1f} MB; export {total / 1e6:.2f} MB:")
    for path in sorted(folder.iterdir()):
        print(f"  {path.name}: {path.stat().st_size / 1e6:.2f} MB")
    for name, size in sorted(parts.items()):
        print(f"    {name}: {size / 1e6:.2f} MB")
    config = json.loads((folder / "model.json").read_text())
    left_out = len((config.get("base_encoder") or {}).get("keys", []))
    print(f"  base-encoder tensors left out: {left_out}")
