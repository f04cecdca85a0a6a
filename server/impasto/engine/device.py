"""Device policy: which device and precision a job runs on, what that device is, and its memory."""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass

import torch

from .estimate import peak_bytes
from .recipes import DEFAULT


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda", "mps" or "cpu"
    name: str  # e.g. "NVIDIA H100 80GB HBM3", or the CPU model
    memory_bytes: int  # total device memory (RAM for a CPU)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible to PyTorch")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: Apple's Metal backend is not available here")
    return torch.device(name)


def pick_precision(device: torch.device, precision: str = "auto") -> str:
    """bf16 convolutions where the hardware multiplies bf16 natively, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if cuda_has_bf16_units(device) else "fp32"
    return "bf16" if device.type == "cpu" and cpu_prefers_bf16() else "fp32"


def cuda_has_bf16_units(device: torch.device) -> bool:
    """Whether the GPU's tensor cores multiply bf16: from Ampere (compute capability 8.0) on. Older GPUs
    (V100, T4, GTX 10xx, RTX 20xx) would emulate it, slower than fp32."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def default_size(device: torch.device) -> int:
    """A working long side that finishes in minutes, not hours, on this kind of device."""
    return {"cuda": 1024, "mps": 768}.get(device.type, 384)


def default_iterations(device: torch.device) -> int:
    """Iterations at the working size. On a CPU the fewest that reach the picture's final look: past
    them the distances to the targets barely move while the time grows (docs/benchmarks.md, "The
    default CPU job"); a GPU has time to spare for the last few per cent."""
    return 100 if device.type in ("cuda", "mps") else CPU_ITERATIONS


CPU_ITERATIONS = 40


def cpu_prefers_bf16(cpuinfo: str | None = None) -> bool:
    """Whether bf16 convolutions beat fp32 on this CPU (`cpuinfo`: the text of /proc/cpuinfo, read when
    not given). Measured (docs/benchmarks.md, "Precision"): with AMX's bf16 tiles, 2.3–2.8× faster; on an
    AMD CPU with AVX512-BF16 (Zen 4 and later), 1.9× faster; on an Intel CPU with AVX512-BF16 but no AMX,
    1.5× slower; without either, bf16 is emulated."""
    if cpuinfo is None:
        cpuinfo = _read_cpuinfo()
    flags = set(_cpuinfo_field(cpuinfo, "flags").split())
    return "amx_bf16" in flags or (
        "avx512_bf16" in flags and _cpuinfo_field(cpuinfo, "vendor_id") == "AuthenticAMD"
    )


def _read_cpuinfo() -> str:
    """Linux's description of the CPU; "" elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _cpuinfo_field(cpuinfo: str, name: str) -> str:
    """The value of the first line `name : value` in /proc/cpuinfo's text; "" where there is none."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def describe(device: torch.device) -> DeviceInfo:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return DeviceInfo("cuda", props.name, props.total_memory)
    if device.type == "mps":
        return DeviceInfo("mps", "Apple GPU (Metal)", host_memory_bytes())
    return DeviceInfo("cpu", cpu_name(), host_memory_bytes())


def host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30  # a guess where the OS does not say


def free_memory_bytes(device: torch.device) -> int:
    """What a new job can use now: free GPU memory plus PyTorch's cached blocks, or available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return host_memory_bytes() // 2  # no better guess where the OS does not say


def cpu_name() -> str:
    return _cpuinfo_field(_read_cpuinfo(), "model name") or platform.processor() or "CPU"


def max_working_size(info: DeviceInfo, precision: str) -> int:
    """The longest square side whose optimisation fits in half the device's memory."""
    pixels = info.memory_bytes / 2 / peak_bytes(1, 1, precision, DEFAULT)
    return int(math.sqrt(pixels)) // 16 * 16
