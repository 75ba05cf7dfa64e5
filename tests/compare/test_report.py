"""text2brain.compare.report: the summary table, best first, with the paired t-test."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from text2brain.compare.report import markdown_table, per_article_table, summary_table
from text2brain.compare.scoring import ModelScores


def test_summary_is_best_first_with_the_paired_test(
    better_and_worse: tuple[ModelScores, ModelScores],
) -> None:
    better, worse = better_and_worse
    table = summary_table([worse, better])
    assert table["model"].tolist() == ["a", "b"]
    assert np.isnan(table.loc[0, "p_vs_best"])
    p_value = scipy.stats.ttest_rel(better.dice_auc, worse.dice_auc).pvalue
    assert table.loc[1, "p_vs_best"] == pytest.approx(p_value)
    assert table.loc[1, "failures"] == 1 and table.loc[1, "failure_rule"] == "scored 0"


def test_hierarchy_columns_with_their_cis(
    better_and_worse: tuple[ModelScores, ModelScores],
) -> None:
    better, worse = better_and_worse
    worse.hierarchy = {
        "hier/table_farther": np.array([True, True, True, False]),
        "hier/dist0_title": np.array([1.0, 2.0], dtype=np.float32),
    }
    table = summary_table([better, worse])
    assert table.columns[-6:].tolist() == [
        "hier/table_farther", "hier/table_farther_ci95_low", "hier/table_farther_ci95_high",
        "hier/dist0_title", "hier/dist0_title_ci95_low", "hier/dist0_title_ci95_high",
    ]  # fmt: skip
    row = table.loc[1]
    assert np.isnan(table.loc[0, "hier/table_farther"])
    # 3 of 4 pairs: Wilson (0.301-0.954); distances 1 and 2: the t interval.
    low, high = row["hier/table_farther_ci95_low"], row["hier/table_farther_ci95_high"]
    assert (row["hier/table_farther"], low, high) == pytest.approx((0.75, 0.3006, 0.9544), abs=1e-4)
    t_low, t_high = scipy.stats.t.interval(0.95, 1, loc=1.5, scale=0.5)
    assert row["hier/dist0_title_ci95_low"] == pytest.approx(t_low)
    assert row["hier/dist0_title_ci95_high"] == pytest.approx(t_high)
    markdown = markdown_table(table)
    assert "| model | table farther | dist0 title |" in markdown
    assert f"| b | 0.750 (0.301-0.954) | 1.500 ({t_low:.3f}-{t_high:.3f}) |" in markdown
    assert "| a | - | - |" in markdown  # no embedding space
    assert "recall" not in markdown  # nobody retrieves
    assert "table farther" not in markdown_table(summary_table([better]))


def with_hits(scores: ModelScores, t2b: list[bool]) -> ModelScores:
    """`scores` with recall@10 hits (t2b as given, b2t all found)."""
    scores.retrieval = {
        "recall@10_t2b": np.array(t2b),
        "recall@10_b2t": np.ones(len(t2b), dtype=bool),
    }
    return scores


def test_retrieval_table_with_wilson_cis_and_mcnemar(
    better_and_worse: tuple[ModelScores, ModelScores],
) -> None:
    better, worse = better_and_worse
    baseline = ModelScores("c", "c.ckpt", worse.curves / 2, worse.pearson, worse.known, None)
    with_hits(better, [False, False, True, False, False])  # 1 of 5
    with_hits(worse, [True, True, True, True, False])  # 4 of 5: the best t2b
    table = summary_table([better, worse, baseline]).set_index("model")
    assert table.loc["b", "recall@10_t2b"] == 0.8 and table.loc["a", "recall@10_t2b"] == 0.2
    assert (
        table.loc["b", "recall@10_t2b_ci95_low"],
        table.loc["b", "recall@10_t2b_ci95_high"],
    ) == (
        pytest.approx((0.3755, 0.9638), abs=1e-4)  # Wilson of 4/5
    )
    # b is t2b's best; a finds 0 that b misses, b 3 that a misses: exact McNemar 2/8.
    assert np.isnan(table.loc["b", "recall@10_t2b_p_vs_best"])
    assert table.loc["a", "recall@10_t2b_p_vs_best"] == pytest.approx(0.25)
    # b2t: a tie, a (first) is the best, b's p is 1.
    assert np.isnan(table.loc["a", "recall@10_b2t_p_vs_best"])
    assert table.loc["b", "recall@10_b2t_p_vs_best"] == 1.0
    assert table.loc["c", ["recall@10_t2b", "recall@10_t2b_ci95_low"]].isna().all()

    markdown = markdown_table(summary_table([better, worse, baseline]))
    assert "| model | recall@10 t2b | recall@10 b2t |" in markdown
    assert "| b | 0.800 (0.376-0.964) | 1.000 (0.566-1.000), p 1 |" in markdown
    assert "| a | 0.200 (0.036-0.624), p 0.25 | 1.000 (0.566-1.000) |" in markdown
    assert "| c | - | - |" in markdown  # no embedding space
    assert "exact McNemar" in markdown


def test_per_article_table_has_the_hits(
    better_and_worse: tuple[ModelScores, ModelScores],
) -> None:
    better, worse = better_and_worse
    with_hits(better, [False, False, True, False, False])
    table = per_article_table([better, worse], list("vwxyz"), list("VWXYZ"))
    assert table.loc[table["model"] == "a", "recall@10_t2b"].tolist() == [0, 0, 1, 0, 0]
    assert table.loc[table["model"] == "b", "recall@10_t2b"].isna().all()
