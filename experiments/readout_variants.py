"""Validation Dice-AUC of text -> map readouts on frozen MiniLM embeddings, and of learned parts
on top of them, with wall time: the tables of issue 13 (checkpoints/README.md).

    python experiments/readout_variants.py sources      # which training texts the ridge reads
    python experiments/readout_variants.py learned      # MLP / linear heads after the ridge
    python experiments/readout_variants.py ensemble     # ridge + nearest-article retrieval

`sources`: the rank-32 ridge readout (text2brain.models.ridge, power-0.1 targets over the mean
map) fitted on the training titles, then also on each article's keywords (each keyword a text,
or all joined in one) and abstract, each text paired with its article's map; penalty by
leave-one-out and at fixed relative values. `learned`: on the readout's residual, a linear map
or an MLP (LayerNorm, 1024 GELU, dropout 0.5) predicting the coefficients of the residual's
top 128 principal maps (a decoder in a low-rank basis of training maps), zero-initialised so
it starts at the readout; and an MLP readout alone (no ridge; top 256 maps). AdamW 1e-3, batch
64, validation after epochs 1-16. `ensemble`: the title ridge of `sources`' default row
(titles + keyword lists + abstracts, relative penalty 0.3), retrieval (the softmax(cos / T)-
weighted mean of the k nearest training texts' power-0.1 maps, over a bank of titles, or of
titles, keyword lists and abstracts), the fitted NeuroQuery-style head of
`checkpoints/neuroquery/best.ckpt` (if there), each alone and z-scored in weighted sums on a
grid of step 0.1. Selection happens on validation; the test split is not read.
Embeddings are computed once into --work (bf16 autocast where the CPU has native bf16).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from text2brain.bench.machine import describe_machine
from text2brain.checkpoint import load_model
from text2brain.data import TextMapDataModule
from text2brain.metrics import dice_auc_from_curve, dice_curve
from text2brain.models.contrastive.retrieval import retrieval_weights
from text2brain.models.embedding_cache import length_batches
from text2brain.models.encoders import TextEncoder
from text2brain.models.ensemble import normalise_maps, simplex_grid
from text2brain.models.ridge import RELATIVE_ALPHAS, fit_ridge
from text2brain.models.targets import transform_targets
from text2brain.precision import cpu_bf16


def embed(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    """Mean-pooled MiniLM vectors (n, 384) of `texts`, length-sorted batches."""
    out = np.zeros((len(texts), encoder.dim), np.float32)
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=cpu_bf16()[0])
    for batch in length_batches([len(t) for t in texts]):
        with torch.no_grad(), autocast:
            tokens = encoder.tokenize([texts[i] for i in batch], 128)
            out[batch] = encoder(**tokens).float().numpy()
    return out


def inputs(work: Path) -> dict[str, np.ndarray]:
    """Maps and embeddings of the training and validation articles, cached in `work`."""
    path = work / "readout_inputs.npz"
    if path.is_file():
        return dict(np.load(path))
    data = TextMapDataModule(batch_size=64, num_workers=0)
    data.setup()
    encoder = TextEncoder().eval()
    arrays: dict[str, np.ndarray] = {}
    for stage in ("train", "val"):
        articles = [data.corpus.articles[i] for i in data.indices_of(stage)]
        _, maps = data.article_maps(stage)
        arrays[f"{stage}_maps"] = np.asarray(maps, np.float32)
        arrays[f"{stage}_titles"] = embed(encoder, [a.title or "." for a in articles])
        arrays[f"{stage}_has_title"] = np.array([bool(a.title.strip()) for a in articles])
        if stage == "train":
            keywords, rows = [], []
            for row, article in enumerate(articles):
                for keyword in article.keywords:
                    keywords.append(keyword)
                    rows.append(row)
            arrays["keyword_each"] = embed(encoder, keywords)
            arrays["keyword_rows"] = np.asarray(rows)
            for source, texts in (
                ("keywords", ["; ".join(a.keywords) for a in articles]),
                ("abstract", [a.abstract for a in articles]),
            ):
                has = np.array([bool(t.strip()) for t in texts])
                arrays[source] = embed(encoder, [t if t.strip() else "." for t in texts])
                arrays[f"has_{source}"] = has
    work.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def targets_of(maps: np.ndarray) -> Tensor:
    """Max-normalised maps raised to the power 0.1 (the shipped target transform)."""
    t = torch.from_numpy(maps)
    return transform_targets(t / t.amax(1, keepdim=True).clamp_min(1e-12), "power:0.1")


def dice_auc(pred: Tensor, maps: np.ndarray) -> float:
    return float(dice_auc_from_curve(dice_curve(pred, torch.from_numpy(maps))).mean())


def sources(a: dict[str, np.ndarray]) -> None:
    residual = targets_of(a["train_maps"])
    mean = residual.mean(0)
    residual -= mean
    titled = a["val_has_title"]
    queries, val_maps = torch.from_numpy(a["val_titles"][titled]), a["val_maps"][titled]
    n = len(residual)
    articles = np.arange(n)[a["train_has_title"]]
    parts = {
        "title": (a["train_titles"][a["train_has_title"]], articles),
        "keywords (each)": (a["keyword_each"], a["keyword_rows"]),
        "keywords (joined)": (a["keywords"][a["has_keywords"]], np.arange(n)[a["has_keywords"]]),
        "abstract": (a["abstract"][a["has_abstract"]], np.arange(n)[a["has_abstract"]]),
    }
    rows_of = {
        "title": ["title"],
        "title + keywords (joined)": ["title", "keywords (joined)"],
        "title + abstract": ["title", "abstract"],
        "title + keywords (each) + abstract": ["title", "keywords (each)", "abstract"],
        "title + keywords (joined) + abstract": ["title", "keywords (joined)", "abstract"],
    }
    print(f"corpus-mean map: val Dice-AUC {dice_auc(mean.expand(len(val_maps), -1), val_maps):.5f}")
    for name, used in rows_of.items():
        features = torch.from_numpy(np.concatenate([parts[p][0] for p in used]))
        rows = np.concatenate([parts[p][1] for p in used])
        for alpha in ("loo", 0.1, 0.3, 1.0):
            start = time.perf_counter()
            grid = RELATIVE_ALPHAS if alpha == "loo" else [alpha]
            fit = fit_ridge(features, residual, grid, relative=True, loo_voxels=4096, rank=32,
                            dtype=torch.float64, target_rows=rows)  # fmt: skip
            score = dice_auc(mean + fit.intercept + queries @ fit.coef, val_maps)
            seconds = time.perf_counter() - start
            print(f"{name:38s} {len(rows):6d} texts  alpha {alpha!s:>4} "
                  f"({fit.alpha:8.3g})  val {score:.5f}  {seconds:5.0f} s", flush=True)  # fmt: skip


def learned(a: dict[str, np.ndarray], epochs: int = 16) -> None:
    residual = targets_of(a["train_maps"])
    mean = residual.mean(0)
    residual -= mean
    titled = a["train_has_title"]
    features, residual = torch.from_numpy(a["train_titles"][titled]), residual[titled]
    val = a["val_has_title"]
    queries, val_maps = torch.from_numpy(a["val_titles"][val]), a["val_maps"][val]
    fit = fit_ridge(features, residual, RELATIVE_ALPHAS, relative=True, loo_voxels=4096, rank=32,
                    dtype=torch.float64)  # fmt: skip
    readout_train = fit.intercept + features @ fit.coef
    readout_val = fit.intercept + queries @ fit.coef
    print(f"ridge readout alone (title, rank 32, leave-one-out): val "
          f"{dice_auc(mean + readout_val, val_maps):.5f}")  # fmt: skip
    for variant in ("MLP in a 128-map basis", "linear in a 128-map basis", "MLP readout alone"):
        torch.manual_seed(0)
        alone = variant == "MLP readout alone"
        base_train = torch.zeros_like(readout_train) if alone else readout_train
        base_val = torch.zeros_like(readout_val) if alone else readout_val
        _, _, basis = torch.svd_lowrank(residual - base_train, q=256 if alone else 128, niter=3)
        coefficients = (residual - base_train) @ basis
        k = basis.shape[1]
        if variant.startswith("linear"):
            net: nn.Module = nn.Linear(features.shape[1], k)
            last = net
        else:
            net = nn.Sequential(nn.LayerNorm(features.shape[1]), nn.Linear(features.shape[1], 1024),
                                nn.GELU(), nn.Dropout(0.5), nn.Linear(1024, k))  # fmt: skip
            last = net[-1]
        if not alone:  # starts at the readout
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
        start = time.perf_counter()
        for epoch in range(1, epochs + 1):
            net.train()
            for batch in torch.randperm(len(features)).split(64):
                loss = (net(features[batch]) - coefficients[batch]).square().sum(1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            net.eval()
            with torch.no_grad():
                score = dice_auc(mean + base_val + net(queries) @ basis.T, val_maps)
            print(f"{variant:28s} epoch {epoch:2d}  {time.perf_counter() - start:5.0f} s  "
                  f"val {score:.5f}", flush=True)  # fmt: skip


def knn_maps(queries: Tensor, bank: Tensor, rows: Tensor, maps: Tensor, k: int, t: float) -> Tensor:
    """Softmax(cos / t)-weighted mean of the maps of the k bank texts nearest each query; a
    bank text is a row of its article's map (`rows`), so an article found twice counts twice."""
    similarity = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
    index, weights = retrieval_weights(-similarity, k, t)
    per_article = torch.zeros(len(queries), len(maps))
    per_article.scatter_add_(1, rows[index], weights)
    return per_article @ maps


def ensemble(a: dict[str, np.ndarray]) -> None:
    maps = targets_of(a["train_maps"])
    mean = maps.mean(0)
    n = len(maps)
    titled = a["val_has_title"]
    queries, val_maps = torch.from_numpy(a["val_titles"][titled]), a["val_maps"][titled]
    articles = np.arange(n)
    parts = [
        (a["train_titles"][a["train_has_title"]], articles[a["train_has_title"]]),
        (a["keywords"][a["has_keywords"]], articles[a["has_keywords"]]),
        (a["abstract"][a["has_abstract"]], articles[a["has_abstract"]]),
    ]
    features = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    rows = np.concatenate([p[1] for p in parts])
    fit = fit_ridge(features, maps - mean, [0.3], relative=True, loo_voxels=256, rank=32,
                    dtype=torch.float64, target_rows=rows)  # fmt: skip
    predictions = {"ridge": mean + fit.intercept + queries @ fit.coef}
    for name, used in (("retrieval (titles)", [0]), ("retrieval (all texts)", [0, 1, 2])):
        bank = torch.from_numpy(np.concatenate([parts[p][0] for p in used]))
        bank_rows = torch.from_numpy(np.concatenate([parts[p][1] for p in used]))
        best = (-1.0, None)
        for k in (100, 200, 400, 800):
            for t in (0.05, 0.1, 0.2):
                start = time.perf_counter()
                chunks = queries.split(100)
                pred = torch.cat([knn_maps(q, bank, bank_rows, maps, k, t) for q in chunks])
                score = dice_auc(pred, val_maps)
                print(f"{name:24s} k {k:4d} T {t:4}  val {score:.5f}  "
                      f"{time.perf_counter() - start:4.0f} s", flush=True)  # fmt: skip
                best = max(best, (score, pred), key=lambda x: x[0])
        predictions[name] = best[1]
    neuroquery = Path("checkpoints/neuroquery/best.ckpt")
    if neuroquery.is_file():
        data = TextMapDataModule(batch_size=64, num_workers=0)
        data.setup()
        titles = [data.corpus.articles[i].title for i in data.indices_of("val")]
        model = load_model(neuroquery)
        with torch.no_grad():
            predictions["NeuroQuery-style"] = model.predict_texts(
                [t for t, has in zip(titles, titled, strict=True) if has]
            ).float()
    z = {name: normalise_maps(p, "zscore") for name, p in predictions.items()}
    for name, p in z.items():
        print(f"{name:24s} alone  val {dice_auc(p, val_maps):.5f}")
    names = list(z)
    scored = []
    for weights in simplex_grid(len(names), 10).float():
        combined = sum(w * z[name] for w, name in zip(weights, names, strict=True))
        scored.append((dice_auc(combined, val_maps), weights.tolist()))
    for score, weights in sorted(scored, reverse=True)[:10]:
        print("  ".join(f"{n} {w:.1f}" for n, w in zip(names, weights, strict=True)),
              f" val {score:.5f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=["sources", "learned", "ensemble"])
    parser.add_argument("--work", type=Path, default=Path("runs/readout_variants"))
    args = parser.parse_args()
    torch.set_float32_matmul_precision("highest")
    print(describe_machine())
    arrays = inputs(args.work)
    {"sources": sources, "learned": learned, "ensemble": ensemble}[args.table](arrays)


if __name__ == "__main__":
    main()
