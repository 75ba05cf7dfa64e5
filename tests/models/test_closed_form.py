"""What the closed-form heads (corpus mean, NeuroQuery-style, Neurosynth-style) share as
`ClosedFormModule`s, each with its tiny config on the synthetic corpus: bad input, the
checkpoint -> `load_predictor` -> NIfTI path, validating before any fit and the shipped
configs. Each head's own maths is tested in its module (test_neuroquery.py, ...), the
term-based heads' in components/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from model_configs import TINY_SYNONYMS, TINY_TERMS, tiny_model
from synthetic import quiet_trainer, tiny_datamodule

from text2brain.brain import BrainSpace
from text2brain.inference import load_predictor
from text2brain.models import MODELS, model_class
from text2brain.models.closed_form import ClosedFormModule
from text2brain.models.components.term_head import TermHead

#: The registered heads fitted in closed form (no optimizer).
CLOSED_FORM = tuple(sorted(name for name in MODELS if not model_class(name).trains_by_gradient))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_bad_queries_get_the_predictor_errors(
    name: str, closed_form_heads: dict[str, ClosedFormModule]
) -> None:
    model = closed_form_heads[name]
    with pytest.raises(ValueError, match=r"texts\[1\] is empty or whitespace-only"):
        model.predict_texts(["vision", "  "])
    with pytest.raises(TypeError, match="single str"):
        model.predict_texts("vision")


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_checkpoint_to_predictor_to_nifti(
    name: str, data_files: dict[str, str], space: BrainSpace, tmp_path: Path, tiny_bert: Path
) -> None:
    model = tiny_model(name, tiny_bert)
    fit = quiet_trainer(max_epochs=1, limit_val_batches=0)
    fit.fit(model, datamodule=tiny_datamodule(data_files))
    path = tmp_path / f"{name}.ckpt"
    fit.save_checkpoint(path)

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if issubclass(model_class(name), TermHead):
        vocabulary = checkpoint["text2brain"]["vocabulary"]
        assert vocabulary["terms"][:4] == TINY_TERMS[:4]
        assert vocabulary["synonyms"] == TINY_SYNONYMS
    if name == "neuroquery":
        assert checkpoint["state_dict"]["coef"].dtype == torch.float16

    predictor = load_predictor(path, device="cpu")
    texts = ["vision", "motor cortex"]
    images = predictor.predict_maps(texts)
    assert all(isinstance(image, nib.Nifti1Image) for image in images)
    assert images[0].shape == space.shape and np.allclose(images[0].affine, space.affine)
    model.eval()
    expected = model.predict_texts(texts).numpy()
    assert np.allclose(space.to_vector(np.asarray(images[1].dataobj)), expected[1], atol=1e-6)
    assert np.allclose(predictor.predict_vectors(texts), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"texts\[0\] is empty"):
        predictor.predict_maps([""])


def test_validate_without_fit_fits_first(data_files: dict[str, str], tmp_path: Path) -> None:
    model = model_class("corpus_mean")()
    assert not model.is_fitted
    (results,) = quiet_trainer(max_epochs=1).validate(model, datamodule=tiny_datamodule(data_files))
    assert model.is_fitted and model.mean_map.abs().sum() > 0
    assert 0 < results["val/dice_auc"] <= 0.25


# -- configs and the command line ----------------------------------------------------------------
@pytest.mark.parametrize("name", CLOSED_FORM)
def test_shipped_configs_parse(name: str, shipped_config: Callable[[str], dict[str, Any]]) -> None:
    printed = shipped_config(name)
    assert printed["model"]["class_path"] == MODELS[name]
    assert printed["data"]["corpus"] == "neuroquery"
    assert printed["trainer"]["precision"] == "32-true"
    callbacks = printed["trainer"]["callbacks"]
    dirpaths = [c["init_args"].get("dirpath") for c in callbacks]
    assert f"checkpoints/{name}" in dirpaths
    # No learning-rate monitor: it refuses to run without an optimizer.
    assert not any(c["class_path"].endswith("LearningRateMonitor") for c in callbacks)


def test_a_checkpoint_given_to_test_is_loaded_not_refitted(
    closed_form_heads: dict[str, ClosedFormModule],
    data_files: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lightning restores `--ckpt_path` after `setup`: the head must not fit before that."""
    run = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    run.fit(tiny_model("corpus_mean"), datamodule=tiny_datamodule(data_files))
    run.save_checkpoint(tmp_path / "mean.ckpt")
    fresh = tiny_model("corpus_mean")
    monkeypatch.setattr(fresh, "fit_closed_form", lambda datamodule: pytest.fail("refitted"))
    (results,) = quiet_trainer(tmp_path).test(
        fresh, datamodule=tiny_datamodule(data_files), ckpt_path=tmp_path / "mean.ckpt"
    )
    assert fresh.is_fitted and 0 < results["test/dice_auc"] <= 0.25
    expected = closed_form_heads["corpus_mean"].mean_map
    torch.testing.assert_close(fresh.mean_map, expected)
