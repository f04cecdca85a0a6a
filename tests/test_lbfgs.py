"""The engine's L-BFGS: PyTorch's update, without host synchronisation."""

from __future__ import annotations

import pytest
import torch
from impasto.engine.lbfgs import LBFGS, History
from torch.utils._python_dispatch import TorchDispatchMode


def rosenbrock_like(x: torch.Tensor) -> torch.Tensor:
    # Non-convex and badly scaled, so the curvature pairs and the initial scaling all matter.
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum() + 0.1 * torch.sin(3 * x).sum()


def run(optimizer_for, steps: int) -> list[torch.Tensor]:
    x = torch.linspace(-1.2, 1.0, 24, dtype=torch.float64).requires_grad_(True)
    optimizer = optimizer_for(x)

    def closure() -> torch.Tensor:
        x.grad = None
        loss = rosenbrock_like(x)
        loss.backward()
        return loss

    trajectory = []
    for _ in range(steps):
        optimizer.step(closure)
        trajectory.append(x.detach().clone())
    return trajectory


def test_follows_torch_lbfgs_without_line_search():
    ours = run(lambda x: LBFGS(x, lr=0.05, history=5), 40)
    theirs = run(lambda x: torch.optim.LBFGS([x], lr=0.05, max_iter=1, history_size=5), 40)
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        # The same arithmetic in another order: equal to rounding.
        assert (a - b).abs().max() <= 1e-7 * b.abs().max(), f"step {step + 1}"
    assert rosenbrock_like(ours[-1]) < rosenbrock_like(ours[0]) / 10


def test_a_history_on_the_host_takes_the_same_steps():
    """As a GPU's tiled scale keeps it: in host memory, read in pieces (of 7 values here); on this CPU
    the same code path (stored copies, piecewise dot products and updates)."""
    on_device = run(lambda x: LBFGS(x, lr=0.05, history=5), 40)
    on_host = run(lambda x: LBFGS(x, lr=0.05, history=History(5, x.device, on_host=True, piece=7)), 40)
    for step, (a, b) in enumerate(zip(on_host, on_device, strict=True)):
        # Only the dot products' summation order differs (piece by piece).
        assert (a - b).abs().max() <= 1e-9 * b.abs().max(), f"step {step + 1}"


@pytest.mark.parametrize("on_host", [False, True], ids=["on the device", "on the host"])
def test_a_bf16_history_still_converges(on_host: bool):
    exact = run(lambda x: LBFGS(x, lr=0.05, history=5), 40)
    in_bf16 = run(lambda x: LBFGS(x, 0.05, History(5, x.device, on_host, torch.bfloat16, piece=7)), 40)
    assert not torch.equal(in_bf16[-1], exact[-1])  # the stored pairs were rounded
    assert rosenbrock_like(in_bf16[-1]) < rosenbrock_like(in_bf16[0]) / 10


def test_a_full_history_on_the_host_reuses_its_buffers():
    history = History(3, torch.device("cpu"), on_host=True, piece=4)
    x = torch.rand(10, dtype=torch.float64, requires_grad=True)
    optimizer = LBFGS(x, lr=0.01, history=history)

    def closure() -> torch.Tensor:
        x.grad = None
        loss = rosenbrock_like(x)
        loss.backward()
        return loss

    seen: list[torch.Tensor] = []  # held, so that no freed buffer's address comes back by chance
    for _ in range(12):
        optimizer.step(closure)
        seen += [t for s, y, _ in history.pairs for t in (s, y)]
        assert len(history.pairs) <= 3
    assert len({t.data_ptr() for t in seen}) <= 2 * 3 + 1  # three pairs and the step awaiting its y


class _RefuseHostSync(TorchDispatchMode):
    """Fails on the operation behind .item(), float(), bool() and `if tensor:`: a host sync on a GPU."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("a tensor was turned into a Python number")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("on_host", [False, True], ids=["history on the device", "history on the host"])
def test_a_step_never_turns_a_tensor_into_a_python_number(on_host: bool):
    x = torch.rand(50, dtype=torch.float64, requires_grad=True)
    ours = LBFGS(x, lr=0.01, history=History(4, x.device, on_host=on_host, piece=16))
    theirs = torch.optim.LBFGS([x.detach().clone().requires_grad_(True)], lr=0.01, max_iter=1)

    def closure_for(tensor):
        def closure():
            tensor.grad = None
            loss = rosenbrock_like(tensor)
            loss.backward()
            return loss

        return closure

    with _RefuseHostSync():
        for _ in range(8):
            ours.step(closure_for(x))
        with pytest.raises(AssertionError, match="Python number"):  # the test can tell
            theirs.step(closure_for(theirs.param_groups[0]["params"][0]))
