"""Scoring models on one test split: per-article Dice curves, Pearson r, failures, the
contrastive heads' per-query retrieval hits and per-item hierarchy values, and the confidence
intervals and paired tests of all of them.

Intervals (95%): a mean of continuous values (Dice-AUC, distances) gets the t interval
(`mean_ci`); a share of per-item hits (recall@k, the hierarchy fractions) the Wilson score
interval (`wilson_ci`), which stays inside [0, 1] and keeps its coverage near 0, where
recall@10 among 1,000 articles lies. Two heads' recall on the same queries is compared by the
exact McNemar test (`mcnemar_p`), the paired test of two proportions on one set of queries."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from text2brain.data import TextMapDataModule
    from text2brain.inference import Predictor

#: The warning of term-based models about texts without a known term (counted, not shown).
NO_KNOWN_TERM = ".*texts have no term of the fitted"


@dataclass
class ModelScores:
    """One model's per-article scores on the test split."""

    name: str
    source: str
    curves: np.ndarray  # (n_articles, n_thresholds) Dice at every threshold
    pearson: np.ndarray  # (n_articles,)
    known: np.ndarray  # (n_articles,) bool: the text had a term the model knows
    unknown_query: str | None  # "zero", "mean", or None for models that never fail
    #: Per-query retrieval hits ("recall@k_t2b" / "_b2t" -> (n_articles,) bool; query i is
    #: article i's text, or its map) of heads with an embedding space.
    retrieval: dict[str, np.ndarray] = field(default_factory=dict)
    #: Per-item hierarchy values ("hier/..." -> (n,) bool per pair for a fraction, float per
    #: point for a distance) of heads that have them.
    hierarchy: dict[str, np.ndarray] = field(default_factory=dict)
    scored_failures: np.ndarray = field(init=False)  # failures that score 0 (no answer)

    def __post_init__(self) -> None:
        no_answer = self.unknown_query == "zero"
        self.scored_failures = ~self.known if no_answer else np.zeros_like(self.known)

    @property
    def dice_auc(self) -> np.ndarray:
        """Per-article Dice-AUC, 0 where the model gave no answer."""
        import torch

        from text2brain.metrics import dice_auc_from_curve

        auc = dice_auc_from_curve(torch.from_numpy(self.curves)).numpy()
        return np.where(self.scored_failures, 0.0, auc)

    def dice_at(self, fraction: float) -> np.ndarray:
        from text2brain.metrics import DICE_THRESHOLDS

        column = [round(x, 2) for x in DICE_THRESHOLDS].index(round(fraction, 2))
        return np.where(self.scored_failures, 0.0, self.curves[:, column])

    @property
    def failure_rule(self) -> str:
        if self.unknown_query is None:
            return "-"
        return "scored 0" if self.unknown_query == "zero" else "mean map"


def test_texts(datamodule: TextMapDataModule) -> tuple[list[str], list[str], np.ndarray]:
    """(article ids, evaluation texts, article maps) of the test split, in one order."""
    datamodule.setup()
    dataset = datamodule.dataset("test")
    texts = [dataset[i]["pair"].text for i in range(len(dataset))]
    ids, maps = datamodule.article_maps("test")
    return list(ids), texts, np.asarray(maps, dtype=np.float32)


def score_predictor(
    name: str,
    source: str,
    predictor: Predictor,
    texts: Sequence[str],
    targets: np.ndarray,
    batch_size: int = 64,
) -> ModelScores:
    """A predictor's per-article Dice curves, Pearson r and known-term flags."""
    import torch

    from text2brain.metrics import dice_curve, voxel_pearson

    model = predictor.model
    with warnings.catch_warnings():  # unknown queries are counted below, not warned per batch
        warnings.filterwarnings("ignore", message=NO_KNOWN_TERM)
        preds = predictor.predict_vectors(list(texts), batch_size=batch_size, max_chars=None)
    known_fn = getattr(model, "has_known_terms", None)
    known = np.asarray(known_fn(list(texts)) if known_fn else [True] * len(texts), dtype=bool)
    pred, target = torch.from_numpy(preds), torch.from_numpy(targets)
    curves = torch.cat(
        [dice_curve(pred[i : i + 256], target[i : i + 256]) for i in range(0, len(pred), 256)]
    )
    policy = getattr(model, "hparams", {}).get("unknown_query") if known_fn else None
    return ModelScores(
        name=name,
        source=source,
        curves=curves.numpy().astype(np.float64),
        pearson=voxel_pearson(pred, target).numpy().astype(np.float64),
        known=known,
        unknown_query=policy,
    )


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its t-based confidence interval (half width 0 for fewer than 2 values)."""
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * stats.sem(values)
    half = 0.0 if not math.isfinite(half) else float(half)
    return mean, mean - half, mean + half


def wilson_ci(hits: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Share of True among per-item hits and its Wilson score interval (NaN for no items)."""
    from scipy import stats

    hits = np.asarray(hits, dtype=bool)
    if not len(hits):
        return math.nan, math.nan, math.nan
    k, n = int(hits.sum()), len(hits)
    interval = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return k / n, float(interval.low), float(interval.high)


def estimate_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and confidence interval of per-item values: Wilson for bool hits, t otherwise."""
    values = np.asarray(values)
    if values.dtype == bool:
        return wilson_ci(values, level)
    return mean_ci(values.astype(np.float64), level)


def mcnemar_p(best: np.ndarray, other: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of two heads' hits on the same queries: a binomial test
    (p = 1/2) of the queries only one of them finds; 1 when there are none."""
    from scipy import stats

    best, other = np.asarray(best, dtype=bool), np.asarray(other, dtype=bool)
    if best.shape != other.shape:
        raise ValueError(f"paired hits must have one shape, got {best.shape} and {other.shape}")
    only_best, only_other = int((best & ~other).sum()), int((other & ~best).sum())
    if not only_best + only_other:
        return 1.0
    return float(stats.binomtest(only_best, only_best + only_other).pvalue)


def retrieval_scores(
    predictor: Predictor, texts: Sequence[str], targets: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-query hits ("recall@k_t2b" / "_b2t" -> (n,) bool) of a head with an embedding space
    among the test split's paired texts and article maps, by the head's own encoders, distance
    and hit rule, as its `test/recall@k_...` are computed; {} for a head without one."""
    import torch

    hits = getattr(predictor.model, "paired_retrieval_hits", None)
    if hits is None:
        return {}
    with torch.inference_mode():
        values = hits(list(texts), targets)
    return {name: value.cpu().numpy() for name, value in values.items()}


def hierarchy_scores(
    predictor: Predictor, datamodule: TextMapDataModule, n: int = 500
) -> dict[str, np.ndarray]:
    """The per-item hierarchy values ("hier/..." -> (n,) array) of a contrastive head on the
    test split's fixed sample of `n` article -> table pairs
    (text2brain.models.contrastive.hierarchy; their means are its `test/hier/...` metrics);
    {} for a head without an embedding space."""
    import torch

    values = getattr(predictor.model, "hierarchy_values", None)
    if values is None:
        return {}
    with torch.inference_mode():
        items = values(datamodule.hierarchy_sample("test", n))
    return {name: item.cpu().numpy() for name, item in items.items()}
