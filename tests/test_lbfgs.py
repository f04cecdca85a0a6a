"""The engine's L-BFGS: PyTorch's update, without host synchronisation."""

from __future__ import annotations

import pytest
import torch
from impasto.engine.lbfgs import LBFGS
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


class _RefuseHostSync(TorchDispatchMode):
    """Fails on the operation behind .item(), float(), bool() and `if tensor:`: a host sync on a GPU."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("a tensor was turned into a Python number")
        return func(*args, **(kwargs or {}))


def test_a_step_never_turns_a_tensor_into_a_python_number():
    x = torch.rand(50, dtype=torch.float64, requires_grad=True)
    ours = LBFGS(x, lr=0.01, history=4)
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
