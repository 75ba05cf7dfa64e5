"""Inference from a checkpoint (`text2brain.inference`) and the `text2brain query` command.

One tiny Text2Brain is trained for two steps by a real Lightning run and saved once per module,
so the loader is tested on what `text2brain fit` writes, not on a hand-made imitation.
"""

from __future__ import annotations

import copy
import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from synthetic import small_space, train_tiny_text2brain

import text2brain
import text2brain.checkpoint
import text2brain.precision
from text2brain.cli import main
from text2brain.inference import CheckpointError, Predictor, load_predictor
from text2brain.query import file_stems, slugify

TEXTS = ["working memory", "move the tongue", "pain", "fear of faces in the amygdala"]
UNICODE_TEXT = "Schmerz über 痛み 🧠"


# -- a checkpoint written by Lightning ---------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Tiny models run fastest on one thread (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """A 2-step Text2Brain run on the synthetic corpus, saved by `Trainer.save_checkpoint`."""
    return train_tiny_text2brain(tmp_path_factory.mktemp("inference"), tiny_bert)


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return load_predictor(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def _ckpt_dict(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


@pytest.fixture
def ckpt_dict(_ckpt_dict: dict[str, Any]) -> dict[str, Any]:
    """A private copy of the checkpoint's contents, to break and save again."""
    return copy.deepcopy(_ckpt_dict)


def _volume(image: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(image.get_fdata(dtype=np.float32))


# -- prediction --------------------------------------------------------------------------------


def test_predict_maps_are_the_models_maps_on_its_grid(predictor: Predictor) -> None:
    space = small_space()
    assert predictor.space.to_dict() == space.to_dict()
    assert predictor.device == torch.device("cpu")
    assert not predictor.model.training
    images = predictor.predict_maps(TEXTS)
    expected = predictor.model.predict_texts(TEXTS).numpy()
    assert len(images) == len(TEXTS)
    for image, vector in zip(images, expected, strict=True):
        assert isinstance(image, nib.Nifti1Image)
        assert image.shape == space.shape
        assert image.get_data_dtype() == np.float32
        np.testing.assert_allclose(image.affine, space.affine)
        volume = _volume(image)
        assert np.all(volume[~space.mask] == 0)
        np.testing.assert_allclose(volume[space.mask], vector, rtol=0, atol=1e-6)
    vectors = predictor.predict_vectors(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), space.n_voxels)
    assert np.isfinite(vectors).all() and np.abs(vectors).max() > 0


def test_batching_and_order_do_not_change_maps(predictor: Predictor) -> None:
    texts = TEXTS * 2
    whole = predictor.predict_vectors(texts, batch_size=64)
    for batch_size in (1, 3):
        np.testing.assert_allclose(
            predictor.predict_vectors(texts, batch_size=batch_size), whole, rtol=0, atol=1e-5
        )
    reverse = predictor.predict_vectors(texts[::-1], batch_size=2)
    np.testing.assert_allclose(reverse[::-1], whole, rtol=0, atol=1e-5)
    assert predictor.predict_vectors([]).shape == (0, predictor.space.n_voxels)
    assert predictor.predict_maps(()) == []


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
def test_bad_texts_are_refused(predictor: Predictor, texts: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        predictor.predict_maps(texts)


def test_texts_are_checked_before_any_batch_runs(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(texts: list[str]) -> None:
        raise AssertionError("the model ran before the texts were checked")

    monkeypatch.setattr(predictor.model, "predict_texts", fail)
    with pytest.raises(ValueError, match=r"texts\[70\] is empty"):
        predictor.predict_vectors(["pain"] * 70 + [" "], batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        predictor.predict_vectors(["pain"], batch_size=0)


def test_long_text_is_truncated_with_a_warning(predictor: Predictor) -> None:
    with pytest.warns(UserWarning, match="truncated"):
        vectors = predictor.predict_vectors(["pain", "working memory " * 300])
    assert np.isfinite(vectors).all()


def test_any_unicode_works(predictor: Predictor) -> None:
    (image,) = predictor.predict_maps([UNICODE_TEXT])
    assert np.isfinite(_volume(image)).all()


def test_package_level_load_predictor() -> None:
    assert text2brain.load_predictor is load_predictor
    with pytest.raises(AttributeError):
        text2brain.no_such_name  # noqa: B018


def test_default_checkpoint(monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> None:
    # The released model is tested in test_release.py; here the constant is what is loaded.
    monkeypatch.setattr(text2brain.checkpoint, "DEFAULT_CHECKPOINT", checkpoint)
    assert load_predictor(device="cpu").space.shape == small_space().shape
    default = checkpoint.with_name("gone.ckpt")
    monkeypatch.setattr(text2brain.checkpoint, "DEFAULT_CHECKPOINT", default)
    with pytest.raises(FileNotFoundError, match="gone.ckpt"):
        load_predictor()


def test_inference_import_is_light(checkpoint: Path) -> None:
    """Loading and running the Text2Brain head (a .ckpt, and the released export) imports
    neither Lightning nor the loggers, nor transformers for a BERT encoder (the cold start)."""
    code = textwrap.dedent(
        f"""
        import sys
        import text2brain
        assert "torch" not in sys.modules, "import text2brain imported torch"
        from text2brain.inference import load_predictor
        for checkpoint in ({str(checkpoint)!r}, None):
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
    tmp_path: Path, ckpt_dict: dict[str, Any], predictor: Predictor
) -> None:
    """LightningCLI adds `_class_path` / `_instantiator` hparams; the registry path names it."""
    ckpt_dict["text2brain"]["class_path"] = "text2brain.models.text2brain.Text2Brain"
    ckpt_dict["hyper_parameters"].update(
        _class_path="text2brain.models.text2brain.Text2Brain",
        _instantiator="lightning.pytorch.cli.instantiate_module",
    )
    loaded = load_predictor(_save(ckpt_dict, tmp_path / "cli.ckpt"), device="cpu")
    np.testing.assert_array_equal(
        loaded.predict_vectors(TEXTS[:2]), predictor.predict_vectors(TEXTS[:2])
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


def test_bad_device(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="invalid device"):
        load_predictor(checkpoint, device="gpu-please")


def test_bf16_inference_matches_fp32(checkpoint: Path, predictor: Predictor) -> None:
    # The tests' CPU has no native bf16 (conftest): an explicit bf16 is kept, with a warning.
    with pytest.warns(UserWarning, match=r"much slower than float32.*about 25x slower"):
        bf16 = load_predictor(checkpoint, device="cpu", precision="bf16")
    assert "bf16" in repr(bf16)
    fast, exact = bf16.predict_vectors(TEXTS), predictor.predict_vectors(TEXTS)
    assert fast.dtype == np.float32 and np.isfinite(fast).all()
    for a, b in zip(fast, exact, strict=True):
        assert np.corrcoef(a, b)[0, 1] > 0.99
    with pytest.raises(ValueError, match="precision must be one of"):
        load_predictor(checkpoint, precision="int8")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        load_predictor(checkpoint, device="cpu", precision="fp16")


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [({"avx512_bf16": True}, "bf16"), ({"amx_bf16": True}, "bf16"), ({"avx2": True}, "fp32")],
)
def test_auto_precision_follows_the_cpu(
    predictor: Predictor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capabilities: dict[str, bool],
    expected: str,
) -> None:
    monkeypatch.setattr(text2brain.precision, "cpu_capabilities", lambda: capabilities)
    with caplog.at_level("INFO", logger="text2brain.precision"):
        auto = Predictor(predictor.model, "cpu")  # precision "auto" by default
    assert auto.precision == expected and expected in repr(auto)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"precision auto -> {expected}"
    ]
    assert predictor.precision == "fp32"  # the tests' CPU has no native bf16 (conftest)


# -- text2brain query --------------------------------------------------------------------------


def test_slugs_and_file_names() -> None:
    assert slugify("Working memory (2-back)!") == "working_memory_2_back"
    assert slugify(UNICODE_TEXT) == "schmerz_uber"
    assert slugify("痛み") == "query"
    assert len(slugify("word " * 50)) <= 60 and not slugify("word " * 50).endswith("_")
    assert file_stems(["pain", "pain"]) == ["000_pain", "001_pain"]
    assert file_stems(["x"] * 1001)[-1] == "1000_x"


def test_query_command_writes_maps_and_pictures(
    tmp_path: Path, checkpoint: Path, predictor: Predictor, capsys: pytest.CaptureFixture[str]
) -> None:
    queries_file = tmp_path / "queries.txt"
    queries_file.write_text("\n   \nfear of faces\n", encoding="utf-8")
    out = tmp_path / "maps"
    argv = ["query", UNICODE_TEXT, "--queries-file", str(queries_file), "--png", "--html"]
    main(argv + ["--ckpt", str(checkpoint), "-o", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert "skipped 2 blank line(s)" in captured.err
    assert str(out) in captured.out
    queries = [UNICODE_TEXT, "fear of faces"]
    stems = ["000_schmerz_uber", "001_fear_of_faces"]
    expected = predictor.predict_vectors(queries)
    space = predictor.space
    for stem, vector in zip(stems, expected, strict=True):
        image = nib.load(out / f"{stem}.nii.gz")
        np.testing.assert_allclose(image.affine, space.affine)
        np.testing.assert_allclose(_volume(image)[space.mask], vector, rtol=0, atol=1e-6)
        assert (out / f"{stem}.png").read_bytes().startswith(b"\x89PNG")
        html = (out / f"{stem}.html").read_text(encoding="utf-8")
        assert html.lower().startswith("<!doctype html")
        assert f"{stem}.nii.gz" in captured.out
    index = (out / "queries.tsv").read_text(encoding="utf-8").splitlines()
    assert index == [
        "file\tquery",
        f"000_schmerz_uber.nii.gz\t{UNICODE_TEXT}",
        "001_fear_of_faces.nii.gz\tfear of faces",
    ]


def test_query_command_many_queries_from_stdin(
    tmp_path: Path,
    checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    queries = [f"pain {i}" for i in range(11)] + ["pain 0"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(queries) + "\n"))
    out = tmp_path / "many"
    main(["query", "--queries-file", "-", "--ckpt", str(checkpoint), "-o", str(out)])
    names = sorted(p.name for p in out.iterdir())
    assert names[0] == "000_pain_0.nii.gz" and names[-2] == "011_pain_0.nii.gz"
    assert names[-1] == "queries.tsv" and len(names) == 13  # no pictures unless asked
    captured = capsys.readouterr()
    assert "wrote 12 map(s)" in captured.out
    assert "12/12" in captured.err  # the progress bar


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pain", "  "], r"query 2 \('  '\) is empty"),
        ([], "no query given"),
        (["pain", "--ckpt", "{tmp}/missing.ckpt"], "missing.ckpt' does not exist"),
        (["pain", "--ckpt", "{tmp}/junk.ckpt"], "junk.ckpt' is not a text2brain checkpoint"),
        (["pain", "--queries-file", "{tmp}/none.txt"], "cannot read queries file"),
        (["pain", "--ckpt", "{tmp}"], "is a folder without model.json"),
    ],
)
def test_query_command_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "junk.ckpt").write_bytes(os.urandom(256))
    argv = ["query", *(a.format(tmp=tmp_path) for a in args), "-o", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("text2brain query: error: ") and "\n" not in err
    assert "Traceback" not in err
    assert re.search(message, err), err


# -- output folders ----------------------------------------------------------------------------


def _index(folder: Path) -> list[str]:
    return (folder / "queries.tsv").read_text(encoding="utf-8").removesuffix("\n").split("\n")


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_run_that_stops_leaves_whole_maps_and_their_index(
    tmp_path: Path,
    checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: BaseException,
) -> None:
    write = nib.Nifti1Image.to_filename
    calls = []

    def failing_write(image: nib.Nifti1Image, filename: Any, **kwargs: Any) -> None:
        calls.append(filename)
        if len(calls) == 3:  # half a file, then the disk is full / Ctrl-C
            Path(filename).write_bytes(b"\x1f\x8b\x08")
            raise error
        write(image, filename, **kwargs)

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", failing_write)
    out = tmp_path / "maps"
    argv = ["query", "pain", "fear", "memory", "faces", "--ckpt", str(checkpoint), "-o", str(out)]
    with pytest.raises(type(error) if isinstance(error, KeyboardInterrupt) else SystemExit):
        main(argv)
    if isinstance(error, OSError):
        err = capsys.readouterr().err
        assert "cannot write" in err and "002_memory.nii.gz': No space left on device" in err
    assert sorted(p.name for p in out.iterdir()) == [
        "000_pain.nii.gz",
        "001_fear.nii.gz",
        "queries.tsv",
    ]
    assert _index(out) == ["file\tquery", "000_pain.nii.gz\tpain", "001_fear.nii.gz\tfear"]
    for name in ("000_pain.nii.gz", "001_fear.nii.gz"):
        nib.load(out / name).get_fdata()  # whole files


def test_an_output_folder_has_one_owner(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "maps"
    run = ["query", "--ckpt", str(checkpoint), "-o", str(out)]
    main([*run, "pain", "fear", "--png"])
    capsys.readouterr()
    before = (out / "000_pain.nii.gz").read_bytes()
    with pytest.raises(SystemExit) as info:
        main([*run, "memory"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err
    assert f"'{out}'" in err and "--overwrite" in err and "--append" in err
    assert (out / "000_pain.nii.gz").read_bytes() == before

    main([*run, "memory", "--append"])
    assert _index(out) == [
        "file\tquery",
        "000_pain.nii.gz\tpain",
        "001_fear.nii.gz\tfear",
        "002_memory.nii.gz\tmemory",
    ]
    main([*run, "faces", "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["000_faces.nii.gz", "queries.tsv"]
    assert _index(out) == ["file\tquery", "000_faces.nii.gz\tfaces"]

    (out / "queries.tsv").unlink()  # a folder of maps without an index: no silent overwrite
    with pytest.raises(SystemExit):
        main([*run, "faces"])
    assert "000_faces.nii.gz' exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*run, "faces", "--append", "--overwrite"])
    (out / "queries.tsv").write_text("file\tquery\n../../etc/passwd\tx\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        main([*run, "faces", "--overwrite"])
    assert "is not a text2brain query index (row 2)" in capsys.readouterr().err


# -- queries: checked before any map ------------------------------------------------------------


def test_bad_queries_are_all_named_before_any_map(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [f"pain {i}" for i in range(100)]
    lines[4], lines[80] = "pain\x00fear", "\x01\x02"
    queries_file = tmp_path / "queries.txt"
    queries_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "maps"
    argv = ["query", "pain", "--queries-file", str(queries_file), "-o", str(out)]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--ckpt", str(checkpoint)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and "Traceback" not in err
    assert "2 bad queries, nothing written" in err
    assert f"{queries_file} line 5 ('pain\\x00fear') contains a NUL character" in err
    assert f"{queries_file} line 81 ('\\x01\\x02') gives no tokens" in err
    assert not out.exists()


def test_queries_files_split_on_newlines_only(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_bytes("\ufeffpain\x0bfear\r\nmemory\u2028faces\x0c\n".encode())
    second.write_text("attention\x85task\n", encoding="utf-8")
    out = tmp_path / "maps"
    main(
        [
            "query",
            "--queries-file",
            str(first),
            str(second),
            "--ckpt",
            str(checkpoint),
            "-o",
            str(out),
        ]
    )
    assert _index(out) == [
        "file\tquery",
        "000_pain_fear.nii.gz\tpain\x0bfear",
        "001_memory_faces.nii.gz\tmemory\u2028faces",
        "002_attention_task.nii.gz\tattention\x85task",
    ]
    (tmp_path / "latin1.txt").write_bytes("pain\nSchmerz \xfcber\n".encode("latin-1"))
    with pytest.raises(SystemExit):
        main(["query", "--queries-file", str(tmp_path / "latin1.txt"), "-o", str(out)])
    err = capsys.readouterr().err
    assert "latin1.txt' is not UTF-8 text (line 2" in err


def test_nul_in_a_text_is_refused(predictor: Predictor) -> None:
    with pytest.raises(ValueError, match=r"texts\[1\] contains a NUL character"):
        predictor.predict_vectors(["pain", "pain\x00"])


def test_unknown_tokens_are_counted_and_warned(predictor: Predictor) -> None:
    texts = ["😀🧠", "工作记忆", "working memory", "😀 pain", UNICODE_TEXT]
    fractions = predictor.unknown_token_fraction(texts)
    np.testing.assert_allclose(fractions[:4], [1.0, 1.0, 0.0, 0.5])
    assert 0 < fractions[4] < 0.5
    with pytest.warns(text2brain.inference.UnknownTokensWarning) as caught:
        predictor.predict_vectors(texts)
    message = str(caught[0].message)
    assert "texts[0] ('😀🧠')" in message and "texts[1] ('工作记忆')" in message
    assert "texts[2]" not in message and "texts[4]" not in message


def test_query_command_warns_about_unknown_tokens_or_refuses_them(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "maps"
    argv = ["query", "pain", "😀🧠", "--ckpt", str(checkpoint), "-o", str(out)]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--strict"])
    assert info.value.code == 2 and not out.exists()
    assert "query 2 ('😀🧠') has 1 of its 1 tokens unknown" in capsys.readouterr().err
    main(argv)
    err = capsys.readouterr().err
    assert "text2brain query: warning: query 2 ('😀🧠') has 1 of its 1 tokens unknown" in err
    assert err.count("warning") == 1 and len(_index(out)) == 3
