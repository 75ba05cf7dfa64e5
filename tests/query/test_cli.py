"""`text2brain query` (text2brain.query.cli): maps, pictures and index from the command line,
its one-line errors and warnings, its light imports, and the retrieval options (--related,
--describe) on the contrastive heads trained once for the session (conftest's
`contrastive_runs`)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from text2brain.cli import main
from text2brain.inference import Predictor, load_predictor

UNICODE_TEXT = "Schmerz über 痛み 🧠"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_query_command_writes_maps_and_pictures(
    tmp_path: Path,
    tiny_checkpoint: Path,
    tiny_predictor: Predictor,
    capsys: pytest.CaptureFixture[str],
) -> None:
    queries_file = tmp_path / "queries.txt"
    queries_file.write_text("\n   \nfear of faces\n", encoding="utf-8")
    out = tmp_path / "maps"
    argv = ["query", UNICODE_TEXT, "--queries-file", str(queries_file), "--png", "--html"]
    main(argv + ["--ckpt", str(tiny_checkpoint), "-o", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert "skipped 2 blank line(s)" in captured.err
    assert str(out) in captured.out
    queries = [UNICODE_TEXT, "fear of faces"]
    stems = ["000_schmerz_uber", "001_fear_of_faces"]
    expected = tiny_predictor.predict_vectors(queries)
    space = tiny_predictor.space
    for stem, vector in zip(stems, expected, strict=True):
        image = nib.load(out / f"{stem}.nii.gz")
        np.testing.assert_allclose(image.affine, space.affine)
        np.testing.assert_allclose(
            np.asarray(image.get_fdata(dtype=np.float32))[space.mask], vector, rtol=0, atol=1e-6
        )
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
    tiny_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    queries = [f"pain {i}" for i in range(11)] + ["pain 0"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(queries) + "\n"))
    out = tmp_path / "many"
    main(["query", "--queries-file", "-", "--ckpt", str(tiny_checkpoint), "-o", str(out)])
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
    tmp_path: Path, query_error: Callable[[list[str]], str], args: list[str], message: str
) -> None:
    (tmp_path / "junk.ckpt").write_bytes(os.urandom(256))
    argv = ["query", *(a.format(tmp=tmp_path) for a in args), "-o", str(tmp_path / "out")]
    err = query_error(argv)
    assert "Traceback" not in err
    assert re.search(message, err), err


def test_query_command_warns_about_unknown_tokens_or_refuses_them(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "maps"
    argv = ["query", "pain", "😀🧠", "--ckpt", str(tiny_checkpoint), "-o", str(out)]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--strict"])
    assert info.value.code == 2 and not out.exists()
    assert "query 2 ('😀🧠') has 1 of its 1 tokens unknown" in capsys.readouterr().err
    main(argv)
    err = capsys.readouterr().err
    assert "text2brain query: warning: query 2 ('😀🧠') has 1 of its 1 tokens unknown" in err
    assert err.count("warning") == 1
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["000_pain.nii.gz", "001_query.nii.gz"]


def test_query_help_imports_nothing_heavy() -> None:
    """`text2brain query --help` stays instant: no torch, numpy or plotting at import time."""
    code = (
        "import sys\n"
        "from text2brain.cli import main\n"
        "try:\n"
        "    main(['query', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('torch', 'numpy', 'lightning', 'nibabel', 'nilearn', 'matplotlib', 'pandas')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "[]"


def test_text2brain_predictor_says_it_cannot_retrieve(
    tiny_checkpoint: Path, query_error: Callable[[list[str]], str]
) -> None:
    predictor = load_predictor(tiny_checkpoint, device="cpu")
    with pytest.raises(TypeError, match="Text2Brain .* cannot find the articles related"):
        predictor.related_articles("pain")
    with pytest.raises(TypeError, match="cannot describe a map"):
        predictor.describe_map(predictor.space.to_nifti(np.ones(predictor.space.n_voxels)))
    argv = ["query", "pain", "--related", "--ckpt", str(tiny_checkpoint)]
    assert "cannot find the articles related to a text" in query_error(argv)


# -- retrieval: related articles and describing maps -------------------------------------------
def test_query_command_related_and_describe(
    contrastive_runs: dict[str, dict[str, Any]],
    contrastive_predictors: dict[str, Predictor],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, predictor = contrastive_runs["mnm"]["path"], contrastive_predictors["mnm"]
    image = tmp_path / "map.nii.gz"
    predictor.space.to_nifti(
        contrastive_runs["mnm"]["model"].bank.render([0])[0].numpy()
    ).to_filename(image)
    main(["query", "pain", "--ckpt", str(path), "--related", "-k", "3", "--describe", str(image)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query\trank\tarticle_id\tdistance\ttitle\tkeywords"
    related = predictor.related_articles("pain", k=3)
    for line, article in zip(lines[1:4], related, strict=True):
        query, rank, article_id, _, title, keywords = line.split("\t")
        assert (query, article_id, title) == ("pain", article.article_id, article.title)
        assert keywords == "; ".join(article.keywords)
    assert lines[4] == "map\trank\tarticle_id\tdistance\ttitle\tkeywords"
    assert len(lines) == 8 and lines[5].startswith(f"{image}\t1\t")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pain"], "give -o/--out-dir to write their maps, or --related"),
        ([], "no query given"),
        (["--describe", "{tmp}/none.nii.gz"], "none.nii.gz"),
    ],
)
def test_query_command_retrieval_errors(
    contrastive_runs: dict[str, dict[str, Any]],
    tmp_path: Path,
    query_error: Callable[[list[str]], str],
    args: list[str],
    message: str,
) -> None:
    argv = [
        "query",
        *(a.format(tmp=tmp_path) for a in args),
        "--ckpt",
        str(contrastive_runs["clip"]["path"]),
    ]
    assert message in query_error(argv)


def test_describe_errors_name_the_file(
    contrastive_runs: dict[str, dict[str, Any]],
    contrastive_predictors: dict[str, Predictor],
    tmp_path: Path,
    query_error: Callable[[list[str]], str],
) -> None:
    space = contrastive_predictors["clip"].space
    good = space.to_nifti(contrastive_runs["clip"]["model"].bank.render([0])[0].numpy())
    volume = np.asarray(good.dataobj)
    files = {
        "good.nii.gz": good,
        "also_good.nii.gz": good,
        "nan.nii.gz": nib.Nifti1Image(
            np.where(space.mask, np.nan, 0).astype(np.float32), space.affine
        ),
        "two.nii.gz": nib.Nifti1Image(np.stack([volume, volume], axis=-1), space.affine),
    }
    for name, image in files.items():
        image.to_filename(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image\n")
    run = ["query", "--ckpt", str(contrastive_runs["clip"]["path"]), "--describe"]
    good_files = [str(tmp_path / "good.nii.gz"), str(tmp_path / "also_good.nii.gz")]
    nan_file, two, notes = (str(tmp_path / n) for n in ("nan.nii.gz", "two.nii.gz", "notes.txt"))
    assert f"'{nan_file}' has NaN" in query_error([*run, *good_files, nan_file])
    assert f"'{two}' holds 2 volumes" in query_error([*run, two])
    assert f"'{notes}' is not a readable NIfTI image" in query_error([*run, notes])


# -- released models by name (--model) ----------------------------------------------------------
def test_query_a_released_model_by_name(
    tiny_releases: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--model takes a release's folder name or its head's name: maps, related articles and
    a described map, as with --ckpt and the export folder."""
    export = tiny_releases / "mnm-tiny"
    predictor = load_predictor(export, device="cpu")
    image = tmp_path / "map.nii.gz"
    predictor.space.to_nifti(predictor.model.bank.render([0])[0].numpy()).to_filename(image)
    main(["query", "pain", "--model", "mnm", "--related", "-k", "3", "--describe", str(image)])
    by_name = capsys.readouterr().out
    main(["query", "pain", "--ckpt", str(export), "--related", "-k", "3", "--describe", str(image)])
    assert by_name == capsys.readouterr().out and len(by_name.splitlines()) == 8
    assert by_name.splitlines()[1].split("\t")[2] == (
        predictor.related_articles("pain", k=3)[0].article_id
    )
    main(["query", "pain", "--model", "mnm-tiny", "-o", str(tmp_path / "maps")])
    written = nib.load(tmp_path / "maps" / "000_pain.nii.gz").get_fdata()
    expected = predictor.space.to_nifti(predictor.predict_vectors(["pain"])[0]).get_fdata()
    assert np.allclose(written, expected, atol=1e-6)


def test_model_and_ckpt_exclude_each_other_and_unknown_names_fail(
    tiny_releases: Path,
    tiny_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    query_error: Callable[[list[str]], str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["query", "pain", "--related", "--model", "mnm", "--ckpt", str(tiny_checkpoint)])
    assert info.value.code == 2
    assert "argument --ckpt: not allowed with argument --model" in capsys.readouterr().err
    error = query_error(["query", "pain", "--related", "--model", "clip"])
    assert "--model 'clip': no released model is named 'clip'" in error
    assert "mnm-tiny (mnm), text2brain-tiny (text2brain)" in error
    with pytest.raises(SystemExit):
        main(["query", "--help"])
    assert "mnm-tiny (mnm), text2brain-tiny" in " ".join(capsys.readouterr().out.split())


def test_query_an_export_in_a_new_process_without_corpus_or_network(
    tiny_releases: Path, tmp_path: Path
) -> None:
    """As after `pip install`: a contrastive export answers with no data folder, offline."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TEXT2BRAIN_DATA_DIR": str(tmp_path / "no-data-here"),
    }
    export = str(tiny_releases / "mnm-tiny")
    command = [sys.executable, "-m", "text2brain", "query", "pain", "--related", "-k", "2"]
    result = subprocess.run(
        [*command, "--ckpt", export, "-o", str(tmp_path / "maps")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\npain\t") == 2
    assert (tmp_path / "maps" / "000_pain.nii.gz").is_file()


# -- reliability: limits checked before any work ------------------------------------------------
def test_a_too_long_query_is_refused_before_the_model_loads(
    tmp_path: Path, query_error: Callable[[list[str]], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 105 MB one-line queries file once took 11.5 GB of memory; now one line, at once."""
    import text2brain.inference

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not load")

    monkeypatch.setattr(text2brain.inference, "load_predictor", never)
    queries = tmp_path / "queries.txt"
    queries.write_text("fear\n" + "x" * 20_000 + "\n", encoding="utf-8")
    out = tmp_path / "out"
    err = query_error(["query", "--queries-file", str(queries), "-o", str(out)])
    assert f"{queries} line 2 is too long: 20,000 characters, at most 1,000" in err
    assert not out.exists()


def test_the_python_api_refuses_a_too_long_text(tiny_predictor: Predictor) -> None:
    with pytest.raises(ValueError, match=r"texts\[1\] \('xxx.*is too long: 1,001 characters"):
        tiny_predictor.predict_maps(["fear", "x" * 1001])
    assert tiny_predictor.predict_vectors(["x " * 600], max_chars=None).shape[0] == 1
