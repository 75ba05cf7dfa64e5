"""`text2brain query` (text2brain.query.cli): maps, pictures and index from the command line,
its one-line errors and warnings, and its light imports."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from text2brain.cli import main
from text2brain.inference import Predictor

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
