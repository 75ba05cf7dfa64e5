"""`text2brain export`: safetensors + JSON that `load_predictor` and `text2brain query` read.

The registry-parametrised round trip (every head exports and loads back) is in
models/test_base.py; here: leaving out the unchanged base encoder, half precision, a
contrastive head's bank in its side file, and every way an export can be bad.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from synthetic import train_tiny_text2brain

from text2brain.checkpoint import SIDE_FILES
from text2brain.cli import main
from text2brain.export import CONFIG_NAME, WEIGHTS_NAME, export_checkpoint
from text2brain.inference import CheckpointError, load_predictor

TEXTS = ["working memory", "move the tongue", "pain", "fear of faces in the amygdala"]
BANK_NAME = SIDE_FILES["bank"]


@pytest.fixture(scope="module")
def base_encoder(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """A private copy of the tiny BERT: one test changes its weights."""
    return Path(shutil.copytree(tiny_bert, tmp_path_factory.mktemp("base") / "bert"))


@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory: pytest.TempPathFactory, base_encoder: Path) -> Path:
    """Two steps of a Text2Brain whose pretrained encoder is entirely frozen."""
    return train_tiny_text2brain(
        tmp_path_factory.mktemp("export"),
        base_encoder,
        text={"pretrained": True, "freeze_embeddings": True, "freeze_layers": 2},
        readout="ridge",
    )


@pytest.fixture(scope="module")
def reference(frozen_checkpoint: Path) -> np.ndarray:
    return load_predictor(frozen_checkpoint, device="cpu").predict_vectors(TEXTS)


def test_export_leaves_out_the_unchanged_base_encoder(
    frozen_checkpoint: Path, reference: np.ndarray, tmp_path: Path
) -> None:
    summary = export_checkpoint(frozen_checkpoint, tmp_path / "slim", dtype="float32")
    full = export_checkpoint(
        frozen_checkpoint, tmp_path / "full", dtype="float32", keep_base_encoder=True
    )
    config = json.loads((tmp_path / "slim" / CONFIG_NAME).read_text())
    left_out = config["base_encoder"]["keys"]
    assert summary.n_base_encoder_tensors == len(left_out) > 0
    assert all(k.startswith("net.text_encoder.") for k in left_out)
    state = torch.load(frozen_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    encoder_bytes = sum(state[k].numel() * state[k].element_size() for k in left_out)
    assert full.n_base_encoder_tensors == 0
    # The difference is those tensors' bytes plus their entries in the safetensors header.
    assert encoder_bytes < full.weights_bytes - summary.weights_bytes < 1.1 * encoder_bytes
    assert config["checkpoint_format"] >= 2 and config["source"]["global_step"] == 2
    for folder in ("slim", "full", "slim/" + CONFIG_NAME, "slim/" + WEIGHTS_NAME):
        maps = load_predictor(tmp_path / folder, device="cpu").predict_vectors(TEXTS)
        assert np.array_equal(maps, reference), folder


def test_float16_export_is_half_the_size_and_close(
    frozen_checkpoint: Path, reference: np.ndarray, tmp_path: Path
) -> None:
    half = export_checkpoint(frozen_checkpoint, tmp_path / "half")
    single = export_checkpoint(frozen_checkpoint, tmp_path / "single", dtype="float32")
    assert half.weights_bytes < 0.6 * single.weights_bytes
    maps = load_predictor(tmp_path / "half", device="cpu").predict_vectors(TEXTS)
    assert maps.dtype == np.float32
    assert np.abs(maps - reference).max() < 1e-2 * np.abs(reference).max()
    for a, b in zip(maps, reference, strict=True):
        assert np.corrcoef(a, b)[0, 1] > 0.9999


def test_a_changed_base_encoder_is_refused(
    frozen_checkpoint: Path, base_encoder: Path, tmp_path: Path
) -> None:
    export_checkpoint(frozen_checkpoint, tmp_path / "export")
    from safetensors.torch import load_file, save_file

    weights = base_encoder / "model.safetensors"
    original = weights.read_bytes()
    try:
        tensors = load_file(weights)
        name = next(k for k in tensors if k.endswith("attention.self.query.weight"))
        tensors[name] = tensors[name] + 0.01
        save_file(tensors, weights, metadata={"format": "pt"})
        with pytest.raises(CheckpointError, match="needs the base text encoder"):
            load_predictor(tmp_path / "export", device="cpu")
    finally:
        weights.write_bytes(original)
    load_predictor(tmp_path / "export", device="cpu")


def _edit_config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / CONFIG_NAME).read_text())
    config.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def test_bad_exports_are_refused_with_reasons(frozen_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    export_checkpoint(frozen_checkpoint, folder)
    with pytest.raises(FileExistsError, match="already holds an export"):
        export_checkpoint(frozen_checkpoint, folder)
    export_checkpoint(frozen_checkpoint, folder, overwrite=True)
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_checkpoint(frozen_checkpoint, tmp_path / "x", dtype="int8")

    for version, advice in ((99, "upgrade text2brain"), (0, "export it again")):
        broken = Path(shutil.copytree(folder, tmp_path / f"v{version}"))
        _edit_config(broken, export_format=version)
        with pytest.raises(CheckpointError, match=f"export format {version}.*{advice}"):
            load_predictor(broken, device="cpu")

    damaged = Path(shutil.copytree(folder, tmp_path / "damaged"))
    with (damaged / WEIGHTS_NAME).open("r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_predictor(damaged, device="cpu")

    other = tmp_path / "other"
    other.mkdir()
    (other / CONFIG_NAME).write_text('{"name": "some other model"}')
    (other / WEIGHTS_NAME).write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a text2brain export config"):
        load_predictor(other, device="cpu")
    (other / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_predictor(other, device="cpu")

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(folder / CONFIG_NAME, lonely)
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
        load_predictor(lonely, device="cpu")
    with pytest.raises(CheckpointError, match="folder without model.json"):
        load_predictor(tmp_path, device="cpu")

    newer = Path(shutil.copytree(folder, tmp_path / "newer"))
    config = json.loads((newer / CONFIG_NAME).read_text())
    config["text2brain"]["format_version"] = 99
    (newer / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="checkpoint format 99 is newer"):
        load_predictor(newer, device="cpu")


def test_export_and_query_commands(
    frozen_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["export", str(frozen_checkpoint), "-o", str(tmp_path / "export")])
    out = capsys.readouterr().out
    assert "base-encoder tensors left out" in out and WEIGHTS_NAME in out
    export = tmp_path / "export"
    assert sorted(p.name for p in export.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    modes = {(export / name).stat().st_mode & 0o777 for name in (CONFIG_NAME, WEIGHTS_NAME)}
    assert len(modes) == 1  # safetensors alone writes 0600: both follow the umask
    with pytest.raises(SystemExit):
        main(["export", str(frozen_checkpoint), "-o", str(export)])
    err = capsys.readouterr().err
    assert "already holds an export; pass --overwrite" in err and "overwrite=True" not in err
    main(["query", "working memory", "--ckpt", str(tmp_path / "export"), "-o", str(tmp_path)])
    assert (tmp_path / "000_working_memory.nii.gz").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "missing.ckpt"), "-o", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "missing.ckpt' does not exist" in capsys.readouterr().err
    torch.save({"not": "a checkpoint"}, tmp_path / "bad.ckpt")
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "bad.ckpt"), "-o", str(tmp_path / "x")])
    assert "lacks" in capsys.readouterr().err


# -- contrastive heads: the bank in a side file, the frozen encoder left out ----------------------
@pytest.mark.parametrize("name", ["clip", "mnm"])
def test_contrastive_export_is_compact_and_loads_without_embedding_the_bank(
    frozen_contrastive_runs: dict[str, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    run = frozen_contrastive_runs[name]
    model, folder = run["model"], tmp_path / "export"
    summary = export_checkpoint(run["path"], folder, dtype="float32")
    assert sorted(p.name for p in folder.iterdir()) == [BANK_NAME, CONFIG_NAME, WEIGHTS_NAME]
    assert summary.side_files == {BANK_NAME: (folder / BANK_NAME).stat().st_size}
    assert summary.total_bytes == sum(p.stat().st_size for p in folder.iterdir())
    # The frozen text encoder comes from the base encoder, not from the export.
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["export_format"] == 2 and summary.n_base_encoder_tensors > 0
    assert all(k.startswith("net.text_encoder.") for k in config["base_encoder"]["keys"])
    # model.json stays a small config: the bank's texts are in bank.json, its tensors in the
    # weights (computed embeddings, float16; peaks, float32), and no dense map anywhere.
    assert config["text2brain"]["bank"] == {"__file__": BANK_NAME}
    assert set(config["files"]) == {BANK_NAME}
    assert model.bank.titles[0] not in (folder / CONFIG_NAME).read_text()
    bank = json.loads((folder / BANK_NAME).read_text(encoding="utf-8"))
    assert (bank["ids"], bank["titles"]) == (model.bank.ids, model.bank.titles)
    assert bank["keywords"] == model.bank.keywords
    from safetensors import safe_open

    with safe_open(folder / WEIGHTS_NAME, "pt") as weights:
        stored = {k: weights.get_tensor(k) for k in weights.keys()}  # noqa: SIM118
    in_bank = {k.removeprefix("text2brain/bank/"): v for k, v in stored.items() if "/bank/" in k}
    assert set(in_bank) == {"embeddings/", "peaks/xyz/", "peaks/offsets/", "peaks/weights/"}
    assert in_bank["embeddings/"].dtype == torch.float16
    assert in_bank["peaks/xyz/"].dtype == torch.float32
    assert not [k for k in stored if k.startswith("state/net.text_encoder.")]

    # Loading neither embeds the bank again nor needs the corpus: the same answers.
    def refuse(self: Any) -> None:
        raise AssertionError("the bank was embedded again at load")

    monkeypatch.setattr(type(model), "embed_bank", refuse)
    predictor = load_predictor(folder, device="cpu")
    assert predictor.model.bank_fresh
    assert torch.equal(predictor.model.bank.embeddings, model.bank.embeddings)
    found = predictor.related_articles("working memory", k=5)
    (expected,) = model.related_articles(["working memory"], k=5)
    assert [a.article_id for a in found] == [a.article_id for a in expected]
    assert np.allclose([a.distance for a in found], [a.distance for a in expected], atol=1e-3)
    assert np.allclose(predictor.predict_vectors(TEXTS), model.predict_texts(TEXTS), atol=1e-3)


def test_bank_side_file_is_checked_and_replaced(
    frozen_contrastive_runs: dict[str, dict[str, Any]], frozen_checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "export"
    export_checkpoint(frozen_contrastive_runs["mnm"]["path"], folder)
    damaged = Path(shutil.copytree(folder, tmp_path / "damaged"))
    text = (damaged / BANK_NAME).read_text(encoding="utf-8")
    (damaged / BANK_NAME).write_text(text.replace('"titles":["', '"titles":["X'), encoding="utf-8")
    with pytest.raises(CheckpointError, match="bank.json' does not match the sha256"):
        load_predictor(damaged, device="cpu")
    (damaged / BANK_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="lacks bank.json"):
        load_predictor(damaged, device="cpu")
    # Another head exported over it leaves no stale bank behind.
    export_checkpoint(frozen_checkpoint, folder, overwrite=True)
    assert not (folder / BANK_NAME).exists()
    assert "files" in json.loads((folder / CONFIG_NAME).read_text())
    load_predictor(folder, device="cpu")


def test_an_export_onto_a_full_disk_is_one_line_and_leaves_nothing(
    frozen_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It was a SafetensorError traceback, and an empty folder was left."""
    import safetensors.torch

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise safetensors.SafetensorError("Error while serializing: No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    out = tmp_path / "export"
    with pytest.raises(SystemExit) as info:
        main(["export", str(frozen_checkpoint), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and "No space left on device" in err
    assert err.startswith(f"text2brain export: error: cannot write '{out / WEIGHTS_NAME}'")
    assert not out.exists()
