"""The text-ridge head (text2brain.models.text_ridge): a closed-form readout of frozen text
embeddings, the Text2Brain readout without a decoder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import tiny_datamodule

from text2brain.models.closed_form import ClosedFormModule
from text2brain.models.ridge import fit_ridge
from text2brain.models.text_ridge import TextRidge, TextRidgeInference

#: Registered name -> tiny init_args (tests/model_configs.py gathers it for the registry tests).
TINY_CONFIGS = {
    "text_ridge": lambda encoder: {
        "text": {"encoder": encoder, "pretrained": False},
        "rank": 4,
        "alpha_grid": [0.1, 1.0, 10.0],
    }
}


def test_the_penalty_is_chosen_on_validation(
    closed_form_heads: dict[str, ClosedFormModule],
) -> None:
    model = closed_form_heads["text_ridge"]
    assert float(model.alpha) > 0
    assert model.readout_in.shape[1] == 4
    assert bool(model.readout_out.abs().sum() > 0)


def test_the_fit_is_the_ridge_of_every_text_on_its_articles_map(
    fit_closed_form: Callable[..., ClosedFormModule], data_files: dict[str, str], tiny_bert: Path
) -> None:
    """The head's maps are mean + ridge of (title, keywords, abstract) -> their article's
    transformed map, refitted here row by row with the repeated maps copied out."""
    model = fit_closed_form("text_ridge", alpha=1.0, rank=None)
    data = tiny_datamodule(data_files)
    data.setup()
    texts, rows = data.article_texts("train", ("title", "keywords", "abstract"))
    assert len(set(rows.tolist())) == len(data.indices_of("train"))
    assert len(texts) > len(data.indices_of("train"))  # keywords and abstracts too
    _, maps = data.article_maps("train")
    with torch.no_grad():
        targets = model.normalise_target(torch.from_numpy(np.asarray(maps, np.float32)))
        embeddings = model.encode_texts(texts)
    assert torch.allclose(model.mean_map, targets.mean(0), atol=1e-6)
    fit = fit_ridge(
        embeddings, (targets - model.mean_map)[rows], [1.0], relative=True, dtype=torch.float64
    )
    queries = ["visual cortex", "working memory"]
    expected = model.mean_map + fit.intercept + model.encode_texts(queries) @ fit.coef
    torch.testing.assert_close(model.predict_texts(queries), expected, atol=1e-5, rtol=1e-4)


def test_leave_one_out_selection(fit_closed_form: Callable[..., ClosedFormModule]) -> None:
    model = fit_closed_form("text_ridge", alpha_selection="loo", sources=["title"])
    assert float(model.alpha) > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"alpha_selection": "dice"}, "alpha_selection must be one of"),
        ({"alpha_grid": []}, "alpha and alpha_grid must be > 0"),
        ({"alpha": -1.0}, "alpha and alpha_grid must be > 0"),
        ({"rank": 0}, "rank must be an int >= 1 or null, got 0"),
        ({"target_transform": "cube"}, "target_transform 'cube' is not one of"),
        ({"sources": ["title", "discussion"]}, "sources must be some of"),
        ({"sources": []}, "sources must be some of"),
    ],
)
def test_bad_arguments_are_refused(tiny_bert: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TextRidge(**{**TINY_CONFIGS["text_ridge"](str(tiny_bert)), **overrides})


def test_the_inference_class_predicts_the_fitted_heads_maps(
    closed_form_heads: dict[str, ClosedFormModule], tiny_bert: Path
) -> None:
    """`load_predictor`'s Lightning-free class: the same state dict, the same maps."""
    fitted = closed_form_heads["text_ridge"]
    inference = TextRidgeInference(text=fitted.hparams.text, rank=fitted.hparams.rank)
    inference.set_space(fitted.space)
    inference.load_state_dict(fitted.state_dict())
    queries = ["visual cortex", "working memory and pain"]
    torch.testing.assert_close(inference.predict_texts(queries), fitted.predict_texts(queries))


def test_a_bad_rank_in_an_exports_config_is_named(tiny_bert: Path) -> None:
    """model.json is outside the export's sha256 check: `rank: -5` ended in a RuntimeError."""
    from text2brain.checkpoint import CheckpointError, build_model

    hparams = {**TINY_CONFIGS["text_ridge"](str(tiny_bert)), "rank": -5}
    ckpt = {"hyper_parameters": hparams, "text2brain": {}, "state_dict": {}}
    with pytest.raises(
        CheckpointError, match=r"'model.json'.*rank must be an int >= 1 or null, got -5"
    ):
        build_model(Path("model.json"), TextRidgeInference, ckpt)
