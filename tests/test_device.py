"""Which precision `auto` picks on a CPU: the one measured faster on that kind of chip."""

from __future__ import annotations

import pytest
from impasto.engine.device import cpu_prefers_bf16


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
