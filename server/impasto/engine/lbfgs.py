"""L-BFGS that never makes the host wait for the device."""

from __future__ import annotations

import collections
from collections.abc import Callable

import torch

# Curvature pairs with y·s at or below this are skipped, as in torch.optim.LBFGS.
_MIN_CURVATURE = 1e-10


class LBFGS:
    """L-BFGS on one tensor: a fixed step, one function evaluation per iteration.

    The same update as `torch.optim.LBFGS(max_iter=1)` without a line search, but every scalar stays a
    tensor on the device. PyTorch's version turns them into Python numbers about 2·history + 5 times a
    step, and each of those stalls a GPU until the host catches up (reference/performance.md). Here
    a rejected curvature pair still takes its slot in the history, with no weight.
    """

    def __init__(self, image: torch.Tensor, lr: float, history: int):
        self.image = image
        self.lr = lr
        self.pairs: collections.deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = collections.deque(
            maxlen=history
        )
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (gradient, step taken)
        self.scale = torch.ones((), device=image.device)  # the initial inverse Hessian, γ·I

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        with torch.enable_grad():
            loss = closure()
        gradient = self.image.grad.reshape(-1).clone()
        if self.previous is None:
            # First step: steepest descent, at most lr in total absolute change (torch's choice).
            direction = -gradient
            length = torch.clamp(1 / gradient.abs().sum(), max=1.0) * self.lr
        else:
            self._remember(gradient)
            direction = self._direction(gradient)
            length = torch.tensor(self.lr, device=gradient.device)
        step = direction * length
        self.image.add_(step.view_as(self.image))
        self.previous = (gradient, step)
        return loss

    def _remember(self, gradient: torch.Tensor) -> None:
        previous_gradient, s = self.previous
        y = gradient - previous_gradient
        ys = y.dot(s)
        useful = ys > _MIN_CURVATURE
        rho = torch.where(useful, 1 / ys, torch.zeros_like(ys))
        self.pairs.append((s, y, rho))
        self.scale = torch.where(useful, ys / y.dot(y), self.scale)

    def _direction(self, gradient: torch.Tensor) -> torch.Tensor:
        """−H·g by the two-loop recursion over the remembered pairs."""
        q = -gradient
        alphas = []
        for s, y, rho in reversed(self.pairs):
            alpha = rho * s.dot(q)
            q -= alpha * y
            alphas.append(alpha)
        r = q * self.scale
        for (s, y, rho), alpha in zip(self.pairs, reversed(alphas), strict=True):
            beta = rho * y.dot(r)
            r += (alpha - beta) * s
        return r
