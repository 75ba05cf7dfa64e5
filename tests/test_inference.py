"""Inference from a checkpoint (`text2brain.inference`); `text2brain query` is tested in query/.

The checkpoint (conftest's `tiny_checkpoint`) is a tiny Text2Brain trained for two steps by a
real Lightning run, so the loader is tested on what `text2brain fit` writes, not on a
hand-made imitation; the retrieval methods (related articles, describing a map) on the
contrastive heads trained once for the session (conftest's `contrastive_runs`).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from synthetic import QUERIES, small_space

import text2brain
import text2brain.checkpoint
import text2brain.precision
from text2brain.inference import CheckpointError, Predictor, load_predictor

TEXTS = ["working memory", "move the tongue", "pain", "fear of faces in the amygdala"]
UNICODE_TEXT = "Schmerz über 痛み 🧠"


pytestmark = pytest.mark.usefixtures("one_thread")


# -- a checkpoint written by Lightning ---------------------------------------------------------


@pytest.fixture(scope="module")
def _ckpt_dict(tiny_checkpoint: Path) -> dict[str, Any]:
    return torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)


@pytest.fixture
def ckpt_dict(_ckpt_dict: dict[str, Any]) -> dict[str, Any]:
    """A private copy of the checkpoint's contents, to break and save again."""
    return copy.deepcopy(_ckpt_dict)


def _volume(image: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(image.get_fdata(dtype=np.float32))


# -- prediction --------------------------------------------------------------------------------


def test_predict_maps_are_the_models_maps_on_its_grid(tiny_predictor: Predictor) -> None:
    space = small_space()
    assert tiny_predictor.space.to_dict() == space.to_dict()
    assert tiny_predictor.device == torch.device("cpu")
    assert not tiny_predictor.model.training
    images = tiny_predictor.predict_maps(TEXTS)
    expected = tiny_predictor.model.predict_texts(TEXTS).numpy()
    assert len(images) == len(TEXTS)
    for image, vector in zip(images, expected, strict=True):
        assert isinstance(image, nib.Nifti1Image)
        assert image.shape == space.shape
        assert image.get_data_dtype() == np.float32
        np.testing.assert_allclose(image.affine, space.affine)
        volume = _volume(image)
        assert np.all(volume[~space.mask] == 0)
        np.testing.assert_allclose(volume[space.mask], vector, rtol=0, atol=1e-6)
    vectors = tiny_predictor.predict_vectors(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), space.n_voxels)
    assert np.isfinite(vectors).all() and np.abs(vectors).max() > 0


def test_batching_and_order_do_not_change_maps(tiny_predictor: Predictor) -> None:
    texts = TEXTS * 2
    whole = tiny_predictor.predict_vectors(texts, batch_size=64)
    for batch_size in (1, 3):
        np.testing.assert_allclose(
            tiny_predictor.predict_vectors(texts, batch_size=batch_size), whole, rtol=0, atol=1e-5
        )
    reverse = tiny_predictor.predict_vectors(texts[::-1], batch_size=2)
    np.testing.assert_allclose(reverse[::-1], whole, rtol=0, atol=1e-5)
    assert tiny_predictor.predict_vectors([]).shape == (0, tiny_predictor.space.n_voxels)
    assert tiny_predictor.predict_maps(()) == []


@pytest.mark.parametrize(
    ("texts", "error", "match"),
    [
        ("working memory", TypeError, r"single str; pass \[text\]"),
        (b"working memory", TypeError, "single bytes"),
        (None, TypeError, "list of str"),
        (["pain", 3], TypeError, r"texts\[1\] must be a str, got int"),
        (["pain", None], TypeError, r"texts\[1\] must be a str, got NoneType"),
        (["pain", ""], ValueError, r"texts\[1\] is empty"),
        (["pain", "fear", " \t\n"], ValueError, r"texts\[2\] is empty or whitespace-only"),
    ],
)
def test_bad_texts_are_refused(
    tiny_predictor: Predictor, texts: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        tiny_predictor.predict_maps(texts)


def test_texts_are_checked_before_any_batch_runs(
    tiny_predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(texts: list[str]) -> None:
        raise AssertionError("the model ran before the texts were checked")

    monkeypatch.setattr(tiny_predictor.model, "predict_texts", fail)
    with pytest.raises(ValueError, match=r"texts\[70\] is empty"):
        tiny_predictor.predict_vectors(["pain"] * 70 + [" "], batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        tiny_predictor.predict_vectors(["pain"], batch_size=0)


def test_long_text_is_truncated_with_a_warning(tiny_predictor: Predictor) -> None:
    with pytest.warns(UserWarning, match="truncated"):
        vectors = tiny_predictor.predict_vectors(["pain", "working memory " * 300], max_chars=None)
    assert np.isfinite(vectors).all()


def test_any_unicode_works(tiny_predictor: Predictor) -> None:
    (image,) = tiny_predictor.predict_maps([UNICODE_TEXT])
    assert np.isfinite(_volume(image)).all()


def test_package_level_load_predictor() -> None:
    assert text2brain.load_predictor is load_predictor
    with pytest.raises(AttributeError):
        text2brain.no_such_name  # noqa: B018


def test_default_checkpoint(monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path) -> None:
    # The released model is tested in test_release.py; here the constant is what is loaded.
    monkeypatch.setattr(text2brain.checkpoint, "DEFAULT_CHECKPOINT", tiny_checkpoint)
    assert load_predictor(device="cpu").space.shape == small_space().shape
    default = tiny_checkpoint.with_name("gone.ckpt")
    monkeypatch.setattr(text2brain.checkpoint, "DEFAULT_CHECKPOINT", default)
    with pytest.raises(FileNotFoundError, match="gone.ckpt"):
        load_predictor()


def test_inference_import_is_light(tiny_checkpoint: Path) -> None:
    """Loading and running the Text2Brain head (a .ckpt, and the released export) imports
    neither Lightning nor the loggers, nor transformers for a BERT encoder (the cold start)."""
    code = textwrap.dedent(
        f"""
        import sys
        import text2brain
        assert "torch" not in sys.modules, "import text2brain imported torch"
        from text2brain.inference import load_predictor
        for checkpoint in ({str(tiny_checkpoint)!r}, None):
            load_predictor(checkpoint, device="cpu").predict_maps(["working memory"])
        heavy = sorted(
            m for m in sys.modules
            if m.split(".")[0] in ("lightning", "pytorch_lightning", "wandb", "tensorboard",
                                   "tensorboardX", "transformers", "torchmetrics")
            or m.startswith(("text2brain.data", "text2brain.corpus", "text2brain.training",
                             "text2brain.models.base"))
        )
        assert not heavy, heavy
        """
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


# -- refused checkpoints -----------------------------------------------------------------------

#: Set if unpickling ever calls it (it must not: text2brain never unpickles arbitrary objects).
CALLED: list[str] = []


def _record_call() -> object:
    CALLED.append("unpickled")
    return object()


class ArbitraryObject:
    """An object whose unpickling would run code (`_record_call`)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_record_call, ())


def _save(obj: Any, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_predictor(tmp_path / "nope.ckpt")


@pytest.mark.parametrize(
    "content",
    [np.random.default_rng(0).bytes(4096), b"", b"working memory\n", b"PK\x03\x04junk"],
    ids=["random", "empty", "text", "zip"],
)
def test_not_a_torch_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="model.ckpt' is not a text2brain checkpoint"):
        load_predictor(path)


def test_arbitrary_objects_are_never_unpickled(tmp_path: Path) -> None:
    path = _save({"state_dict": {}, "x": ArbitraryObject()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="never unpickles arbitrary objects") as info:
        load_predictor(path)
    assert "evil.ckpt" in str(info.value) and "_record_call" in str(info.value)
    assert CALLED == []


def test_torch_file_of_something_else(tmp_path: Path, ckpt_dict: dict[str, Any]) -> None:
    path = _save({"weights": torch.zeros(3)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match=r"lacks \['state_dict', 'hyper_parameters', 'text2brai"):
        load_predictor(path)
    del ckpt_dict["text2brain"]
    path = _save(ckpt_dict, tmp_path / "lightning.ckpt")
    with pytest.raises(ValueError, match=r"lightning.ckpt' is not .* lacks \['text2brain'\]"):
        load_predictor(path)
    path = _save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list"):
        load_predictor(path)


@pytest.mark.parametrize(
    ("version", "advice"),
    [(99, "upgrade text2brain"), (0, "re-export"), ("1", "not a format version")],
)
def test_other_format_version(
    tmp_path: Path, ckpt_dict: dict[str, Any], version: int | str, advice: str
) -> None:
    ckpt_dict["text2brain"]["format_version"] = version
    path = _save(ckpt_dict, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match=f"format {version!r}.*{advice}"):
        load_predictor(path)


def test_unregistered_class_is_never_imported(tmp_path: Path, ckpt_dict: dict[str, Any]) -> None:
    ckpt_dict["text2brain"]["class_path"] = "t2b_not_a_module.Evil"
    path = _save(ckpt_dict, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="'t2b_not_a_module.Evil', which is not a registered"):
        load_predictor(path)
    assert "t2b_not_a_module" not in sys.modules


def test_lightning_cli_checkpoint_with_registry_path(
    tmp_path: Path, ckpt_dict: dict[str, Any], tiny_predictor: Predictor
) -> None:
    """LightningCLI adds `_class_path` / `_instantiator` hparams; the registry path names it."""
    ckpt_dict["text2brain"]["class_path"] = "text2brain.models.text2brain.Text2Brain"
    ckpt_dict["hyper_parameters"].update(
        _class_path="text2brain.models.text2brain.Text2Brain",
        _instantiator="lightning.pytorch.cli.instantiate_module",
    )
    loaded = load_predictor(_save(ckpt_dict, tmp_path / "cli.ckpt"), device="cpu")
    np.testing.assert_array_equal(
        loaded.predict_vectors(TEXTS[:2]), tiny_predictor.predict_vectors(TEXTS[:2])
    )


def test_weights_that_do_not_fit(tmp_path: Path, ckpt_dict: dict[str, Any]) -> None:
    broken = copy.deepcopy(ckpt_dict)
    del broken["state_dict"]["net.decoder.head.0.bias"]
    broken["state_dict"]["net.extra.weight"] = torch.zeros(2)
    path = _save(broken, tmp_path / "broken.ckpt")
    with pytest.raises(ValueError, match="broken.ckpt") as info:
        load_predictor(path)
    message = str(info.value)
    assert "1 missing: net.decoder.head.0.bias" in message
    assert "1 unexpected: net.extra.weight" in message
    # Hyper-parameters describing another decoder: the shapes disagree.
    ckpt_dict["hyper_parameters"]["decoder"]["channels"] = [8, 8, 4]
    path = _save(ckpt_dict, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"with another shape: net\.decoder\.blocks\.1\.0"):
        load_predictor(path)


def test_unknown_hyper_parameters(tmp_path: Path, ckpt_dict: dict[str, Any]) -> None:
    ckpt_dict["hyper_parameters"]["future_option"] = 1
    path = _save(ckpt_dict, tmp_path / "future.ckpt")
    with pytest.raises(ValueError, match=r"\['future_option'\] that Text2Brain does not take"):
        load_predictor(path)


def test_bad_device(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="invalid device"):
        load_predictor(tiny_checkpoint, device="gpu-please")


def test_bf16_inference_matches_fp32(tiny_checkpoint: Path, tiny_predictor: Predictor) -> None:
    # The tests' CPU has no native bf16 (conftest): an explicit bf16 is kept, with a warning.
    with pytest.warns(UserWarning, match=r"much slower than float32.*about 25x slower"):
        bf16 = load_predictor(tiny_checkpoint, device="cpu", precision="bf16")
    assert "bf16" in repr(bf16)
    fast, exact = bf16.predict_vectors(TEXTS), tiny_predictor.predict_vectors(TEXTS)
    assert fast.dtype == np.float32 and np.isfinite(fast).all()
    for a, b in zip(fast, exact, strict=True):
        assert np.corrcoef(a, b)[0, 1] > 0.99
    with pytest.raises(ValueError, match="precision must be one of"):
        load_predictor(tiny_checkpoint, precision="int8")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        load_predictor(tiny_checkpoint, device="cpu", precision="fp16")


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [({"avx512_bf16": True}, "bf16"), ({"amx_bf16": True}, "bf16"), ({"avx2": True}, "fp32")],
)
def test_auto_precision_follows_the_cpu(
    tiny_predictor: Predictor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capabilities: dict[str, bool],
    expected: str,
) -> None:
    monkeypatch.setattr(text2brain.precision, "cpu_capabilities", lambda: capabilities)
    with caplog.at_level("INFO", logger="text2brain.precision"):
        auto = Predictor(tiny_predictor.model, "cpu")  # precision "auto" by default
    assert auto.precision == expected and expected in repr(auto)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"precision auto -> {expected}"
    ]
    assert tiny_predictor.precision == "fp32"  # the tests' CPU has no native bf16 (conftest)


# -- texts with a NUL or unknown tokens ------------------------------------------------------


def test_nul_in_a_text_is_refused(tiny_predictor: Predictor) -> None:
    with pytest.raises(ValueError, match=r"texts\[1\] contains a NUL character"):
        tiny_predictor.predict_vectors(["pain", "pain\x00"])


def test_unknown_tokens_are_counted_and_warned(tiny_predictor: Predictor) -> None:
    texts = ["😀🧠", "工作记忆", "working memory", "😀 pain", UNICODE_TEXT]
    fractions = tiny_predictor.unknown_token_fraction(texts)
    np.testing.assert_allclose(fractions[:4], [1.0, 1.0, 0.0, 0.5])
    assert 0 < fractions[4] < 0.5
    with pytest.warns(text2brain.inference.UnknownTokensWarning) as caught:
        tiny_predictor.predict_vectors(texts)
    message = str(caught[0].message)
    assert "texts[0] ('😀🧠')" in message and "texts[1] ('工作记忆')" in message
    assert "texts[2]" not in message and "texts[4]" not in message


# -- retrieval: the contrastive heads' predictors ----------------------------------------------
@pytest.mark.parametrize("name", ["clip", "mnm"])
def test_predictor_from_checkpoint(
    contrastive_runs: dict[str, dict[str, Any]],
    contrastive_predictors: dict[str, Predictor],
    name: str,
) -> None:
    model, predictor = contrastive_runs[name]["model"], contrastive_predictors[name]
    torch.testing.assert_close(
        torch.from_numpy(predictor.predict_vectors(QUERIES)), model.predict_texts(QUERIES)
    )
    (image,) = predictor.predict_maps(QUERIES[:1])
    assert image.shape == predictor.space.shape

    related = predictor.related_articles("working memory", k=4)
    assert len(related) == 4
    assert [r.distance for r in related] == sorted(r.distance for r in related)
    assert {r.article_id for r in related} <= set(model.bank.ids)
    first = related[0]
    row = model.bank.ids.index(first.article_id)
    assert (
        first.title == model.bank.titles[row] and list(first.keywords) == model.bank.keywords[row]
    )

    # A training article's own map is nearest to itself.
    row = 5
    image = predictor.space.to_nifti(model.bank.render([row])[0].numpy())
    described = predictor.describe_map(image, k=3)
    assert len(described) == 3 and described[0].distance == pytest.approx(0.0, abs=1e-4)
    at_zero = {r.article_id for r in described if r.distance <= 1e-4}
    assert model.bank.ids[row] in at_zero


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p: p.predict_maps([" "]), ValueError, r"texts\[0\] is empty"),
        (lambda p: p.related_articles(""), ValueError, "text is empty"),
        (lambda p: p.related_articles(["pain"]), TypeError, "text must be a str"),
        (lambda p: p.related_articles("pain", k=0), ValueError, "k must be a positive int"),
        (
            lambda p: p.describe_map(nib.Nifti1Image(np.ones((5, 5, 5), np.float32), np.eye(4))),
            ValueError,
            r"image grid \(5, 5, 5\).*does not match",
        ),
        (
            lambda p: p.describe_map(p.space.to_nifti(np.zeros(p.space.n_voxels))),
            ValueError,
            "zero everywhere",
        ),
    ],
)
def test_predictor_rejects_bad_input(
    contrastive_predictors: dict[str, Predictor], call: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        call(contrastive_predictors["clip"])
