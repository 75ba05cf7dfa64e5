"""What a comparison writes: the summary and per-article tables, the Markdown table, the Dice
curves and the query panel, and their wandb run."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from text2brain.compare.scoring import NO_KNOWN_TERM, ModelScores, estimate_ci, mcnemar_p, mean_ci
from text2brain.outputs import atomic_output, write_text

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from text2brain.inference import Predictor

#: Fractions of the mask reported as Dice@k.
DICE_COLUMNS = {0.05: "dice@5", 0.10: "dice@10", 0.20: "dice@20", 0.30: "dice@30"}
#: Fraction of the mask shown in the query panel (its most activated voxels).
PANEL_TOP = 0.10
#: Prefix of the hierarchy measures' columns (text2brain.models.contrastive.hierarchy).
HIERARCHY_PREFIX = "hier/"
#: Prefix of the retrieval columns ("recall@10_t2b", ...; text2brain.models.contrastive).
RECALL_PREFIX = "recall@"
#: Suffixes of a measure's 95% confidence bounds and paired p-value against the best head.
LOW, HIGH, P_VS_BEST = "_ci95_low", "_ci95_high", "_p_vs_best"
#: The files of a comparison's output folder, in the order they are written.
OUTPUT_FILES = ("results.csv", "results.md", "per_article.csv", "dice_curves.png", "queries.png")


# -- tables ----------------------------------------------------------------------------------
def summary_table(scores: Sequence[ModelScores]) -> pd.DataFrame:
    """One row per model, best mean Dice-AUC first, with the paired t-test against the best
    and, last, the retrieval recall (with the McNemar test against the column's best head) and
    hierarchy measures of the heads that have them, each with its 95% CI (NaN for the others)."""
    import pandas as pd
    from scipy import stats

    best = max(scores, key=lambda s: s.dice_auc.mean())
    recall_best = {  # the head with the highest recall, per measure
        name: max(
            (s for s in scores if name in s.retrieval), key=lambda s: s.retrieval[name].mean()
        )
        for name in dict.fromkeys(name for s in scores for name in s.retrieval)
    }
    rows = []
    for s in scores:
        mean, low, high = mean_ci(s.dice_auc)
        if s is best or len(s.dice_auc) < 2:
            p_value = float("nan")
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                p_value = float(stats.ttest_rel(best.dice_auc, s.dice_auc).pvalue)
        rows.append(
            {
                "model": s.name,
                "articles": len(s.dice_auc),
                "dice_auc": mean,
                "ci95_low": low,
                "ci95_high": high,
                **{col: float(s.dice_at(x).mean()) for x, col in DICE_COLUMNS.items()},
                "pearson": float(s.pearson.mean()),
                "p_vs_best": p_value,
                "failures": int((~s.known).sum()),
                "failure_rule": s.failure_rule,
                "source": s.source,
                **_measure_columns(s, recall_best),
            }
        )
    return pd.DataFrame(rows).sort_values("dice_auc", ascending=False, ignore_index=True)


def _measure_columns(s: ModelScores, recall_best: Mapping[str, ModelScores]) -> dict[str, float]:
    """A head's retrieval and hierarchy columns: each measure's mean and 95% CI bounds (Wilson
    for hits, t for values), and for recall the McNemar p-value against the best head."""
    columns: dict[str, float] = {}
    for name, values in (*s.retrieval.items(), *s.hierarchy.items()):
        mean, low, high = estimate_ci(values)
        columns |= {name: mean, name + LOW: low, name + HIGH: high}
        if name in s.retrieval:
            best = recall_best[name]
            p_value = math.nan if best is s else mcnemar_p(best.retrieval[name], values)
            columns[name + P_VS_BEST] = p_value
    return columns


def per_article_table(
    scores: Sequence[ModelScores], ids: Sequence[str], texts: Sequence[str]
) -> pd.DataFrame:
    """Long format: one row per (article, model)."""
    import pandas as pd

    frames = [
        pd.DataFrame(
            {
                "article_id": list(ids),
                "text": list(texts),
                "model": s.name,
                "dice_auc": s.dice_auc,
                **{col: s.dice_at(x) for x, col in DICE_COLUMNS.items()},
                "pearson": s.pearson,
                "failure": ~s.known,
                **s.retrieval,  # article i's text (t2b) or map (b2t) as the query
            }
        )
        for s in scores
    ]
    return pd.concat(frames, ignore_index=True)


def markdown_table(table: pd.DataFrame) -> str:
    """The summary as a Markdown table (what README.md quotes)."""
    lines = [
        "| model | Dice-AUC (95% CI) | Dice@5 | Dice@10 | Dice@20 | Dice@30 | Pearson r "
        "| p vs best | failures |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.to_dict("records"):
        p_value = "-" if math.isnan(row["p_vs_best"]) else f"{row['p_vs_best']:.2g}"
        failures = f"{row['failures']}"
        if row["failures"]:
            failures += f" ({row['failure_rule']})"
        dice = " | ".join(f"{row[column]:.3f}" for column in DICE_COLUMNS.values())
        lines.append(
            f"| {row['model']} | {row['dice_auc']:.4f} ({row['ci95_low']:.4f}-"
            f"{row['ci95_high']:.4f}) | {dice} | {row['pearson']:.3f} | {p_value} | {failures} |"
        )
    # The contrastive heads' retrieval and hierarchy measures, in tables of their own ("-" for
    # the models without an embedding space).
    lines += _measure_table(table, RECALL_PREFIX, RECALL_NOTE)
    lines += _measure_table(table, HIERARCHY_PREFIX, HIERARCHY_NOTE)
    return "\n".join(lines) + "\n"


#: What the retrieval and hierarchy tables of results.md show, said under each.
RECALL_NOTE = (
    "Recall@k: share of test queries whose match is among the k nearest of all test articles "
    "(t2b: title -> map, b2t: map -> title), Wilson 95% CI; p: exact McNemar test against the "
    "column's best head."
)
HIERARCHY_NOTE = (
    "Hierarchy: fractions with Wilson 95% CIs over their pairs, mean distances with t 95% CIs."
)


def _measure_table(table: pd.DataFrame, prefix: str, note: str) -> list[str]:
    """Lines of the Markdown table of the measures named `prefix...` ("mean (low-high)", and
    the p-value against the best head where there is one) and its `note`; [] when no model
    has them."""
    measures = [
        str(c)
        for c in table.columns
        if str(c).startswith(prefix) and not str(c).endswith((LOW, HIGH, P_VS_BEST))
    ]
    if not measures:
        return []
    names = [c.removeprefix(HIERARCHY_PREFIX).replace("_", " ") for c in measures]
    lines = ["", f"| model | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|"]
    for row in table.to_dict("records"):
        cells = []
        for c in measures:
            if _missing(row[c]):
                cells.append("-")
                continue
            cell = f"{row[c]:.3f} ({row[c + LOW]:.3f}-{row[c + HIGH]:.3f})"
            if not _missing(row.get(c + P_VS_BEST)):
                cell += f", p {row[c + P_VS_BEST]:.2g}"
            cells.append(cell)
        lines.append(f"| {row['model']} | {' | '.join(cells)} |")
    return [*lines, "", note]


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# -- figures ---------------------------------------------------------------------------------
def dice_curve_figure(scores: Sequence[ModelScores]) -> Figure:
    """Mean Dice at every threshold per model, with 95% confidence bands."""
    from text2brain.figures import new_figure
    from text2brain.metrics import DICE_THRESHOLDS

    fig = new_figure((6.5, 4.5))
    ax = fig.subplots()
    x = 100 * np.asarray(DICE_THRESHOLDS)
    for s in scores:
        curves = np.where(s.scored_failures[:, None], 0.0, s.curves)
        bounds = np.array([mean_ci(column) for column in curves.T])
        ax.plot(x, bounds[:, 0], label=f"{s.name} (AUC {s.dice_auc.mean():.4f})")
        ax.fill_between(x, bounds[:, 1], bounds[:, 2], alpha=0.2)
    ax.set_xlabel("top voxels (% of the mask)")
    ax.set_ylabel("Dice")
    ax.set_title(f"Dice curves on {len(scores[0].dice_auc)} test articles")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def query_panel_figure(predictors: Mapping[str, Predictor], queries: Sequence[str]) -> Figure:
    """Glass-brain views of each query (rows) by each model (columns): each map's top 10%
    voxels, positive red and negative blue, as the training figures show them."""
    from nilearn import plotting

    from text2brain.callbacks import display_threshold
    from text2brain.figures import new_figure

    names = list(predictors)
    fig = new_figure((3.3 * len(names) + 1.2, 1.5 * len(queries) + 0.5), dpi=90)
    axes = np.atleast_2d(fig.subplots(len(queries), len(names), squeeze=False))
    for column, name in enumerate(names):
        predictor = predictors[name]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=NO_KNOWN_TERM)
            maps = predictor.predict_vectors(list(queries))
        for row, (query, vector) in enumerate(zip(queries, maps, strict=True)):
            ax = axes[row, column]
            if not np.abs(vector).max() > 0:  # no answer (an all-zero map)
                ax.text(0.5, 0.5, "no known term", ha="center", va="center")
                ax.set_axis_off()
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # nilearn's notes on sparse or flat maps
                    plotting.plot_glass_brain(
                        predictor.space.to_nifti(vector),
                        axes=ax,
                        threshold=display_threshold(vector, PANEL_TOP),
                        plot_abs=False,
                        symmetric_cbar=True,
                        colorbar=False,
                        annotate=False,
                    )
            if row == 0:
                ax.set_title(name, fontsize="medium")
            if column == 0:
                ax.text(-0.02, 0.5, query, transform=ax.transAxes, ha="right", va="center")
    return fig


# -- the output folder -----------------------------------------------------------------------
def write_report(
    out_dir: Path,
    scores: Sequence[ModelScores],
    predictors: Mapping[str, Predictor],
    queries: Sequence[str],
    ids: Sequence[str],
    texts: Sequence[str],
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """The tables and figures of a comparison in `out_dir`: the summary table and the paths
    (`OUTPUT_FILES` -> file)."""
    table = summary_table(scores)
    paths = {name: out_dir / name for name in OUTPUT_FILES}
    with atomic_output(paths["results.csv"]) as tmp:
        table.to_csv(tmp, index=False)
    write_text(paths["results.md"], markdown_table(table))
    with atomic_output(paths["per_article.csv"]) as tmp:
        per_article_table(scores, ids, texts).to_csv(tmp, index=False)
    for key, figure in (
        ("dice_curves.png", dice_curve_figure(scores)),
        ("queries.png", query_panel_figure(predictors, queries)),
    ):
        with atomic_output(paths[key]) as tmp:
            figure.savefig(tmp, bbox_inches="tight")
        figure.clear()
    return table, paths


def log_to_wandb(group: str, table: pd.DataFrame, paths: Mapping[str, Path]) -> None:
    """The table and figures as one wandb run of job type "compare" in `group`."""
    import wandb

    run = wandb.init(project="text2brain", group=group, job_type="compare", name=group)
    try:
        run.log(
            {
                "compare/results": wandb.Table(dataframe=table),
                "compare/dice_curves": wandb.Image(str(paths["dice_curves.png"])),
                "compare/queries": wandb.Image(str(paths["queries.png"])),
            }
        )
    finally:
        run.finish()
