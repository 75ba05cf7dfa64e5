"""text2brain.compare.report: the summary table, best first, with the paired t-test."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from text2brain.compare.report import markdown_table, summary_table
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


def test_hierarchy_columns_of_the_heads_that_have_them(
    better_and_worse: tuple[ModelScores, ModelScores],
) -> None:
    better, worse = better_and_worse
    worse.hierarchy = {"hier/table_farther": 0.75, "hier/dist0_title": 1.5}
    table = summary_table([better, worse])
    assert table.columns[-2:].tolist() == ["hier/table_farther", "hier/dist0_title"]
    assert np.isnan(table.loc[0, "hier/table_farther"]) and table.loc[1, "hier/dist0_title"] == 1.5
    markdown = markdown_table(table)
    assert "| model | table farther | dist0 title |" in markdown
    assert "| b | 0.750 | 1.500 |" in markdown and "| a | -" not in markdown
    assert "table farther" not in markdown_table(summary_table([better]))
