"""What precision `auto` means on this machine, and a warning where bf16 would be slow.

bf16 autocast pays off only where the hardware computes in bf16: CUDA GPUs from Ampere on and
x86 CPUs with AVX512-BF16 or AMX-BF16. Elsewhere torch emulates it, which on an AVX2-only CPU
makes a training step about 25x slower than float32. So `auto` decides per machine, once, at
start:

- a CUDA GPU with bf16: bf16 autocast (trainer "bf16-mixed", inference "bf16");
- an older CUDA GPU (bf16 only emulated): fp16 autocast ("16-mixed", "fp16");
- a CPU with AVX512-BF16 or AMX-BF16, as torch reports it: bf16 autocast;
- any other CPU (arm CPUs included, unless torch reports one of those two): float32
  ("32-true", "fp32");
- other accelerators (mps, xla, ...): float32; set the precision explicitly to use another.

An explicit precision is always kept; an explicit bf16 on a CPU without native bf16 gets a
warning that says what it costs. Only torch is imported: inference uses this module and must
not pay for Lightning.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
#: Trainer precisions (Lightning's names and alias) that compute in bf16.
TRAINER_BF16 = ("bf16-mixed", "bf16-true", "bf16")
#: Trainer precision -> the Predictor's name for it.
INFERENCE_NAMES = {"bf16-mixed": "bf16", "16-mixed": "fp16", "32-true": "fp32"}
#: The measurement behind the warning for bf16 on a CPU without native bf16.
BF16_SLOWDOWN = (
    "on an AVX2-only AMD EPYC, a MiniLM forward+backward pass at batch 24 x 128 tokens took "
    "43 s under bf16 autocast vs 1.7 s in fp32 (about 25x slower)"
)
_CPU_BF16_FEATURES = (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16"))


@dataclass(frozen=True)
class Choice:
    """A precision to use, why, and the warning to give when it will be slow."""

    asked: Any
    precision: Any
    reason: str
    warning: str | None = None


def cpu_capabilities() -> Mapping[str, Any]:
    """The CPU's features as torch reports them ('avx512_bf16', 'amx_bf16', 'cpu_name', ...).

    `torch.cpu.get_capabilities` is public from torch 2.13; older versions have only private
    probes of the two bf16 features (AMX tiles come with AMX-BF16 on every CPU that has them),
    and a torch with neither counts as having no native bf16.
    """
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        return get_capabilities()
    probes = {
        "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None),
        "amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", None),
    }
    return {key: bool(probe is not None and probe()) for key, probe in probes.items()}


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and a phrase that says so for the messages."""
    capabilities = cpu_capabilities()
    name = capabilities.get("cpu_name") or capabilities.get("architecture") or "this CPU"
    found = [label for key, label in _CPU_BF16_FEATURES if capabilities.get(key)]
    if found:
        return True, f"the CPU ({name}) has native bf16 ({', '.join(found)})"
    return False, f"the CPU ({name}) has no native bf16 (neither AVX512-BF16 nor AMX-BF16)"


def cuda_bf16() -> bool:
    """Whether the current CUDA GPU computes bf16 natively; emulation (before Ampere) is slow."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.4: no emulation to leave out
        return torch.cuda.is_bf16_supported()


def device_type(accelerator: str) -> str:
    """The device type ("cuda", "cpu", "mps", ...) of a Lightning accelerator name or a device.

    "auto" is taken as CUDA when available, else the CPU; Lightning's "gpu" is CUDA, else MPS.
    """
    name = str(accelerator).split(":", 1)[0].lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "gpu":
        return "cuda" if torch.cuda.is_available() else "mps"
    return name


def _auto(device: str) -> tuple[str, str]:
    """The trainer precision `auto` stands for on `device`, and why."""
    if device == "cuda":
        if cuda_bf16():
            return "bf16-mixed", "the CUDA GPU supports bf16"
        return "16-mixed", "the CUDA GPU has no native bf16 (before Ampere), so fp16 autocast"
    if device == "cpu":
        native, why = cpu_bf16()
        return ("bf16-mixed" if native else "32-true"), why
    return "32-true", f"auto picks a lower precision only on CPUs and CUDA GPUs, not on {device}"


def _slow_bf16(asked: Any, device: str, suggestion: str) -> str | None:
    """The warning for an explicit bf16 on a CPU that only emulates it; None elsewhere."""
    if device != "cpu":
        return None
    native, why = cpu_bf16()
    if native:
        return None
    return (
        f"precision {asked!r} is much slower than float32 here: {why}, so torch emulates bf16; "
        f"{BF16_SLOWDOWN}. Use {suggestion}"
    )


def trainer_precision(precision: Any, accelerator: str = AUTO) -> Choice:
    """Lightning's precision for a trainer on `accelerator` ("auto", "cpu", "gpu", "cuda", ...)."""
    device = device_type(accelerator)
    if precision != AUTO:
        warning = None
        if str(precision) in TRAINER_BF16:
            warning = _slow_bf16(precision, device, "precision: auto or 32-true")
        return Choice(precision, precision, "asked for", warning)
    chosen, why = _auto(device)
    return Choice(AUTO, chosen, why)


def inference_precision(precision: str, device: str | torch.device) -> Choice:
    """The Predictor's precision ("fp32", "bf16" or "fp16") for a model on `device`."""
    kind = device_type(str(device))
    if precision != AUTO:
        warning = None
        if precision == "bf16":
            warning = _slow_bf16(precision, kind, 'precision="auto" or "fp32"')
        return Choice(precision, precision, "asked for", warning)
    chosen, why = _auto(kind)
    return Choice(AUTO, INFERENCE_NAMES[chosen], why)


def report(choice: Choice, info: Callable[[str], None] = log.info) -> None:
    """One line saying what `auto` chose and why; the warning as a UserWarning and in the log."""
    if choice.asked == AUTO:
        info(f"precision auto -> {choice.precision}: {choice.reason}")
    if choice.warning:
        warnings.warn(choice.warning, UserWarning, stacklevel=2)
        log.warning(choice.warning)
