"""`text2brain compare` end to end on the synthetic corpus, and its statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
import yaml
from model_configs import tiny_init_args
from synthetic import make_corpus, small_space, write_mask

from text2brain.cli import main
from text2brain.compare import ModelScores, load_spec, mean_ci, summary_table
from text2brain.corpus.jsonl import write_jsonl_corpus
from text2brain.metrics import DICE_THRESHOLDS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mean_ci_and_paired_test() -> None:
    values = np.array([0.05, 0.07, 0.06, 0.08, 0.04])
    mean, low, high = mean_ci(values)
    expected = scipy.stats.t.interval(0.95, 4, loc=values.mean(), scale=scipy.stats.sem(values))
    assert (low, high) == pytest.approx(expected) and mean == pytest.approx(values.mean())

    curves = np.tile(np.linspace(0.1, 0.3, len(DICE_THRESHOLDS)), (5, 1))
    better = ModelScores("a", "a.ckpt", curves + 0.1, np.zeros(5), np.ones(5, bool), None)
    known = np.array([True, True, False, True, True])
    worse = ModelScores("b", "b.ckpt", curves, np.zeros(5), known, "zero")
    table = summary_table([worse, better])
    assert table["model"].tolist() == ["a", "b"]
    assert np.isnan(table.loc[0, "p_vs_best"])
    p_value = scipy.stats.ttest_rel(better.dice_auc, worse.dice_auc).pvalue
    assert table.loc[1, "p_vs_best"] == pytest.approx(p_value)
    assert worse.dice_auc[2] == 0 and worse.dice_auc[0] > 0  # no answer scores 0
    assert table.loc[1, "failures"] == 1 and table.loc[1, "failure_rule"] == "scored 0"


def test_bad_comparison_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "compare.yaml"
    path.write_text("models: {}\n")
    with pytest.raises(ValueError, match="non-empty 'models'"):
        load_spec(path)
    path.write_text("models: {a: a.ckpt}\nmodel: x\n")
    with pytest.raises(ValueError, match=r"unknown keys \['model'\]"):
        load_spec(path)
    path.write_text("models: {a: {args: [x]}}\n")
    with pytest.raises(ValueError, match="model 'a' needs a config or checkpoint"):
        load_spec(path)
    path.write_text("models: {a: a.ckpt}\nqueries: ['']\n")
    with pytest.raises(ValueError, match="queries"):
        load_spec(path)


def test_compare_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space = small_space()
    data = {
        "corpus": str(write_jsonl_corpus(make_corpus(space), tmp_path / "corpus.jsonl")),
        "mask": str(write_mask(space, tmp_path / "mask.nii.gz")),
        "split_file": str(tmp_path / "split.json"),
        "n_test": 8,
        "n_val": 8,
        "keyword_max_df": 0.05,
        "num_workers": 0,
    }
    # Fitted from the shipped configs with CSV logs and no figures (faster).
    quiet = [
        "--trainer.logger",
        "false",
        "--trainer.callbacks",
        "[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: "
        "{dirpath: ckpts, filename: best, monitor: val/dice_auc, mode: max}}]",
    ]
    tiny = tiny_init_args("neurosynth", "")
    synonyms = ["--model.init_args.synonyms", yaml.safe_dump(tiny["synonyms"]).strip()]
    spec = {
        "out_dir": str(tmp_path / "out"),
        "data": data,
        "models": {
            "corpus_mean": {"config": str(REPO / "configs" / "corpus_mean.yaml"), "args": quiet},
            # Only "vision" is known: the other topics' titles are failures (scored 0).
            "vision_only": {
                "config": str(REPO / "configs" / "neurosynth.yaml"),
                "args": [*quiet, "--model.init_args.vocabulary", "[vision]"]
                + ["--model.init_args.synonyms", "null"],
            },
            "neurosynth": {
                "config": str(REPO / "configs" / "neurosynth.yaml"),
                "args": [
                    *quiet,
                    *synonyms,
                    "--model.init_args.vocabulary",
                    str(tiny["vocabulary"]),
                ],
            },
        },
        "queries": ["vision", "quantum chromodynamics"],
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    main(["compare", str(path), "--wandb-group", "test-compare"])

    out = tmp_path / "out"
    table = pd.read_csv(out / "results.csv")
    assert set(table["model"]) == {"corpus_mean", "vision_only", "neurosynth"}
    assert table["articles"].tolist() == [8, 8, 8]
    assert (table["ci95_low"] <= table["dice_auc"]).all()
    assert (table["dice_auc"] <= table["ci95_high"]).all()
    assert table["p_vs_best"].isna().sum() == 1
    per_article = pd.read_csv(out / "per_article.csv")
    assert len(per_article) == 3 * 8
    vision_only = per_article[per_article["model"] == "vision_only"]
    failures = ~vision_only["text"].str.contains("vision")
    assert 0 < failures.sum() < 8
    assert (vision_only["failure"] == failures).all()
    assert (vision_only.loc[failures, "dice_auc"] == 0).all()
    row = table.set_index("model").loc["vision_only"]
    assert row["failures"] == failures.sum() and row["failure_rule"] == "scored 0"
    assert "| vision_only |" in (out / "results.md").read_text()
    for figure in ("dice_curves.png", "queries.png"):
        assert (out / figure).stat().st_size > 1000
