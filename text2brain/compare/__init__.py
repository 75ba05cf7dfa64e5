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
queries, or the file's, rendered by every model). The heads with an embedding space (CLIP,
MNM) add retrieval among the test articles, recall@10 / @100 text -> map and map -> text
(`recall@10_t2b`, ... by the head's own encoders and distance, as its `test/recall@...`), each
with its Wilson 95% CI and the exact McNemar p-value against the column's best head, and their
hierarchy measures on the test split's fixed sample (`hier/...`; fractions with Wilson, mean
distances with t 95% CIs; text2brain.models.contrastive.hierarchy): `<measure>_ci95_low` /
`_ci95_high` / `_p_vs_best` columns, a table of each in results.md ("-" for the other models)
and the per-query hits in per_article.csv.

Failures: a model that reads text as vocabulary terms cannot answer a text without a known
term. With `unknown_query: zero` (no answer) such an article scores 0, as in the Text2Brain
paper; with `unknown_query: mean` it is scored on the training-mean map the model falls back
to. Either way the failures are counted, and the table says which rule applied. (The metrics
logged during training score a zero map like any flat map, at chance level; the table here
follows the paper.)

The package's modules: `spec` (the comparison file, and fitting its configs), `scoring`
(per-article scores and confidence intervals), `report` (tables, figures, wandb) and `cli`
(`run_comparison` and the command).
"""

from text2brain.compare.cli import compare, run_comparison
from text2brain.compare.report import summary_table
from text2brain.compare.scoring import ModelScores, mean_ci, score_predictor
from text2brain.compare.spec import load_spec

__all__ = [
    "ModelScores",
    "compare",
    "load_spec",
    "mean_ci",
    "run_comparison",
    "score_predictor",
    "summary_table",
]
