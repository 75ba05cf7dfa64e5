"""One retrieval table (issue 24): the contrastive heads and the non-learned retrievers on a split,
both directions, with the checks and the retrieval settings of the contrastive heads' maps.

    python experiments/retrieval_table.py table --split test \\
        --model mnm=checkpoints/mnm-minilm --model clip=checkpoints/clip-features/best.ckpt \\
        --predictor text-ridge=checkpoints/text-ridge-minilm \\
        --member retrieval=checkpoints/ensemble-minilm:retrieval
    python experiments/retrieval_table.py hubs --split val --model mnm=...
    python experiments/retrieval_table.py maps --split val --model mnm=...

`table`: the split's N articles, text i (the evaluation text: the title) paired with article map
i. Every retriever scores all N x N pairs (rows texts, columns maps; lower is nearer):

* a contrastive head (MNM, CLIP): its own `cross_distance` of the text and map embeddings, the
  distance its logged `recall@k` uses;
* a map predictor (text-ridge, the retrieval head, a member of the default release): 1 - the
  Pearson r of the text's predicted map with each article map (non-learned as a retriever: the
  head was never trained to tell articles apart).

text -> map ranks each row, map -> text each column. Reported: recall@1/10/100 (Wilson 95% CIs)
and the area under the recall@k curve over k = 1..N (the mean over queries of (N - rank) / N,
rank 0 the best; a t 95% CI), as NeuroVLM reports it; for contrastive heads also the hierarchy
measures of the split's fixed sample and the breadth ordering accuracy (a pair of maps of the
sample whose breadths differ 1.5-fold or more: is the broader one nearer the origin?).

`hubs`: how often each bank map (the training articles) is among the 20 nearest of the split's
texts, against its distance to the origin (Spearman), by each retrieval space.

`maps`: validation Dice-AUC of a contrastive head's retrieved maps over a grid of retrieval
settings (space, neighbour transform, k, temperature): what configs/model/mnm.yaml's settings
were chosen by. The bank's maps are rendered once.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from scipy import stats

from text2brain.compare.scoring import mean_ci, wilson_ci
from text2brain.data import TextMapDataModule
from text2brain.inference import load_predictor
from text2brain.metrics import dice_auc_from_curve, dice_curve
from text2brain.models.contrastive.features import map_breadth
from text2brain.models.contrastive.retrieval import retrieval_weights, weighted_maps
from text2brain.models.targets import scaled_targets
from text2brain.outputs import write_text

KS = (1, 10, 100)
CHUNK = 256


def split_pairs(data: TextMapDataModule, split: str) -> tuple[list[str], np.ndarray]:
    """(evaluation texts, article maps) of a split, text i paired with map i."""
    dataset = data.dataset(split)
    texts = [dataset[i]["pair"].text for i in range(len(dataset))]
    _, maps = data.article_maps(split)
    return texts, np.asarray(maps, dtype=np.float32)


@torch.no_grad()
def text_points(model, texts: list[str]) -> torch.Tensor:
    """Points of texts by a contrastive head, in eval mode."""
    model.eval()
    return torch.cat(
        [model.embed_text({"text": texts[s : s + CHUNK]}) for s in range(0, len(texts), CHUNK)]
    )


@torch.no_grad()
def contrastive_points(model, texts: list[str], maps: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Text and map points of a contrastive head, in eval mode."""
    brain = model.embed_map_chunks(len(maps), lambda s, e: torch.from_numpy(maps[s:e]))
    return text_points(model, texts), brain


def pearson_distance(pred: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """1 - Pearson r of every predicted map (n, V) with every map (m, V): (n, m)."""

    def unit(x: torch.Tensor) -> torch.Tensor:
        x = x.double() - x.double().mean(dim=1, keepdim=True)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    return (1.0 - unit(pred) @ unit(maps).T).float()


def ranks(distance: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rank (0 = nearest) of the paired item, each text's among maps and each map's among texts."""
    diagonal = distance.diagonal().unsqueeze(1)
    t2b = (distance < diagonal).sum(dim=1)
    b2t = (distance < diagonal.T).sum(dim=0)
    return t2b.numpy(), b2t.numpy()


def recall_row(name: str, rank: np.ndarray, n: int) -> str:
    cells = []
    for k in KS:
        value, low, high = wilson_ci(rank < k)
        cells.append(f"{value:.3f} ({low:.3f}-{high:.3f})")
    auc, low, high = mean_ci((n - rank) / n)
    cells.append(f"{auc:.3f} ({low:.3f}-{high:.3f})")
    return f"| {name} | " + " | ".join(cells) + " |"


def breadth_ordering(model, sample) -> float:
    """Share of the sample's map pairs (articles and tables) whose breadths differ 1.5-fold or
    more in which the broader map lies nearer the origin (the centre-angle stand-in on CLIP)."""
    maps = np.concatenate([sample.article_maps, sample.table_maps])
    points = model.embed_map_chunks(len(maps), lambda s, e: torch.from_numpy(maps[s:e]))
    specificity = model.net.geometry.specificity(points)
    breadth = map_breadth(torch.from_numpy(maps))
    i, j = np.triu_indices(len(maps), 1)
    i, j = torch.from_numpy(i), torch.from_numpy(j)
    ratio = breadth[i] / breadth[j].clamp_min(1)
    broader_i, broader_j = ratio >= 1.5, ratio <= 1 / 1.5
    right = (specificity[i] < specificity[j])[broader_i].sum() + (specificity[j] < specificity[i])[
        broader_j
    ].sum()
    return float(right) / max(int(broader_i.sum() + broader_j.sum()), 1)


def table(args: argparse.Namespace, data: TextMapDataModule) -> None:
    texts, maps = split_pairs(data, args.split)
    n = len(texts)
    header = (
        f"| retriever ({args.split}, N = {n}) | recall@1 | recall@10 | recall@100 | AUC recall@k |"
    )
    t2b_rows, b2t_rows, extra = [], [], []
    target = torch.from_numpy(maps)
    for name, path in args.model:
        model = load_predictor(path, device="cpu").model
        start = time.perf_counter()
        text, brain = contrastive_points(model, texts, maps)
        t2b, b2t = ranks(model.net.geometry.cross_distance(text, brain))
        t2b_rows.append(recall_row(name, t2b, n))
        b2t_rows.append(recall_row(name, b2t, n))
        sample = data.hierarchy_sample(args.split, 500)
        with torch.no_grad():
            measures = {k: float(v) for k, v in model.hierarchy_measures(sample).items()}
            measures["breadth_ordering"] = breadth_ordering(model, sample)
        extra.append(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in measures.items()))
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    predictors = [(name, path, None) for name, path in args.predictor] + [
        (name, *spec.rsplit(":", 1)) for name, spec in args.member
    ]
    for name, path, member in predictors:
        predictor = load_predictor(path, device="cpu")
        head = predictor.model.members[member] if member else predictor.model
        with torch.inference_mode():
            pred = torch.cat([head.predict_texts(texts[s : s + CHUNK]) for s in range(0, n, CHUNK)])
        t2b, b2t = ranks(pearson_distance(pred, target))
        t2b_rows.append(recall_row(name, t2b, n))
        b2t_rows.append(recall_row(name, b2t, n))
    separator = "|---|---|---|---|---|"
    report = [
        "text -> map",
        "",
        header,
        separator,
        *t2b_rows,
        "",
        "map -> text",
        "",
        header,
        separator,
        *b2t_rows,
        "",
        "hierarchy (fixed sample of 500 article -> table pairs):",
        *[f"- {line}" for line in extra],
    ]
    print("\n".join(report))
    if args.out:
        write_text(args.out, "\n".join(report) + "\n")


def hubs(args: argparse.Namespace, data: TextMapDataModule) -> None:
    texts, _ = split_pairs(data, args.split)
    for name, path in args.model:
        model = load_predictor(path, device="cpu").model
        bank = model.require_bank("measure hubs")
        text = text_points(model, texts)
        with torch.no_grad():
            radius = model.net.geometry.specificity(bank.embeddings.float())
            for space in ("logits", "geodesic", "direction"):
                model.retrieval_space = space
                distance = model.retrieval_distance(text, bank.embeddings.float())
                top = distance.topk(20, dim=1, largest=False).indices.flatten()
                counts = torch.bincount(top, minlength=len(bank)).numpy()
                rho = stats.spearmanr(counts, radius.numpy()).statistic
                share = np.sort(counts)[::-1][: len(bank) // 100].sum() / counts.sum()
                print(
                    f"{name} {space}: top-1% of bank maps take {share:.1%} of the top-20 "
                    f"slots; the busiest {counts.max()} of {len(texts)}; maps used "
                    f"{(counts > 0).mean():.1%}; Spearman(count, distance to origin) {rho:+.2f}"
                )


def grid_maps(args: argparse.Namespace, data: TextMapDataModule) -> None:
    texts, maps = split_pairs(data, args.split)
    target = torch.from_numpy(maps)
    for name, path in args.model:
        model = load_predictor(path, device="cpu").model
        bank = model.require_bank("retrieve maps")
        rendered = bank.render(range(len(bank)))
        text = text_points(model, texts)
        learned = float(1.0 / model.net.geometry.logit_scale().detach())
        for transform in args.transforms:
            bank_maps = scaled_targets(rendered, transform)
            for space in args.spaces:
                model.retrieval_space = space
                distance = model.retrieval_distance(text, bank.embeddings.float())
                for k, temperature in itertools.product(args.k, [*args.temperature, learned]):
                    indices, weights = retrieval_weights(distance, k, temperature)
                    pred = weighted_maps(bank_maps, indices, weights)
                    curve = torch.cat(
                        [
                            dice_curve(pred[s : s + CHUNK], target[s : s + CHUNK])
                            for s in range(0, len(pred), CHUNK)
                        ]
                    )
                    score = float(dice_auc_from_curve(curve).mean())
                    print(
                        f"{name} transform {transform} space {space} k {k} T {temperature:.4g}: "
                        f"Dice-AUC {score:.4f}",
                        flush=True,
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("table", "hubs", "maps"))
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--model", action="append", default=[], type=lambda s: s.split("=", 1))
    parser.add_argument("--predictor", action="append", default=[], type=lambda s: s.split("=", 1))
    parser.add_argument("--member", action="append", default=[], type=lambda s: s.split("=", 1))
    parser.add_argument("--spaces", nargs="+", default=["logits", "direction"])
    parser.add_argument("--transforms", nargs="+", default=["power:0.1"])
    parser.add_argument("--k", nargs="+", type=int, default=[100, 200, 400])
    parser.add_argument("--temperature", nargs="+", type=float, default=[0.05, 0.1, 0.2])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = TextMapDataModule()
    data.setup()
    {"table": table, "hubs": hubs, "maps": grid_maps}[args.what](args, data)


if __name__ == "__main__":
    main()
