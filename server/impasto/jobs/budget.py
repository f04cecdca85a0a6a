"""A server-wide budget of bytes held by uploads in flight, so that concurrent requests cannot
together exhaust the host's memory. Reservations are refused, never waited for: a client hears
at once that the server is busy and can try again."""

from __future__ import annotations

import threading

from ..protocol import ImpastoError, Kind


class ByteBudget:
    def __init__(self, total: int):
        self.total = total
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def reserve(self, amount: int, what: str) -> Reservation:
        reservation = Reservation(self)
        reservation.grow(amount, what)
        return reservation


class Reservation:
    """Bytes held against a budget until `release()`; it may grow as more becomes known."""

    def __init__(self, budget: ByteBudget):
        self._budget = budget
        self.amount = 0

    def grow(self, amount: int, what: str) -> None:
        budget = self._budget
        with budget._lock:
            if amount > budget.total:
                raise ImpastoError(
                    Kind.TOO_LARGE,
                    f"{what} needs {amount / 2**20:,.0f} MiB of memory on the server, over its limit of "
                    f"{budget.total / 2**20:,.0f} MiB; send a smaller image",
                )
            if budget._used + amount > budget.total:
                raise ImpastoError(
                    Kind.BUSY,
                    f"the server is busy with other uploads ({what} needs {amount / 2**20:,.0f} MiB, "
                    f"{(budget.total - budget._used) / 2**20:,.0f} MiB are free); try again shortly",
                )
            budget._used += amount
            self.amount += amount

    def release(self) -> None:
        with self._budget._lock:
            self._budget._used -= self.amount
            self.amount = 0
