"""`precision: auto` on every kind of machine (faked), and the warning for bf16 where it is slow.

The CPU's capabilities, and CUDA's availability and bf16 support, are faked: each branch of
text2brain.precision runs on any test machine.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

import pytest
import torch

from text2brain import precision

AVX2_ONLY = {"architecture": "x86_64", "cpu_name": "AMD EPYC", "avx2": True}
AVX512_BF16 = {**AVX2_ONLY, "cpu_name": "Intel Xeon", "avx512_bf16": True}
AMX_ONLY = {**AVX2_ONLY, "cpu_name": "Intel Xeon", "amx_bf16": True}
#: The real one, before conftest fakes it for every test.
TORCH_CPU_CAPABILITIES = precision.cpu_capabilities
#: torch's keys on arm: a bf16 extension, but none of the x86 features text2brain counts.
ARM = {"architecture": "arm64", "cpu_name": "Apple M2", "neon": True, "bf16": True}


def fake_cpu(monkeypatch: pytest.MonkeyPatch, capabilities: dict[str, Any]) -> None:
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: capabilities)


def fake_cuda(monkeypatch: pytest.MonkeyPatch, available: bool, bf16: bool = False) -> None:
    """CUDA available or not, its GPU with native bf16 or not (emulation never counts)."""
    asked: list[bool] = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return available and (bf16 or including_emulation)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


# -- auto ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cuda", "cuda_bf16", "cpu", "trainer", "inference"),
    [
        (True, True, AVX2_ONLY, "bf16-mixed", "bf16"),
        (True, False, AVX2_ONLY, "16-mixed", "fp16"),  # before Ampere: bf16 only emulated
        (False, False, AVX512_BF16, "bf16-mixed", "bf16"),
        (False, False, AMX_ONLY, "bf16-mixed", "bf16"),
        (False, False, AVX2_ONLY, "32-true", "fp32"),
        (False, False, ARM, "32-true", "fp32"),
        (False, False, {}, "32-true", "fp32"),  # a torch that reports nothing
    ],
)
def test_auto_picks_per_machine(
    monkeypatch: pytest.MonkeyPatch,
    cuda: bool,
    cuda_bf16: bool,
    cpu: dict[str, Any],
    trainer: str,
    inference: str,
) -> None:
    fake_cuda(monkeypatch, cuda, cuda_bf16)
    fake_cpu(monkeypatch, cpu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        choice = precision.trainer_precision("auto", "auto")
        device = "cuda" if cuda else "cpu"
        predicted = precision.inference_precision("auto", torch.device(device))
    assert (choice.precision, predicted.precision) == (trainer, inference)
    assert choice.warning is None and predicted.warning is None
    if not cuda:
        name = cpu.get("cpu_name", "this CPU")
        assert name in choice.reason
        assert ("has native bf16" in choice.reason) == (trainer == "bf16-mixed")


@pytest.mark.parametrize(
    ("accelerator", "expected"),
    [("cpu", "32-true"), ("gpu", "bf16-mixed"), ("cuda", "bf16-mixed"), ("mps", "32-true")],
)
def test_auto_follows_the_accelerator(
    monkeypatch: pytest.MonkeyPatch, accelerator: str, expected: str
) -> None:
    """On a machine with a bf16 GPU and an AVX2-only CPU, the accelerator decides."""
    fake_cuda(monkeypatch, available=True, bf16=True)
    fake_cpu(monkeypatch, AVX2_ONLY)
    choice = precision.trainer_precision("auto", accelerator)
    assert choice.precision == expected
    if accelerator == "mps":
        assert "not on mps" in choice.reason


def test_cuda_bf16_without_the_emulation_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch < 2.4 takes no `including_emulation`: its plain answer is used."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert precision.cuda_bf16() is True


@pytest.mark.parametrize(
    ("probes", "native"),
    [
        ({"_is_avx512_bf16_supported": True, "_is_amx_tile_supported": False}, True),
        ({"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": True}, True),
        ({"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": False}, False),
        ({}, False),  # neither probe exists
    ],
)
def test_capabilities_of_an_older_torch(
    monkeypatch: pytest.MonkeyPatch, probes: dict[str, bool], native: bool
) -> None:
    """Without `torch.cpu.get_capabilities`: torch's private probes, else no native bf16."""
    monkeypatch.setattr(precision, "cpu_capabilities", TORCH_CPU_CAPABILITIES)  # not faked
    for name in ("get_capabilities", "_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    for name, answer in probes.items():
        monkeypatch.setattr(torch.cpu, name, lambda answer=answer: answer, raising=False)
    assert precision.cpu_bf16()[0] is native


def test_capabilities_come_from_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(torch.cpu, "get_capabilities"):
        pytest.skip("torch.cpu.get_capabilities is new in torch 2.13")
    assert TORCH_CPU_CAPABILITIES() == torch.cpu.get_capabilities()


# -- explicit values -----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["32-true", 32, "16-mixed", "bf16-mixed", "bf16-true", "64"])
def test_explicit_trainer_values_are_kept(monkeypatch: pytest.MonkeyPatch, value: Any) -> None:
    fake_cuda(monkeypatch, available=False)
    fake_cpu(monkeypatch, AMX_ONLY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choice = precision.trainer_precision(value, "cpu")
        precision.report(choice)
    assert choice.precision == value and choice.warning is None


@pytest.mark.parametrize("value", ["bf16-mixed", "bf16-true", "bf16"])
def test_explicit_bf16_on_a_cpu_without_it_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    fake_cuda(monkeypatch, available=False)
    fake_cpu(monkeypatch, AVX2_ONLY)
    choice = precision.trainer_precision(value, "auto")
    assert choice.precision == value  # kept all the same
    with caplog.at_level(logging.INFO, logger=precision.__name__):
        with pytest.warns(UserWarning) as warned:
            precision.report(choice)
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "AMD EPYC" in message and "43 s" in message and "1.7 s" in message
    assert "25x" in message and "precision: auto or 32-true" in message
    assert [r.getMessage() for r in caplog.records] == [message]
    assert caplog.records[0].levelno == logging.WARNING


def test_explicit_bf16_on_a_gpu_does_not_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, available=True, bf16=True)
    fake_cpu(monkeypatch, AVX2_ONLY)
    assert precision.trainer_precision("bf16-mixed", "auto").warning is None
    assert precision.inference_precision("bf16", "cuda:0").warning is None


def test_explicit_inference_values(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpu(monkeypatch, AVX2_ONLY)
    assert precision.inference_precision("fp32", "cpu").warning is None
    slow = precision.inference_precision("bf16", "cpu")
    assert slow.precision == "bf16"
    assert "25x" in slow.warning and 'precision="auto" or "fp32"' in slow.warning
    fake_cpu(monkeypatch, AVX512_BF16)
    assert precision.inference_precision("bf16", "cpu").warning is None


# -- the one line logged -------------------------------------------------------------------------
def test_auto_logs_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, available=False)
    fake_cpu(monkeypatch, AMX_ONLY)
    lines: list[str] = []
    precision.report(precision.trainer_precision("auto", "cpu"), info=lines.append)
    assert lines == [
        "precision auto -> bf16-mixed: the CPU (Intel Xeon) has native bf16 (AMX-BF16)"
    ]
    precision.report(precision.trainer_precision("32-true", "cpu"), info=lines.append)
    assert len(lines) == 1  # an explicit value: nothing to explain


# -- the trainer ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("cpu", "expected"), [(AVX2_ONLY, "32-true"), (AMX_ONLY, "bf16-mixed")])
def test_trainer_resolves_auto(
    monkeypatch: pytest.MonkeyPatch, cpu: dict[str, Any], expected: str
) -> None:
    import text2brain.training
    from text2brain.training import AutoPrecisionTrainer

    fake_cuda(monkeypatch, available=False)
    fake_cpu(monkeypatch, cpu)
    lines: list[str] = []
    monkeypatch.setattr(text2brain.training, "rank_zero_info", lines.append)
    trainer = AutoPrecisionTrainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert trainer.precision == expected
    assert len(lines) == 1 and lines[0].startswith(f"precision auto -> {expected}: the CPU")
    explicit = AutoPrecisionTrainer(accelerator="cpu", precision="64-true", logger=False)
    assert explicit.precision == "64-true" and len(lines) == 1


def test_inference_does_not_import_lightning() -> None:
    """text2brain.precision is used by inference: torch only."""
    import subprocess

    code = "import text2brain.precision, sys; print('lightning' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
