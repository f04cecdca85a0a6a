"""How the CPU runs: the precision `auto` picks (the one measured faster on that kind of chip; on a CUDA GPU,
bf16 from Ampere on), and how PyTorch's threads wait for each other."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from impasto.engine.device import cpu_prefers_bf16, pick_precision


def cpuinfo(vendor: str, *flags: str) -> str:
    """Two processors' worth of /proc/cpuinfo, as Linux writes it."""
    processor = (
        f"vendor_id\t: {vendor}\nmodel name\t: a CPU\nflags\t\t: fpu sse2 avx2 avx512f {' '.join(flags)}\n"
    )
    return "\n".join(f"processor\t: {n}\n{processor}" for n in range(2))


@pytest.mark.parametrize(
    ("text", "bf16"),
    [
        (cpuinfo("GenuineIntel", "avx512_bf16", "amx_bf16", "amx_tile"), True),  # Sapphire Rapids: 2.3–2.8×
        (cpuinfo("AuthenticAMD", "avx512_bf16"), True),  # Zen 4: 1.9× faster
        (cpuinfo("GenuineIntel", "avx512_bf16", "avx512_fp16"), False),  # AMX hidden by a VM: 1.5× slower
        (cpuinfo("AuthenticAMD"), False),  # Zen 3: bf16 would be emulated
        (cpuinfo("GenuineIntel"), False),
        ("", False),  # not Linux: /proc/cpuinfo says nothing
    ],
)
def test_bf16_is_chosen_only_where_it_was_measured_faster(text: str, bf16: bool):
    assert cpu_prefers_bf16(text) is bf16


@pytest.mark.parametrize(
    ("chosen", "seen"),
    [
        ({}, "10000 None"),  # a short spin: as fast on a quiet machine, far faster on a busy one
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "None ACTIVE"),  # the user's choice stands
        ({"GOMP_SPINCOUNT": "5"}, "5 None"),
    ],
)
def test_the_server_and_the_cli_start_pytorchs_threads_with_a_short_wait(chosen: dict, seen: str):
    """libgomp reads its setting once, when PyTorch loads: each entry point sets it before, unless the
    user set one. (Run in fresh processes: this one loaded PyTorch long ago.)"""
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    for entry_point in ("impasto.service.main", "impasto.cli"):
        shown = "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
        code = f"import os, {entry_point}; {shown}"
        result = subprocess.run(
            [sys.executable, "-c", code], env={**environment, **chosen}, capture_output=True, text=True
        )
        assert result.returncode == 0 and result.stdout.split("\n")[0] == seen, (entry_point, result)


@pytest.mark.parametrize(
    ("capability", "precision"),
    [
        ((7, 0), "fp32"),  # V100: no bf16 units
        ((7, 5), "fp32"),  # T4, RTX 20xx
        ((8, 0), "bf16"),  # A100: Ampere's tensor cores multiply bf16
        ((8, 6), "bf16"),  # RTX 30xx
        ((9, 0), "bf16"),  # H100
    ],
)
def test_auto_picks_bf16_on_a_cuda_gpu_only_from_ampere_on(monkeypatch, capability, precision):
    asked = []
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda device: asked.append(device) or capability
    )
    device = torch.device("cuda:1")
    assert pick_precision(device) == precision
    assert asked == [device]  # the engine's own GPU, not the current one
    assert pick_precision(device, "fp32") == "fp32" and pick_precision(device, "bf16") == "bf16"
