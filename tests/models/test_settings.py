"""Settings groups (text2brain.models.settings): building, plain dicts, and format-2 names."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from text2brain.inference import load_predictor
from text2brain.models.formats import CHECKPOINT_FORMAT, upgrade_checkpoint
from text2brain.models.settings import (
    BrainEncoderSettings,
    DecoderSettings,
    OptimSettings,
    TextEncoderSettings,
    as_plain,
    as_settings,
    group_legacy_hparams,
    legacy_names,
)

TEXTS = ["working memory in the prefrontal cortex", "pain and the insula"]


def test_as_settings_takes_an_instance_a_mapping_or_none() -> None:
    given = TextEncoderSettings(max_length=64)
    assert as_settings(TextEncoderSettings, given) is given
    assert as_settings(TextEncoderSettings, None) == TextEncoderSettings()
    built = as_settings(DecoderSettings, {"channels": [8, 4], "dropout": 0.1})
    assert built.channels == (8, 4) and built.dropout == 0.1 and built.seed_channels == 64
    # Format 2 stored None for "the paper's value"; a field whose default is None keeps None.
    assert as_settings(DecoderSettings, {"seed_shape": None}).seed_shape == (4, 5, 4)
    assert as_settings(BrainEncoderSettings, {"crop": None}).crop is None


def test_as_settings_names_what_is_wrong() -> None:
    with pytest.raises(TypeError, match=r"OptimSettings has no setting \['learning_rate'\]"):
        as_settings(OptimSettings, {"learning_rate": 1.0})
    with pytest.raises(TypeError, match="expects a mapping, got int"):
        as_settings(OptimSettings, 3)
    with pytest.raises(ValueError, match="optim.schedule must be one of"):
        OptimSettings(schedule="step")
    with pytest.raises(ValueError, match="optim.warmup_steps must be a number >= 0"):
        OptimSettings(warmup_steps=-1)
    with pytest.raises(ValueError, match="text.max_length must be an int >= 1"):
        TextEncoderSettings(max_length=0)
    with pytest.raises(ValueError, match="text.freeze_layers must be an int >= 0"):
        TextEncoderSettings(freeze_layers=True)


def test_as_plain_gives_yaml_and_json_friendly_values() -> None:
    plain = as_plain({"decoder": DecoderSettings(), "k": (1, 2), "x": 3})
    assert plain["decoder"]["channels"] == [32, 16, 8]
    assert plain["k"] == [1, 2] and plain["x"] == 3
    assert as_settings(DecoderSettings, plain["decoder"]) == DecoderSettings()


def test_format_2_names_move_into_their_groups() -> None:
    text2brain = {
        "encoder": "x",
        "pooling": "mean",
        "seed_channels": 8,
        "channels": [8, 4],
        "dropout": 0.2,
        "lr": 0.1,
        "readout": "ridge",
    }
    grouped, renamed = group_legacy_hparams(text2brain)
    assert grouped == {
        "text": {"encoder": "x", "pooling": "mean"},
        "decoder": {"seed_channels": 8, "channels": [8, 4], "dropout": 0.2},
        "optim": {"lr": 0.1},
        "readout": "ridge",
    }
    assert renamed["channels"] == "decoder.channels" and renamed["lr"] == "optim.lr"
    clip, _ = group_legacy_hparams({"encoder": "x", "brain_channels": [4], "brain_dropout": 0.0})
    assert clip == {"text": {"encoder": "x"}, "brain": {"channels": [4], "dropout": 0.0}}
    # Neurosynth's own `activation` is not Text2Brain's decoder activation.
    neurosynth = {"vocabulary": "neuroquery", "activation": "sphere", "fdr_q": 0.01}
    assert group_legacy_hparams(neurosynth) == (neurosynth, {})
    # Already grouped: nothing moves.
    assert group_legacy_hparams(grouped) == (grouped, {})
    assert legacy_names()["brain_crop"] == "brain.crop"


def _as_format_2(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A format-3 checkpoint written back as format 2 wrote it: every setting flat."""
    old = copy.deepcopy(checkpoint)
    flat: dict[str, Any] = {}
    for key, value in old["hyper_parameters"].items():
        if key == "brain":
            flat.update({f"brain_{k}": v for k, v in value.items()})
        elif isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    old["hyper_parameters"] = flat
    old["text2brain"]["format_version"] = 2
    return old


def test_a_format_2_checkpoint_loads_with_the_same_maps(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["text2brain"]["format_version"] == CHECKPOINT_FORMAT
    assert set(checkpoint["hyper_parameters"]) >= {"text", "decoder", "optim", "readout"}
    old = _as_format_2(checkpoint)
    assert "encoder_lr" in old["hyper_parameters"]
    torch.save(old, tmp_path / "format2.ckpt")
    expected = load_predictor(tiny_checkpoint, device="cpu").predict_vectors(TEXTS)
    loaded = load_predictor(tmp_path / "format2.ckpt", device="cpu")
    np.testing.assert_array_equal(loaded.predict_vectors(TEXTS), expected)
    upgraded = upgrade_checkpoint(copy.deepcopy(old))
    assert upgraded["hyper_parameters"]["decoder"] == checkpoint["hyper_parameters"]["decoder"]
    # Format 2 had no target transform: its Text2Brain trained on untransformed targets.
    del old["hyper_parameters"]["target_transform"]
    assert upgrade_checkpoint(old)["hyper_parameters"]["target_transform"] == "none"


@pytest.mark.parametrize(
    ("class_path", "hparams", "expected"),
    [
        # A format-3 contrastive head read max-scaled maps; the default is "mass" now.
        ("text2brain.models.contrastive.MNM", {"brain": {"channels": [8]}}, {"input_scale": "max"}),
        (
            "text2brain.models.contrastive.CLIP",
            {"brain": {"input_scale": "mass"}},
            {"input_scale": "mass"},
        ),
        # A format-3 retrieval head averaged untransformed maps; the default is power 0.1 now.
        ("text2brain.models.retrieval.Retrieval", {"k": 5}, {"target_transform": "none"}),
        (
            "text2brain.models.retrieval.Retrieval",
            {"target_transform": "sqrt"},
            {"target_transform": "sqrt"},
        ),
    ],
)
def test_a_format_3_checkpoint_keeps_the_scales_it_was_trained_with(
    class_path: str, hparams: dict, expected: dict
) -> None:
    checkpoint = {
        "text2brain": {"format_version": 3, "class_path": class_path},
        "hyper_parameters": hparams,
        "state_dict": {},
    }
    upgraded = upgrade_checkpoint(checkpoint)["hyper_parameters"]
    assert upgraded.get("brain", upgraded).items() >= expected.items()
