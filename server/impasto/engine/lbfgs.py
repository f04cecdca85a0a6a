"""L-BFGS that never makes the host wait for the device, with its history on the device or the host."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

import torch

# Curvature pairs with y·s at or below this are skipped, as in torch.optim.LBFGS.
_MIN_CURVATURE = 1e-10
# Values moved to the device at a time from a history kept on the host: 16 MiB of fp32.
PIECE = 1 << 22


class History:
    """L-BFGS's curvature pairs (s, y, ρ), on the device or in host memory, in `dtype` (None: the
    vectors' own).

    On the host (`on_host`), each vector is stored in `dtype` (pinned next to a GPU) and comes to the
    device in pieces of `piece` values (default PIECE) while the recursion reads it, so that a picture's
    history takes host memory, not the device memory its tiles need. Every copy is queued on the
    device's stream, non-blocking both ways, so that neither makes the host wait. Pairs that fall out
    of the history give their buffers to the next ones.
    """

    def __init__(
        self,
        length: int,
        device: torch.device,
        on_host: bool = False,
        dtype: torch.dtype | None = None,
        piece: int | None = None,
    ):
        self.length, self.device, self.on_host, self.dtype = length, device, on_host, dtype
        self.piece = piece or PIECE
        self.pairs: collections.deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = collections.deque()
        self._spare: list[torch.Tensor] = []

    def keep(self, vector: torch.Tensor) -> torch.Tensor:
        """`vector` as the history stores it: itself, or a copy in `dtype` or on the host."""
        dtype = self.dtype or vector.dtype
        if not self.on_host:
            return vector.to(dtype)
        if self._spare and self._spare[-1].dtype == dtype and len(self._spare[-1]) == len(vector):
            stored = self._spare.pop()
        else:
            stored = torch.empty(len(vector), dtype=dtype, pin_memory=self.device.type == "cuda")
        for start in range(0, len(vector), self.piece):
            part = vector[start : start + self.piece]
            stored[start : start + len(part)].copy_(part.to(dtype), non_blocking=True)
        return stored

    def add(self, s: torch.Tensor, y: torch.Tensor, rho: torch.Tensor) -> None:
        """Adds a pair stored by `keep`; the oldest leaves a full history."""
        self.pairs.append((s, y, rho))
        while len(self.pairs) > self.length:
            self._drop_oldest()

    def make_room(self) -> None:
        """Drops the oldest pair of a full history now, where the next `add` would: its buffers then
        serve the next `keep`s, and the host never holds more than `length` pairs."""
        if len(self.pairs) == self.length:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        s, y, _ = self.pairs.popleft()
        if self.on_host:
            self._spare += [s, y]

    def dot(self, stored: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return sum(part.dot(vector[start:end]) for start, end, part in self._pieces(stored, vector.dtype))

    def add_scaled(self, vector: torch.Tensor, stored: torch.Tensor, alpha: torch.Tensor) -> None:
        """vector += alpha · stored, in place."""
        for start, end, part in self._pieces(stored, vector.dtype):
            vector[start:end].add_(part * alpha)

    def _pieces(self, stored: torch.Tensor, dtype: torch.dtype) -> Iterator[tuple[int, int, torch.Tensor]]:
        # In pieces where each must be moved or converted: never a whole vector's copy at once.
        piece = self.piece if self.on_host or stored.dtype != dtype else len(stored)
        for start in range(0, len(stored), piece):
            part = stored[start : start + piece]
            yield start, start + len(part), part.to(self.device, non_blocking=True).to(dtype)


class LBFGS:
    """L-BFGS on one tensor: a fixed step, one function evaluation per iteration.

    The same update as `torch.optim.LBFGS(max_iter=1)` without a line search, but every scalar stays a
    tensor on the device. PyTorch's version turns them into Python numbers about 2·history + 5 times a
    step, and each of those stalls a GPU until the host catches up. Here a rejected curvature pair
    still takes its slot in the history, with no weight.

    Between steps the device holds the image, the last gradient and, with the history on the device,
    the pairs; during a step, one or two vectors more. The step reads the image's gradient in place and
    leaves `image.grad` empty.
    """

    def __init__(self, image: torch.Tensor, lr: float, history: int | History):
        self.image = image
        self.lr = lr
        self.history = history if isinstance(history, History) else History(history, image.device)
        self.previous_gradient: torch.Tensor | None = None
        self.last_step: torch.Tensor | None = None  # as the history stores it
        self.scale = torch.ones((), device=image.device)  # the initial inverse Hessian, γ·I

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        with torch.enable_grad():
            loss = closure()
        # The gradient is the optimiser's from here: no copy of a picture-sized vector.
        gradient = self.image.grad.reshape(-1)
        self.image.grad = None
        if self.previous_gradient is None:
            # First step: steepest descent, at most lr in total absolute change (torch's choice).
            direction = -gradient
            length = torch.clamp(1 / gradient.abs().sum(), max=1.0) * self.lr
        else:
            self._remember(gradient)
            direction = self._direction(gradient)
            length = self.lr  # a Python number: a new tensor of it would be a copy the host waits for
        step = direction.mul_(length)
        self.image.add_(step.view_as(self.image))
        self.previous_gradient = gradient
        self.history.make_room()
        self.last_step = self.history.keep(step)
        return loss

    def _remember(self, gradient: torch.Tensor) -> None:
        y = gradient - self.previous_gradient
        self.previous_gradient = None
        s = self.last_step
        ys = self.history.dot(s, y)
        useful = ys > _MIN_CURVATURE
        rho = torch.where(useful, 1 / ys, torch.zeros_like(ys))
        self.scale = torch.where(useful, ys / y.dot(y), self.scale)
        self.history.add(s, self.history.keep(y), rho)

    def _direction(self, gradient: torch.Tensor) -> torch.Tensor:
        """−H·g by the two-loop recursion over the remembered pairs."""
        history = self.history
        q = -gradient
        alphas = []
        for s, y, rho in reversed(history.pairs):
            alpha = rho * history.dot(s, q)
            history.add_scaled(q, y, -alpha)
            alphas.append(alpha)
        r = q.mul_(self.scale)
        for (s, y, rho), alpha in zip(history.pairs, reversed(alphas), strict=True):
            beta = rho * history.dot(y, r)
            history.add_scaled(r, s, alpha - beta)
        return r
