"""The ensemble head (text2brain.models.ensemble): registered heads' normalised maps, weighted."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from model_configs import tiny_model
from safetensors import safe_open
from synthetic import (
    QUERIES,
    quiet_trainer,
    tiny_datamodule,
    torch_threads,
    write_corpus_files,
    write_mask,
)

from text2brain.brain import BrainSpace
from text2brain.export import export_checkpoint
from text2brain.inference import load_predictor
from text2brain.models.ensemble import (
    Ensemble,
    EnsembleInference,
    average_ranks,
    normalise_maps,
    simplex_grid,
)

pytestmark = pytest.mark.usefixtures("one_thread")

#: The registered heads of the tiny config's members, fitted on the generated corpus.
TINY_MEMBERS = ("corpus_mean", "neuroquery")
#: A text without a term of the tiny vocabulary: the NeuroQuery-style member's map is all zero.
NO_TERM = "zebra finch song"


def fit_and_save(model: Any, files: dict[str, str], path: Path) -> Path:
    """`model` fitted on the corpus `files` (one closed-form step) and saved to `path`."""
    trainer = quiet_trainer(path.parent, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_datamodule(files))
    trainer.save_checkpoint(path)
    return path


@functools.cache
def tiny_members() -> dict[str, str]:
    """name -> checkpoint of the `TINY_MEMBERS` heads, fitted once per process on the generated
    corpus (written again, in a temporary folder removed at exit).

    The tiny config is called outside any fixture (by the registry-wide tests too), so its
    members are made here, on first use, rather than by a session fixture.
    """
    folder = Path(tempfile.mkdtemp(prefix="text2brain-ensemble-members-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    files = write_corpus_files(folder)
    with torch_threads(1):
        return {
            name: str(fit_and_save(tiny_model(name), files, folder / f"{name}.ckpt"))
            for name in TINY_MEMBERS
        }


#: Registered name -> tiny init_args (tests/model_configs.py gathers it for the registry tests).
TINY_CONFIGS = {"ensemble": lambda encoder: {"members": dict(tiny_members()), "weight_step": 0.25}}


def fitted(data_files: dict[str, str], **init_args: Any) -> Ensemble:
    """An ensemble fitted on the generated corpus, in eval mode."""
    model = Ensemble(**init_args)
    quiet_trainer(max_epochs=1, limit_val_batches=0).fit(
        model, datamodule=tiny_datamodule(data_files)
    )
    return model.eval()


def copied(paths: dict[str, Path | str], folder: Path) -> dict[str, str]:
    """Copies of member checkpoints in `folder` (so a test may delete them)."""
    folder.mkdir(exist_ok=True)
    return {name: shutil.copy(path, folder / f"{name}.ckpt") for name, path in paths.items()}


# -- maths ----------------------------------------------------------------------------------------
def test_maps_are_normalised_one_by_one_and_constant_maps_stay_zero() -> None:
    maps = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0] * 4, [5.0] * 4, [1.0, 1.0, 3.0, 2.0]])
    z = normalise_maps(maps, "zscore")
    torch.testing.assert_close(z[0], (maps[0] - 1.5) / maps[0].std(unbiased=False))
    assert bool(z[1:3].eq(0).all()) and bool(torch.isfinite(z).all())
    torch.testing.assert_close(normalise_maps(3 * maps + 7, "zscore"), z)  # scale-free
    ranks = normalise_maps(maps, "rank")
    torch.testing.assert_close(ranks[0], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
    torch.testing.assert_close(ranks[3], torch.tensor([-2 / 3, -2 / 3, 1.0, 1 / 3]))
    assert bool(ranks[1:3].eq(0).all())
    torch.testing.assert_close(average_ranks(maps[3:]), torch.tensor([[0.5, 0.5, 3.0, 2.0]]))
    with pytest.raises(ValueError, match="normalise must be one of"):
        normalise_maps(maps, "max")


def test_the_weight_grid_is_the_simplex() -> None:
    torch.testing.assert_close(
        simplex_grid(2, 4)[:, 0], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    )
    grid = simplex_grid(3, 10)
    assert grid.shape == (66, 3) and len({tuple(row) for row in grid.tolist()}) == 66
    assert bool((grid >= 0).all()) and torch.allclose(grid.sum(1), torch.ones(66, dtype=grid.dtype))
    assert simplex_grid(1, 10).tolist() == [[1.0]]


# -- the fit --------------------------------------------------------------------------------------
def test_the_better_member_gets_the_weight(data_files: dict[str, str], tmp_path: Path) -> None:
    """The NeuroQuery-style member against the corpus mean with its voxels shuffled (noise)."""
    noise = torch.load(tiny_members()["corpus_mean"], map_location="cpu", weights_only=True)
    mean_map = noise["state_dict"]["mean_map"]
    shuffle = torch.randperm(len(mean_map), generator=torch.Generator().manual_seed(0))
    noise["state_dict"]["mean_map"] = mean_map[shuffle]
    torch.save(noise, tmp_path / "noise.ckpt")
    members = {"noise": str(tmp_path / "noise.ckpt"), "terms": tiny_members()["neuroquery"]}
    with pytest.warns(UserWarning, match="'terms' alone scores best on validation"):
        model = fitted(data_files, members=members, weight_step=0.25)
    assert model.weights_by_member == {"noise": 0.0, "terms": 1.0}
    assert model.weight_grid[:, 0].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    scores = model.validation_scores.tolist()
    assert scores[0] == max(scores) and scores[0] > scores[-1] + 0.02  # terms alone, noise alone


def test_the_tiny_ensemble_chose_the_best_point(closed_form_heads: dict[str, Any]) -> None:
    model = closed_form_heads["ensemble"]
    assert model.weight_grid.shape == (5, 2) and model.validation_scores.shape == (5,)
    best = int(model.validation_scores.argmax())
    assert model.member_weights.tolist() == model.weight_grid[best].tolist()
    assert sum(model.weights_by_member.values()) == pytest.approx(1.0)


def test_given_weights_are_used(data_files: dict[str, str]) -> None:
    weights = {"corpus_mean": 0.25, "neuroquery": 0.75}
    model = fitted(data_files, members=tiny_members(), weights=weights)
    assert model.weights_by_member == weights
    assert model.weight_grid.tolist() == [[0.25, 0.75]] and model.validation_scores.shape == (1,)
    texts = [*QUERIES, NO_TERM]
    alone = {
        name: load_predictor(path, device="cpu").model.predict_texts(texts)
        for name, path in tiny_members().items()
    }
    assert not alone["neuroquery"][-1].any()  # no known term: all zero, which stays zero
    expected = sum(weights[n] * normalise_maps(alone[n], "zscore") for n in weights)
    got = model.predict_texts(texts)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got[-1], 0.25 * normalise_maps(alone["corpus_mean"], "zscore")[-1])
    assert bool(torch.isfinite(got).all())


# -- one checkpoint -------------------------------------------------------------------------------
def test_the_checkpoint_holds_its_members(
    data_files: dict[str, str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A Text2Brain member (its Lightning-free class) and a term head with its vocabulary:
    saved, the member files deleted, loaded back (checkpoint, export, `test --ckpt_path`) with
    the same maps."""
    sources = {"text2brain": tiny_checkpoint, "terms": tiny_members()["neuroquery"]}
    members = copied(sources, tmp_path / "members")
    model = Ensemble(members=members, normalise="rank", weight_step=0.5)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_datamodule(data_files))
    trainer.save_checkpoint(tmp_path / "ensemble.ckpt")
    texts = [*QUERIES, NO_TERM]
    expected = model.eval().predict_texts(texts).numpy()
    shutil.rmtree(tmp_path / "members")

    saved = torch.load(tmp_path / "ensemble.ckpt", map_location="cpu", weights_only=True)
    section = saved["text2brain"]["members"]
    assert list(section) == ["text2brain", "terms"]
    assert section["terms"]["text2brain"]["vocabulary"]["terms"][:2] == ["vision", "audition"]
    assert saved["state_dict"]["members.terms.coef"].dtype == torch.float16  # as alone
    assert any(k.startswith("members.text2brain.") for k in saved["state_dict"])

    predictor = load_predictor(tmp_path / "ensemble.ckpt", device="cpu")
    assert type(predictor.model) is EnsembleInference  # Lightning-free, its members too
    assert type(predictor.model.members["text2brain"]).__name__ == "Text2BrainInference"
    assert predictor.model.weights_by_member == model.weights_by_member
    assert np.allclose(predictor.predict_vectors(texts), expected, atol=1e-5)
    export_checkpoint(tmp_path / "ensemble.ckpt", tmp_path / "export", dtype="float32")
    exported = load_predictor(tmp_path / "export", device="cpu")
    assert np.allclose(exported.predict_vectors(texts), expected, atol=1e-5)

    fresh = Ensemble(members=members, normalise="rank", weight_step=0.5)
    (results,) = quiet_trainer(tmp_path).test(
        fresh, datamodule=tiny_datamodule(data_files), ckpt_path=tmp_path / "ensemble.ckpt"
    )
    assert 0 < results["test/dice_auc"] <= 0.25
    assert fresh.weights_by_member == model.weights_by_member


def test_an_export_takes_the_members_unchanged_encoders_from_the_base(
    data_files: dict[str, str], tiny_bert: Path, tmp_path: Path
) -> None:
    """Members with a frozen encoder (text-ridge, retrieval) store no encoder weights in the
    export: like a head alone, they come from the installed base encoder, fingerprint-checked;
    the retrieval member's bank of articles is a side file of its own."""
    members = {"mean": tiny_members()["corpus_mean"]}
    for name in ("text_ridge", "retrieval"):
        head = tiny_model(name, tiny_bert, text={"pretrained": True})  # the base weights
        members[name] = str(fit_and_save(head, data_files, tmp_path / f"{name}.ckpt"))
    weights = {"mean": 0.25, "text_ridge": 0.5, "retrieval": 0.25}
    model = fitted(data_files, members=members, weights=weights)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "ensemble.ckpt")
    expected = model.predict_texts(list(QUERIES)).numpy()

    summary = export_checkpoint(tmp_path / "ensemble.ckpt", tmp_path / "export", dtype="float32")
    encoder_keys = [k for k in model.state_dict() if ".text_encoder." in k]
    assert encoder_keys and summary.n_base_encoder_tensors == len(encoder_keys)
    stored = safe_open(tmp_path / "export" / "model.safetensors", "pt").keys()
    assert not [k for k in stored if ".text_encoder." in k]
    assert set(summary.side_files) == {"members.retrieval.bank.json"}
    config = (tmp_path / "export" / "model.json").read_text()
    assert '"titles"' not in config and '"members.retrieval.bank.json"' in config
    exported = load_predictor(tmp_path / "export", device="cpu")
    assert np.allclose(exported.predict_vectors(list(QUERIES)), expected, atol=1e-5)


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("init_args", "message"),
    [
        ({"members": {}}, "members must map at least one name"),
        ({"members": ["a.ckpt"]}, "members must map at least one name"),
        ({"members": {"a.b": "a.ckpt"}}, "member name 'a.b' is not allowed"),
        ({"members": {"keys": "a.ckpt"}}, "member name 'keys' is not allowed"),
        ({"members": {"a": ""}}, "member 'a': its path must be a non-empty str"),
        ({"normalise": "max"}, "normalise must be one of"),
        ({"weight_step": 0.3}, "weight_step must be 1/n"),
        ({"weight_step": 0}, "weight_step must be 1/n"),
        ({"weights": {"a": 1.0}}, r"one weight per member \['a', 'b'\], got \['a'\]"),
        ({"weights": {"a": 1.5, "b": -0.5}}, r"finite numbers >= 0, got \{'b': -0.5\}"),
        ({"weights": {"a": 0.5, "b": 0.6}}, "weights must sum to 1, got 1.1"),
    ],
)
def test_bad_arguments_are_refused(init_args: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Ensemble(**{"members": {"a": "a.ckpt", "b": "b.ckpt"}, **init_args})


def test_a_grid_too_large_is_refused() -> None:
    members = {f"m{i}": f"m{i}.ckpt" for i in range(6)}
    with pytest.raises(ValueError, match="weight_step 0.01 over 6 members makes 96,560,646"):
        Ensemble(members=members, weight_step=0.01)
    Ensemble(members=members, weight_step=0.01, weights={n: 1 / 6 for n in members})


def test_members_that_cannot_serve_are_named_at_fit(
    data_files: dict[str, str], space: BrainSpace, tmp_path: Path
) -> None:
    good = tiny_members()["corpus_mean"]
    with pytest.raises(FileNotFoundError, match="ensemble member 'ghost': checkpoint .* not exist"):
        fitted(data_files, members={"mean": good, "ghost": str(tmp_path / "ghost.ckpt")})
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="ensemble member 'junk': .* not a text2brain checkpoint"):
        fitted(data_files, members={"mean": good, "junk": str(tmp_path / "junk.ckpt")})
    mask = space.mask.copy()
    mask[tuple(np.argwhere(mask)[0])] = False  # one brain voxel less
    other = {
        **data_files,
        "mask": str(write_mask(BrainSpace(mask, space.affine), tmp_path / "other.nii.gz")),
        "split_file": str(tmp_path / "split.json"),
    }
    elsewhere = fit_and_save(tiny_model("corpus_mean"), other, tmp_path / "elsewhere.ckpt")
    with pytest.raises(ValueError, match="ensemble member 'elsewhere' .* data's grid and mask"):
        fitted(data_files, members={"mean": good, "elsewhere": str(elsewhere)})
