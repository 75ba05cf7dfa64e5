"""`text2brain serve`: `--model` specs and names, one-line errors (the web extra missing, a bad
model, a port in use), the real command in a subprocess, and the web framework imported by
text2brain/serve alone."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import pytest

import text2brain.serve.cli
from text2brain.cli import COMMANDS, SUMMARIES, main
from text2brain.releases import DEFAULT_MODEL
from text2brain.serve.models import ModelSpec, default_name, load_models, parse_spec, parse_specs

PACKAGE = Path(text2brain.serve.cli.__file__).resolve().parents[1]
WEB_MODULES = ("starlette", "uvicorn", "multipart", "fastapi")
SUBPROCESS_TIMEOUT = 120


# -- model specs --------------------------------------------------------------------------------
def test_specs_and_names(tmp_path: Path) -> None:
    run = tmp_path / "clip"
    run.mkdir()
    (run / "best.ckpt").write_bytes(b"")
    (tmp_path / "my model.ckpt").write_bytes(b"")
    export = tmp_path / "export-v2"
    export.mkdir()
    assert parse_specs([]) == [ModelSpec(DEFAULT_MODEL, None)]
    assert parse_spec(DEFAULT_MODEL) == ModelSpec(DEFAULT_MODEL, None)
    assert parse_spec(f"mine={export}") == ModelSpec("mine", export)
    assert parse_spec(str(run / "best.ckpt")).name == "clip-best"
    assert parse_spec(str(tmp_path / "my model.ckpt")).name == "my-model"
    assert parse_spec(str(export)).name == "export-v2"
    assert default_name(tmp_path / "a=b.ckpt") == "a-b"


@pytest.mark.parametrize(
    ("specs", "error", "message"),
    [
        ([""], ValueError, "--model is empty"),
        (["no/such/file.ckpt"], FileNotFoundError, "no such checkpoint"),
        (["nope"], FileNotFoundError, DEFAULT_MODEL),
        ([DEFAULT_MODEL, f"{DEFAULT_MODEL}=x"], ValueError, "two models are named"),
    ],
)
def test_bad_specs(specs: list[str], error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        parse_specs(specs)


def test_released_models_by_name(tiny_releases: Path) -> None:
    assert parse_spec("mnm") == ModelSpec("mnm-tiny", tiny_releases / "mnm-tiny")
    assert parse_spec("text2brain-tiny").path == tiny_releases / "text2brain-tiny"
    with pytest.raises(FileNotFoundError, match=r"released model \(mnm-tiny \(mnm\)"):
        parse_spec("clip")


def test_load_models_keeps_the_order(tiny_checkpoint: Path) -> None:
    models = load_models(parse_specs([f"b={tiny_checkpoint}", f"a={tiny_checkpoint}"]), "cpu")
    assert list(models) == ["b", "a"]
    assert models["a"].space.shape == models["b"].space.shape


# -- the command ---------------------------------------------------------------------------------
def test_serve_is_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert "serve" in COMMANDS and "serve" in SUMMARIES
    main(["--help"])
    assert "serve" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "127.0.0.1" in out and 'pip install "text2brain[web]"' in out


def run_serve(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """`text2brain serve ARGV` that stops with status 2; its stderr."""
    with pytest.raises(SystemExit) as info:
        main(["serve", *argv])
    assert info.value.code == 2
    return capsys.readouterr().err


def test_without_the_web_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def without_uvicorn(name: str) -> object:
        return None if name == "uvicorn" else object()

    monkeypatch.setattr(text2brain.serve.cli, "find_spec", without_uvicorn)
    err = run_serve([], capsys)
    assert err.count("\n") == 1
    assert err.startswith("text2brain serve: error: ") and "uvicorn missing" in err
    assert 'pip install "text2brain[web]"' in err


def test_bad_model_and_busy_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("uvicorn")
    err = run_serve(["--model", str(tmp_path / "missing.ckpt"), "--port", "0"], capsys)
    assert err.count("\n") == 1 and "no such checkpoint or export folder" in err
    not_a_model = tmp_path / "notes.ckpt"
    not_a_model.write_text("hello")
    err = run_serve(["--model", str(not_a_model), "--port", "0"], capsys)
    assert err.count("\n") == 1 and "notes.ckpt" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        err = run_serve(["--port", str(busy.getsockname()[1])], capsys)
    assert err.count("\n") == 1 and "cannot listen on 127.0.0.1:" in err
    err = run_serve(["--max-upload-mb", "0"], capsys)
    assert "--max-upload-mb must be positive" in err


def test_bad_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    err = run_serve(["--port", "70000"], capsys)
    assert "a port is a number from 0 to 65535" in err


def test_the_command_serves_until_stopped(tiny_checkpoint: Path) -> None:
    """`python -m text2brain serve` on a free port: it says where, then answers."""
    pytest.importorskip("uvicorn")
    command = [sys.executable, "-m", "text2brain", "serve", "--port", "0", "--device", "cpu"]
    command += ["--model", f"tiny={tiny_checkpoint}", "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        lines = []
        while time.monotonic() < deadline:
            line = server.stdout.readline().decode()  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("serving on") or not line:
                break
        assert lines[-1].startswith("serving on http://127.0.0.1:"), lines
        assert "tiny (Predictor(Text2Brain on cpu" in "".join(lines)
        url = lines[-1].split()[2]
        with urlopen(f"{url}healthz", timeout=30) as response:
            assert response.read() == b'{"status":"ok","models":["tiny"]}'
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode is not None


# -- the web framework stays inside text2brain/serve ---------------------------------------------
def test_only_the_serve_package_imports_the_web_framework() -> None:
    outside = []
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "serve"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            outside += [f"{path}: {n}" for n in names if n.split(".")[0] in WEB_MODULES]
    assert outside == []


def test_serve_cli_imports_no_web_module_at_import_time() -> None:
    """`text2brain serve --help` and the missing-extra message need no web framework."""
    code = (
        "import sys, text2brain.cli, text2brain.serve.cli, text2brain.serve.models, "
        "text2brain.serve.uploads; "
        f"print(sorted(m for m in {WEB_MODULES!r} if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
