"""text2brain.query.files: an output folder belongs to one run, and a run that stops leaves
whole maps that its index lists (through the command, on conftest's tiny checkpoint)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import pytest

from text2brain.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_run_that_stops_leaves_whole_maps_and_their_index(
    tmp_path: Path,
    tiny_checkpoint: Path,
    index_lines: Callable[[Path], list[str]],
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
    queries = ["pain", "fear", "memory", "faces"]
    argv = ["query", *queries, "--ckpt", str(tiny_checkpoint), "-o", str(out)]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    if isinstance(error, OSError):
        assert info.value.code == 2
        assert "cannot write" in err and "002_memory.nii.gz': No space left on device" in err
    else:  # Ctrl-C: one line saying what was written, exit status 130 (was a traceback)
        assert info.value.code == 130 and len(err.strip().splitlines()) == 1
        assert err.startswith(f"text2brain query: interrupted: wrote 2 of 4 map(s) to {out}/")
    assert sorted(p.name for p in out.iterdir()) == [
        "000_pain.nii.gz",
        "001_fear.nii.gz",
        "queries.tsv",
    ]
    assert index_lines(out) == ["file\tquery", "000_pain.nii.gz\tpain", "001_fear.nii.gz\tfear"]
    for name in ("000_pain.nii.gz", "001_fear.nii.gz"):
        nib.load(out / name).get_fdata()  # whole files


def test_an_output_folder_has_one_owner(
    tmp_path: Path,
    tiny_checkpoint: Path,
    index_lines: Callable[[Path], list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "maps"
    run = ["query", "--ckpt", str(tiny_checkpoint), "-o", str(out)]
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
    assert index_lines(out) == [
        "file\tquery",
        "000_pain.nii.gz\tpain",
        "001_fear.nii.gz\tfear",
        "002_memory.nii.gz\tmemory",
    ]
    main([*run, "faces", "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["000_faces.nii.gz", "queries.tsv"]
    assert index_lines(out) == ["file\tquery", "000_faces.nii.gz\tfaces"]

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


def test_a_full_disk_at_the_index_leaves_no_unlisted_map(
    tmp_path: Path,
    tiny_checkpoint: Path,
    index_lines: Callable[[Path], list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The map used to stay, with an index of its header only; --append was then refused."""
    import text2brain.query.files as files
    from text2brain.outputs import OutputError

    write_index = files._write_index

    def full_disk(index: Path, rows: Any) -> None:
        if rows:
            raise OutputError(f"cannot write {str(index)!r}: No space left on device")
        write_index(index, rows)

    monkeypatch.setattr(files, "_write_index", full_disk)
    out = tmp_path / "maps"
    run = ["query", "--ckpt", str(tiny_checkpoint), "-o", str(out)]
    with pytest.raises(SystemExit):
        main([*run, "a one", "--png"])
    assert "No space left on device" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["queries.tsv"]
    monkeypatch.setattr(files, "_write_index", write_index)
    main([*run, "a one", "--append"])
    assert index_lines(out) == ["file\tquery", "000_a_one.nii.gz\ta one"]


def test_overwrite_removes_the_maps_a_killed_run_left_unlisted(
    tmp_path: Path,
    tiny_checkpoint: Path,
    index_lines: Callable[[Path], list[str]],
) -> None:
    out = tmp_path / "maps"
    run = ["query", "--ckpt", str(tiny_checkpoint), "-o", str(out)]
    main([*run, "pain"])
    orphan = out / "001_fear.nii.gz"  # killed between the map and its index entry
    orphan.write_bytes((out / "000_pain.nii.gz").read_bytes())
    main([*run, "faces", "--append"])  # numbered after the orphan, never over it
    assert index_lines(out)[-1] == "002_faces.nii.gz\tfaces"
    main([*run, "memory", "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["000_memory.nii.gz", "queries.tsv"]
