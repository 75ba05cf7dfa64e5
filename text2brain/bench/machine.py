"""A one-line description of the machine a benchmark ran on, printed with every figure."""

from __future__ import annotations

import os
import platform
import resource

import torch

from text2brain.precision import cpu_capabilities

#: CPU features that decide which precision is fast (torch.cpu.get_capabilities names).
CPU_FLAGS = ("avx2", "avx512_f", "avx512_bf16", "amx_bf16")


def cpu_flags() -> list[str]:
    """Which of `CPU_FLAGS` this CPU has, as torch reports them."""
    capabilities = cpu_capabilities()
    return [flag for flag in CPU_FLAGS if capabilities.get(flag)]


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu} ({' '.join(cpu_flags()) or 'no AVX2'}), {os.cpu_count()} cores, "
        f"torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {gpu}, Python {platform.python_version()}"
    )


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
