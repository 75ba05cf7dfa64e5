"""text2brain.query.texts: slugs and file names, queries files, and the checks of every query
before any map is written (through the command, on conftest's tiny checkpoint)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from text2brain.cli import main
from text2brain.query.texts import file_stems, slugify

UNICODE_TEXT = "Schmerz über 痛み 🧠"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_slugs_and_file_names() -> None:
    assert slugify("Working memory (2-back)!") == "working_memory_2_back"
    assert slugify(UNICODE_TEXT) == "schmerz_uber"
    assert slugify("痛み") == "query"
    assert len(slugify("word " * 50)) <= 60 and not slugify("word " * 50).endswith("_")
    assert file_stems(["pain", "pain"]) == ["000_pain", "001_pain"]
    assert file_stems(["x"] * 1001)[-1] == "1000_x"


def test_bad_queries_are_all_named_before_any_map(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [f"pain {i}" for i in range(100)]
    lines[4], lines[80] = "pain\x00fear", "\x01\x02"
    queries_file = tmp_path / "queries.txt"
    queries_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "maps"
    argv = ["query", "pain", "--queries-file", str(queries_file), "-o", str(out)]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--ckpt", str(tiny_checkpoint)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err and "Traceback" not in err
    assert "2 bad queries, nothing written" in err
    assert f"{queries_file} line 5 ('pain\\x00fear') contains a NUL character" in err
    assert f"{queries_file} line 81 ('\\x01\\x02') gives no tokens" in err
    assert not out.exists()


def test_queries_files_split_on_newlines_only(
    tmp_path: Path,
    tiny_checkpoint: Path,
    index_lines: Callable[[Path], list[str]],
    capsys: pytest.CaptureFixture[str],
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
            str(tiny_checkpoint),
            "-o",
            str(out),
        ]
    )
    assert index_lines(out) == [
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
