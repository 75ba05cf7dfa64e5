"""How far a map's concentration alone orders tables and their articles: the closed-form
stand-in for MNM's `hier/table_farther` (README, contrastive section).

    python experiments/hierarchy_concentration.py

On the heads' fixed sample of validation article -> table pairs (500 pairs of articles with
two tables or more), the share of pairs where the table map is more concentrated than its
article's map by three statistics of the map as a distribution over voxels: lower entropy,
lower participation ratio (sum^2 / sum of squares: the effective number of voxels), higher
peak once scaled to unit mass. Also the share of the article's peaks that the sampled table
holds (a table holding most of them is hard to tell from its article).
"""

from __future__ import annotations

import numpy as np

from text2brain.bench.machine import describe_machine
from text2brain.data import TextMapDataModule


def distribution(maps: np.ndarray) -> np.ndarray:
    """Each map (row) divided by its total (an all-zero map stays zero)."""
    return maps / np.clip(maps.sum(axis=1, keepdims=True), 1e-30, None)


def main() -> None:
    print(describe_machine())
    data = TextMapDataModule(batch_size=32, num_workers=0, hierarchy_tables=2)
    sample = data.hierarchy_sample("val", 500)
    article, table = distribution(sample.article_maps), distribution(sample.table_maps)

    def entropy(p: np.ndarray) -> np.ndarray:
        return -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=1)

    def participation(p: np.ndarray) -> np.ndarray:
        return 1.0 / (p**2).sum(axis=1)

    print(f"pairs: {len(sample)}")
    shares = {
        "lower entropy": entropy(table) < entropy(article),
        "lower participation ratio": participation(table) < participation(article),
        "higher peak at unit mass": table.max(1) > article.max(1),
    }
    for name, wins in shares.items():
        print(f"table has the {name}: {np.mean(wins):.3f}")
    peaks = data.corpus.coordinates
    per_article = peaks.groupby("id").size()
    per_table = peaks.groupby(["id", "table_id"]).size()
    pairs = zip(sample.article_ids, sample.table_ids, strict=True)
    share = np.array([per_table[(a, t)] / per_article[a] for a, t in pairs])
    print("share of the article's peaks in the sampled table, quantiles 10/50/90%:",
          np.quantile(share, [0.1, 0.5, 0.9]).round(2))  # fmt: skip


if __name__ == "__main__":
    main()
