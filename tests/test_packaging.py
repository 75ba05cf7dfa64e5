"""What a wheel and an sdist built from a clean checkout hold.

setup.py finds the packages (so a new subpackage needs no change there) and installs the
repository's checkpoints/ folder as `text2brain.checkpoints`, of which only the released models
(the export folders committed there) are package data: the checkpoints and exports that runs
write next to it must stay out. The builds run on a copy of the files git knows of (tracked,
or untracked and not ignored), with such run outputs planted in checkpoints/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from text2brain.releases import DEFAULT_MODEL

pytest.importorskip("setuptools.build_meta")  # the dev extra

ROOT = Path(__file__).resolve().parents[1]
#: What training runs and `text2brain export -o checkpoints/my-model` leave in checkpoints/.
RUN_OUTPUTS = (
    "checkpoints/text2brain/best.ckpt",
    "checkpoints/text2brain/last.ckpt",
    "checkpoints/release/best.ckpt",
    "checkpoints/my-model/model.json",
    "checkpoints/my-model/model.safetensors",
    "checkpoints/corpus_mean/__init__.py",
)
#: The package's own files mapped from checkpoints/, besides the release folders.
PACKAGE_FILES = {"__init__.py", "README.md"}
BUILD = """
import sys
from setuptools import build_meta
print(build_meta.build_wheel(sys.argv[1]) if sys.argv[2] == "wheel" else
      build_meta.build_sdist(sys.argv[1]))
"""


def build(source: Path, kind: str, out: Path) -> Path:
    """A wheel or an sdist of `source`, built by setuptools' PEP 517 backend (no network)."""
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(out), kind],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files of a clean checkout of this working tree, plus run outputs in checkpoints/."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copy = tmp_path_factory.mktemp("checkout") / "text2brain"
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():  # not a tracked file deleted in the working tree
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    for name in RUN_OUTPUTS:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(b"a run's output")
    return copy


@pytest.fixture(scope="module")
def released(checkout: Path) -> set[str]:
    """What the package must map from checkpoints/: its own files and every file of each
    release folder that git knows of (a folder holding model.json; run outputs planted in
    the copy are not known to git)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "checkpoints"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    names = {n.removeprefix("checkpoints/") for n in filter(None, listed.split("\0"))}
    folders = {n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/model.json")}
    assert DEFAULT_MODEL in folders
    return PACKAGE_FILES | {n for n in names if n.split("/")[0] in folders}


@pytest.fixture(scope="module")
def wheel(checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(checkout, "wheel", tmp_path_factory.mktemp("wheel"))


def modules(checkout: Path) -> set[str]:
    """Every module of the package in the checkout, as a path (text2brain/models/base.py)."""
    return {p.relative_to(checkout).as_posix() for p in (checkout / "text2brain").rglob("*.py")}


def test_wheel_holds_every_module_and_only_the_released_models(
    wheel: Path, checkout: Path, released: set[str]
) -> None:
    with zipfile.ZipFile(wheel) as built:
        listed = built.namelist()
        names = set(listed)
        entry_points = built.read("text2brain-0.1.0.dist-info/entry_points.txt").decode()
        default_weights = built.read(f"text2brain/checkpoints/{DEFAULT_MODEL}/model.safetensors")
    assert len(names) == len(listed)
    package = {n for n in names if n.startswith("text2brain/")}
    subpackages = {p.parent.as_posix() for p in checkout.glob("text2brain/**/__init__.py")}
    assert len(subpackages) > 10
    assert modules(checkout) <= package, sorted(modules(checkout) - package)
    assert {n for n in package if n.startswith("text2brain/splits/")} == {
        f"text2brain/splits/{p.name}" for p in (checkout / "text2brain" / "splits").glob("*.json")
    }
    mapped = {n.removeprefix("text2brain/checkpoints/") for n in package if "/checkpoints/" in n}
    # Every committed release (pyproject.toml's package data names each), no run's checkpoint
    # or export, however named.
    assert mapped == released
    model = checkout / "checkpoints" / DEFAULT_MODEL / "model.safetensors"
    assert default_weights == model.read_bytes()
    others = names - package
    assert all(n.startswith("text2brain-0.1.0.dist-info/") for n in others), sorted(others)
    assert "text2brain = text2brain.cli:main" in entry_points


def test_sdist_holds_the_sources_and_builds_the_same_wheel(
    wheel: Path, checkout: Path, released: set[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The sdist (what `pip install` of a source release builds from) has the package, the
    released model and the build files, no run outputs, and gives the same wheel."""
    out = tmp_path_factory.mktemp("sdist")
    with tarfile.open(build(checkout, "sdist", out)) as sdist:
        names = {m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile()}
        sdist.extractall(out, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    assert {"setup.py", "pyproject.toml", "README.md"} <= names
    assert modules(checkout) <= names
    stored = {n.removeprefix("checkpoints/") for n in names if n.startswith("checkpoints/")}
    assert stored == released  # no run's outputs
    (unpacked,) = [p for p in out.iterdir() if p.is_dir()]
    again = build(unpacked, "wheel", tmp_path_factory.mktemp("again"))
    with zipfile.ZipFile(wheel) as first, zipfile.ZipFile(again) as second:
        assert sorted(second.namelist()) == sorted(first.namelist())
