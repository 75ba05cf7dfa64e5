"""`text2brain.outputs`: a file is written whole under its name, or not at all."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from text2brain.outputs import OutputError, atomic_output, write_text


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
