"""`text2brain.outputs`: a file is written whole under its name, or not at all."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from text2brain import outputs
from text2brain.outputs import OutputError, atomic_output, remove_stale_temporaries, write_text

#: subprocess.run options: capture text output.
TEXT = {"capture_output": True, "text": True, "check": True}


def test_written_file_appears_under_its_name_only(tmp_path: Path) -> None:
    path = tmp_path / "map.nii.gz"
    with atomic_output(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith("map.nii.gz") and tmp != path
        nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)).to_filename(tmp)
        assert not path.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["map.nii.gz"]
    assert nib.load(path).get_fdata().sum() == 8


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupted_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, error: type[BaseException]
) -> None:
    path = write_text(tmp_path / "queries.tsv", "old\n")
    with pytest.raises(error), atomic_output(path) as tmp:
        tmp.write_text("half a fi")
        raise error
    assert [p.name for p in tmp_path.iterdir()] == ["queries.tsv"]
    assert path.read_text() == "old\n"


def test_os_error_names_the_file_and_the_cause(tmp_path: Path) -> None:
    path = tmp_path / "000_pain.nii.gz"
    with pytest.raises(OutputError, match=r"cannot write '.*000_pain.nii.gz': No space left"):
        with atomic_output(path) as tmp:
            tmp.write_bytes(b"\x1f\x8b")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


def test_permissions_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with atomic_output(tmp_path / "model.safetensors") as tmp:
            tmp.touch(mode=0o600)  # as safetensors and mkstemp create files
    finally:
        os.umask(old)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o640


def test_a_read_only_folder_names_the_file_not_its_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cleanup's own error (EROFS on unlink) used to hide the message, naming the hidden
    temporary (`rofs/.b570f313.tmp-queries.tsv`)."""

    def read_only(path: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(Path, "unlink", read_only)
    final = tmp_path / "queries.tsv"
    with pytest.raises(OutputError) as info, atomic_output(final) as tmp:
        read_only(tmp)
    assert str(info.value) == f"cannot write {str(final)!r}: Read-only file system"


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """Killed runs left `.xxxx.tmp-*.nii.gz` files that nothing removed."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **TEXT)
    host = outputs._host()
    names = {
        "killed": f".{host}-{int(gone.stdout)}-0123abcd.tmp-000_a.nii.gz",
        "live": f".{host}-{os.getpid()}-0123abcd.tmp-001_b.nii.gz",
        "old kind, old": ".0123abcd.tmp-002_c.nii.gz",
        "old kind, new": ".4567abcd.tmp-003_d.nii.gz",
        "other host, new": ".abcdef-1-0123abcd.tmp-004_e.nii.gz",
        "a user's file": ".hidden.tmp-notes.txt",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    old = time.time() - 2 * outputs.STALE_AFTER_S
    os.utime(tmp_path / names["old kind, old"], (old, old))
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["killed"], names["old kind, old"]])
    kept = {p.name for p in tmp_path.iterdir()}
    assert kept == set(names.values()) - {names["killed"], names["old kind, old"]}
