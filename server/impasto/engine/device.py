"""What the server runs on, and the limits that follow from it."""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass

import torch

from ..engine import DEFAULT
from ..engine.estimate import peak_bytes

# Host bytes per uploaded pixel while a job lives: raw RGBA, float RGB, resized copies, the reply.
HOST_BYTES_PER_UPLOADED_PIXEL = 160
MAX_UPLOAD_PIXELS = 100_000_000


@dataclass(frozen=True)
class DeviceInfo:
    kind: str
    name: str
    memory_bytes: int


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
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def max_working_size(info: DeviceInfo, precision: str) -> int:
    """The longest square side whose optimisation fits in half the device's memory."""
    pixels = info.memory_bytes / 2 / peak_bytes(1, 1, precision, DEFAULT)
    return int(math.sqrt(pixels)) // 16 * 16


def max_upload_pixels() -> int:
    return min(MAX_UPLOAD_PIXELS, host_memory_bytes() // HOST_BYTES_PER_UPLOADED_PIXEL)
