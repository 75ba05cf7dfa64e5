"""`text2brain compare` (text2brain.compare.cli) end to end on the synthetic corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import wandb
import yaml
from model_configs import tiny_init_args
from synthetic import make_corpus, small_space, write_mask

from text2brain.cli import main
from text2brain.corpus.jsonl import write_jsonl_corpus

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_compare_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, contrastive_runs: dict[str, dict[str, Any]]
) -> None:
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
        "{filename: best, monitor: val/dice_auc, mode: max}}]",
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
            # A checkpoint of the session's tiny MNM (the same generated corpus): it adds the
            # hierarchy measures.
            "mnm": str(contrastive_runs["mnm"]["path"]),
        },
        "queries": ["vision", "quantum chromodynamics"],
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    try:
        main(["compare", str(path), "--wandb-group", "test-compare"])
    finally:  # end the (disabled) wandb session: later tests' runs read their own settings
        wandb.teardown()

    out = tmp_path / "out"
    table = pd.read_csv(out / "results.csv")
    assert set(table["model"]) == {"corpus_mean", "vision_only", "neurosynth", "mnm"}
    assert table["articles"].tolist() == [8, 8, 8, 8]
    hierarchy = table.set_index("model")["hier/table_in_cone"]
    assert hierarchy.isna().sum() == 3 and 0 <= hierarchy["mnm"] <= 1
    # The head with an embedding space adds recall both ways, with Wilson CIs; 8 articles:
    # every match is among the 10 nearest.
    mnm = table.set_index("model").loc["mnm"]
    for name in ("recall@10_t2b", "recall@100_t2b", "recall@10_b2t", "recall@100_b2t"):
        assert table[name].isna().sum() == 3 and mnm[name] == 1.0
        assert mnm[f"{name}_ci95_low"] < 1.0 == mnm[f"{name}_ci95_high"]
    for name in ("hier/table_in_cone", "hier/dist0_article"):
        assert mnm[f"{name}_ci95_low"] <= mnm[name] <= mnm[f"{name}_ci95_high"]
    assert (table["ci95_low"] <= table["dice_auc"]).all()
    assert (table["dice_auc"] <= table["ci95_high"]).all()
    assert table["p_vs_best"].isna().sum() == 1
    per_article = pd.read_csv(out / "per_article.csv")
    assert len(per_article) == 4 * 8
    vision_only = per_article[per_article["model"] == "vision_only"]
    failures = ~vision_only["text"].str.contains("vision")
    assert 0 < failures.sum() < 8
    assert (vision_only["failure"] == failures).all()
    assert (vision_only.loc[failures, "dice_auc"] == 0).all()
    row = table.set_index("model").loc["vision_only"]
    assert row["failures"] == failures.sum() and row["failure_rule"] == "scored 0"
    assert "| vision_only |" in (out / "results.md").read_text()
    markdown = (out / "results.md").read_text()
    assert "| model | table in cone | table farther |" in markdown
    assert "| model | recall@10 t2b | recall@100 t2b | recall@10 b2t | recall@100 b2t |" in markdown
    assert "| corpus_mean | - | - | - | - |" in markdown
    assert per_article.loc[per_article["model"] == "mnm", "recall@10_t2b"].all()
    for figure in ("dice_curves.png", "queries.png"):
        assert (out / figure).stat().st_size > 1000
