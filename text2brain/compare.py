"""`text2brain compare`: models of the zoo side by side on one test split.

```bash
text2brain compare experiments/compare/small.yaml          # baselines, fitted here
text2brain compare experiments/compare/full.yaml --wandb-group compare-v1
```

A comparison file names the data (the `TextMapDataModule` arguments every model is fitted and
scored with), the models and the output folder:

```yaml
out_dir: runs/compare/small
data: {}                                   # default: NeuroQuery and its shipped split
models:
  corpus_mean: configs/corpus_mean.yaml    # a config: fitted first with `text2brain fit`
  text2brain: checkpoints/text2brain/best.ckpt                # a checkpoint: loaded
  neurosynth: {config: configs/neurosynth.yaml, args: [--model.init_args.fdr_q, "null"]}
queries: paper                             # or a list of texts for the qualitative panel
```

Every model answers the same texts (each test article's evaluation text: its title) and is
scored against the same article maps with the shared metric (text2brain.metrics). Written to
`out_dir`: `results.csv` and `results.md` (mean Dice-AUC with its 95% confidence interval,
Dice at 5/10/20/30% of the mask, Pearson r, the paired t-test p-value against the best model,
and the failure count), `per_article.csv` (every article's scores for every model),
`dice_curves.png` (mean Dice per threshold, with 95% bands) and `queries.png` (the paper's
queries, or the file's, rendered by every model).

Failures: a model that reads text as vocabulary terms cannot answer a text without a known
term. With `unknown_query: zero` (no answer) such an article scores 0, as in the Text2Brain
paper; with `unknown_query: mean` it is scored on the training-mean map the model falls back
to. Either way the failures are counted, and the table says which rule applied. (The metrics
logged during training score a zero map like any flat map, at chance level; the table here
follows the paper.)
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from text2brain.errors import add_debug_option
from text2brain.outputs import atomic_output, write_text

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from text2brain.data import TextMapDataModule
    from text2brain.inference import Predictor

#: Queries of the Text2Brain paper's qualitative figures, and a few classic contrasts.
PAPER_QUERIES = (
    "self-generated thought",
    "task-unrelated thought",
    "default network",
    "2-back vs 0-back",
    "move tongue",
    "face recognition",
    "reward anticipation",
    "pain",
)
#: Fractions of the mask reported as Dice@k.
DICE_COLUMNS = {0.05: "dice@5", 0.10: "dice@10", 0.20: "dice@20", 0.30: "dice@30"}
#: Fraction of the mask shown in the query panel (its most activated voxels).
PANEL_TOP = 0.10


@dataclass
class ModelScores:
    """One model's per-article scores on the test split."""

    name: str
    source: str
    curves: np.ndarray  # (n_articles, n_thresholds) Dice at every threshold
    pearson: np.ndarray  # (n_articles,)
    known: np.ndarray  # (n_articles,) bool: the text had a term the model knows
    unknown_query: str | None  # "zero", "mean", or None for models that never fail
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


# -- evaluation ------------------------------------------------------------------------------
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
        warnings.filterwarnings("ignore", message=".*texts have no term of the fitted")
        preds = predictor.predict_vectors(list(texts), batch_size=batch_size)
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


def summary_table(scores: Sequence[ModelScores]) -> pd.DataFrame:
    """One row per model, best mean Dice-AUC first, with the paired t-test against the best."""
    import pandas as pd
    from scipy import stats

    best = max(scores, key=lambda s: s.dice_auc.mean())
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
            }
        )
    return pd.DataFrame(rows).sort_values("dice_auc", ascending=False, ignore_index=True)


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
    return "\n".join(lines) + "\n"


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
            warnings.filterwarnings("ignore", message=".*texts have no term of the fitted")
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


# -- running a comparison --------------------------------------------------------------------
def load_spec(path: str | Path) -> dict[str, Any]:
    """A comparison file (YAML), checked: out_dir, data, models, queries."""
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read comparison file {str(path)!r}: {err}") from err
    if not isinstance(spec, dict) or not isinstance(spec.get("models"), dict) or not spec["models"]:
        raise ValueError(f"{str(path)!r} must hold a mapping with a non-empty 'models' mapping")
    unknown = sorted(set(spec) - {"out_dir", "data", "models", "queries"})
    if unknown:
        raise ValueError(
            f"{str(path)!r}: unknown keys {unknown} (known: out_dir, data, models, queries)"
        )
    queries = spec.get("queries", "paper")
    if queries == "paper":
        queries = list(PAPER_QUERIES)
    if not isinstance(queries, list) or not all(isinstance(q, str) and q.strip() for q in queries):
        raise ValueError(f"{str(path)!r}: queries must be 'paper' or a list of non-empty texts")
    models = {}
    for name, entry in spec["models"].items():
        entry = {"path": entry} if isinstance(entry, str) else dict(entry or {})
        source = (
            entry.pop("config", None) or entry.pop("checkpoint", None) or entry.pop("path", None)
        )
        args = [str(a) for a in entry.pop("args", [])]
        if source is None or entry:
            raise ValueError(
                f"{str(path)!r}: model {name!r} needs a config or checkpoint path "
                f"(and optional args); got {spec['models'][name]!r}"
            )
        models[str(name)] = {"source": str(source), "args": args}
    return {
        "out_dir": Path(spec.get("out_dir") or "runs/compare"),
        "data": dict(spec.get("data") or {}),
        "models": models,
        "queries": queries,
    }


def fit_config(config: str, args: Sequence[str], data: Mapping[str, Any], workdir: Path) -> str:
    """`text2brain fit -c config` on the comparison's data; the path of its best checkpoint."""
    import yaml

    from text2brain.training import run_lightning_cli

    workdir.mkdir(parents=True, exist_ok=True)
    data_config = workdir / "data.yaml"  # kept: says what the model was fitted on
    data_config.write_text(yaml.safe_dump({"data": dict(data)}), encoding="utf-8")
    cli = run_lightning_cli(["fit", "-c", config, "-c", str(data_config), *args])
    callback = cli.trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback else ""
    if not best or not Path(best).is_file():
        raise RuntimeError(
            f"fitting {config!r} wrote no best checkpoint: its trainer needs a ModelCheckpoint "
            "monitoring val/dice_auc (as the shipped configs have)"
        )
    return best


def run_comparison(spec: Mapping[str, Any], wandb_group: str | None = None) -> dict[str, Path]:
    """Fit / load every model, score them on the test split, write the outputs; their paths."""
    from text2brain.data import TextMapDataModule
    from text2brain.inference import load_predictor

    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    datamodule = TextMapDataModule(**{**spec["data"], "tokenizer": None})
    ids, texts, targets = test_texts(datamodule)

    predictors, scores = {}, []
    for name, model in spec["models"].items():
        source = model["source"]
        if source.endswith((".yaml", ".yml")):
            source = fit_config(source, model["args"], spec["data"], out_dir / "fits" / name)
        elif model["args"]:
            raise ValueError(f"model {name!r}: args only apply to a config, not {source!r}")
        predictor = load_predictor(source, device="cpu")
        predictors[name] = predictor
        scores.append(score_predictor(name, source, predictor, texts, targets))

    table = summary_table(scores)
    paths = {
        "results.csv": out_dir / "results.csv",
        "results.md": out_dir / "results.md",
        "per_article.csv": out_dir / "per_article.csv",
        "dice_curves.png": out_dir / "dice_curves.png",
        "queries.png": out_dir / "queries.png",
    }
    with atomic_output(paths["results.csv"]) as tmp:
        table.to_csv(tmp, index=False)
    write_text(paths["results.md"], markdown_table(table))
    with atomic_output(paths["per_article.csv"]) as tmp:
        per_article_table(scores, ids, texts).to_csv(tmp, index=False)
    for key, figure in (
        ("dice_curves.png", dice_curve_figure(scores)),
        ("queries.png", query_panel_figure(predictors, spec["queries"])),
    ):
        with atomic_output(paths[key]) as tmp:
            figure.savefig(tmp, bbox_inches="tight")
        figure.clear()
    if wandb_group:
        log_to_wandb(wandb_group, table, paths)
    return paths


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


def compare(argv: list[str] | None = None) -> None:
    """`text2brain compare FILE` (the `COMMANDS` entry of text2brain.cli)."""
    parser = argparse.ArgumentParser(
        prog="text2brain compare",
        description="Fit or load the models of a comparison file and score them side by side "
        "on one test split (see text2brain.compare).",
    )
    parser.add_argument("spec", help="comparison file (YAML): out_dir, data, models, queries")
    parser.add_argument("--out-dir", default=None, help="override the file's out_dir")
    parser.add_argument(
        "--wandb-group", default=None, help="also log the table and figures to wandb"
    )
    add_debug_option(parser)
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except ValueError as err:
        print(f"text2brain compare: error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.out_dir:
        spec["out_dir"] = Path(args.out_dir)
    paths = run_comparison(spec, args.wandb_group)
    print(paths["results.md"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
