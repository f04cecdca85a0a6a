"""`impasto info` and `impasto styles`: what a server (or this machine's engine) is and offers."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..protocol import JobPlan
from .progress import duration
from .runners import connect


def local_info() -> int:
    from ..engine import default_iterations, default_size
    from ..engine.loading import load_engine

    engine = load_engine("auto")
    print(f"impasto {__version__} (in-process engine)")
    print(f"device:    {engine.device}  (precision {engine.precision})")
    print(f"weights:   {engine.weights.name}  (preprocessing {engine.weights.preprocessing.name})")
    print(
        f"defaults:  {default_size(engine.device)} px long side, "
        f"{default_iterations(engine.device)} iterations"
    )
    return 0


def remote_info(args: argparse.Namespace) -> int:
    with connect(args, args.server) as client:
        info = client.info()
    limits = info.limits
    print(f"impasto-server {info.server_version} at {client.address} (protocol {info.protocol_version})")
    for state in info.devices:
        device = state.device
        memory = f"{device.memory_bytes / 2**30:.1f} GiB" if device.memory_bytes else "?"
        print(f"device:    {device}, {memory}, {device.precision}, {'busy' if state.busy else 'idle'}")
    print(f"weights:   {info.weights}")
    print(f"defaults:  {info.default_size} px long side, {info.default_iterations} iterations")
    print(
        f"limits:    {limits.max_pixels:,} pixels per image, {limits.max_size} px working size, "
        f"{limits.max_queue} jobs queued"
    )
    print(f"full size: {'yes' if limits.full_size else 'no (update impasto-server for --size full)'}")
    print(f"now:       {info.running_jobs} running, {info.queue_length} waiting")
    idle = f"after {info.idle_exit_minutes:g} minutes unused" if info.idle_exit_minutes else "never"
    print(f"idle exit: {idle}")
    return 0


def remote_styles(args: argparse.Namespace) -> int:
    with connect(args, args.server) as client:
        presets = client.styles()
    if not presets:
        print("the server has no style presets; add images to its --styles-dir", file=sys.stderr)
    for preset in presets:
        print(f"{preset.id:32} {preset.title}")
    return 0


def describe_plan(name: str, plan: JobPlan) -> str:
    """A plan as lines a person reads: where, how large, how long, and each scale."""
    device = plan.device
    gib = 2**30
    lines = [
        f"{name}: working size {plan.working_width}×{plan.working_height} on {device} ({device.precision})",
        f"  about {duration(plan.estimated_seconds)}, "
        f"peak device memory {plan.estimated_memory_bytes / gib:.2f} GiB"
        + (f", {plan.host_memory_bytes / gib:.2f} GiB in host memory" if plan.host_memory_bytes else "")
        + (f"; {plan.jobs_ahead} job(s) ahead of it now" if plan.jobs_ahead else ""),
    ]
    for number, scale in enumerate(plan.scales, 1):
        tiles = f" in {scale.tiles} tiles" if scale.tiles else ""
        lines.append(
            f"  scale {number}/{len(plan.scales)}: {scale.width}×{scale.height}{tiles}, "
            f"{scale.iterations} iterations, about {duration(scale.seconds)}, "
            f"{scale.device_bytes / gib:.2f} GiB"
        )
    return "\n".join(lines)
