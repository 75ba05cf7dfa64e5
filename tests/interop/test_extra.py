"""The nimare extra stays optional: the core never imports NiMARE, and without it every entry
point fails with one clear error naming the extra. These tests run with or without NiMARE."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from text2brain.cli import main
from text2brain.errors import MissingExtraError
from text2brain.interop.nimare import meta_analyze, require_nimare, to_nimare_dataset

INSTALL = 'pip install "text2brain[nimare]"'

#: Every core module a user imports: none may bring NiMARE in.
CORE_MODULES = (
    "text2brain",
    "text2brain.inference",
    "text2brain.corpus",
    "text2brain.data",
    "text2brain.models",
    "text2brain.query",
    "text2brain.cli",
    "text2brain.interop",
    "text2brain.interop.nimare",
    "text2brain.interop.meta",
)


def test_importing_the_core_imports_no_nimare() -> None:
    code = (
        f"import importlib, sys\nfor m in {CORE_MODULES!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'nimare'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip() == "[]"


@pytest.fixture
def without_nimare(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import nimare` fails as it does when the extra is not installed."""
    for name in [m for m in sys.modules if m.split(".")[0] == "nimare"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nimare", None)


@pytest.mark.usefixtures("without_nimare")
def test_missing_nimare_is_one_error_naming_the_extra(small_space) -> None:
    from synthetic import make_corpus

    with pytest.raises(MissingExtraError, match=r"needs NiMARE.*" + r"text2brain\[nimare\]"):
        require_nimare("a test")
    corpus = make_corpus(small_space, 8)
    for call in (
        lambda: to_nimare_dataset(corpus),
        lambda: meta_analyze(object()),
    ):
        with pytest.raises(ImportError) as info:
            call()
        assert INSTALL in str(info.value)


@pytest.mark.usefixtures("without_nimare", "one_thread")
def test_missing_nimare_fails_the_predictor_and_the_command_before_any_work(
    tiny_predictor, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(MissingExtraError, match=r"text2brain\[nimare\]"):
        tiny_predictor.meta_analysis("visual cortex", k=5)
    out = tmp_path / "out"
    argv = ["query", "visual cortex", "--meta-analysis", "ale", "--ckpt", str(tiny_checkpoint)]
    with pytest.raises(SystemExit) as info:
        main(argv + ["-o", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("text2brain query: error: ") and "\n" not in err, err
    assert INSTALL in err and "--meta-analysis" in err
    assert not out.exists()


def test_the_extra_caps_nilearn_below_what_nimare_0_22_needs() -> None:
    """pyproject's extra resolves with NiMARE 0.22: nilearn < 0.14 in the extra itself."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text("utf-8"))
    extra = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["nimare"]]
    names = {r.name.lower(): r.specifier for r in extra}
    assert set(names) == {"nimare", "nilearn"}
    assert names["nimare"].contains("0.22.1") and not names["nimare"].contains("0.23.0")
    assert not names["nilearn"].contains("0.14.1") and names["nilearn"].contains("0.13.1")


def test_installed_nimare_resolves_to_working_versions() -> None:
    """Where the extra is installed, its pins hold together (pandas 3, numpy 2 included)."""
    pytest.importorskip("nimare")
    from importlib.metadata import version

    import nilearn

    assert version("nimare").startswith("0.22.")
    assert tuple(int(p) for p in nilearn.__version__.split(".")[:2]) < (0, 14)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300
    )
    broken = [
        line for line in done.stdout.splitlines() if line.lower().startswith(("nimare", "nilearn"))
    ]
    assert broken == []
