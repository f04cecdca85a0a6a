"""The open Stylize calls, counted per client and in all, so that no client, and no crowd of calls that
never send anything, can take every place; and the wait at shutdown until they have all ended. Used from
the event loop's thread only."""

from __future__ import annotations

import asyncio
import collections
import logging

import grpc

from ..protocol import ImpastoError, Kind, Limits, wire

log = logging.getLogger("impasto.service")


def client_key(context: grpc.aio.ServicerContext) -> str:
    """Whom a call counts against: the id its client sends (behind a proxy, every user may arrive on one
    connection), else its connection. An id can be forged; the server-wide caps bound what that takes."""
    for key, value in context.invocation_metadata() or ():
        if key == wire.CLIENT_ID_KEY and 0 < len(value) <= 64 and value.isprintable():
            return f"client {value}"
    return f"connection {context.peer()}"


class Slot:
    """One Stylize call's place in the counts: its client's, and the waiting or the working calls'."""

    def __init__(self, client: str):
        self.client = client
        self.working = False  # its parameters have come


class StreamCounts:
    def __init__(self, limits: Limits):
        self.limits = limits
        self._changed = asyncio.Event()
        self._streams: collections.Counter[str] = collections.Counter()  # open calls per client
        self._waiting = self._working = 0  # calls waiting for their parameters, and the others

    def open(self, client: str) -> Slot:
        """Counts a new call as waiting for its parameters. Waiting calls have a cap of their own, so
        that calls which never send anything cannot take the places of clients that are sending."""
        limits = self.limits
        if self._streams[client] >= limits.max_streams_per_client:
            raise ImpastoError(
                Kind.BUSY,
                f"this client has {limits.max_streams_per_client} Stylize calls open, this server's "
                "limit per client; wait for one to finish",
            )
        if self._waiting >= limits.max_streams:
            raise ImpastoError(
                Kind.BUSY,
                f"the server has {limits.max_streams} Stylize calls waiting for their parameters, its "
                f"limit; try again in {limits.parameters_timeout_seconds:g} s",
            )
        self._streams[client] += 1
        self._waiting += 1
        return Slot(client)

    def start_working(self, slot: Slot) -> None:
        """Moves a call whose parameters have come from the waiting calls to the working ones."""
        limits = self.limits
        if self._working >= limits.max_streams:
            raise ImpastoError(
                Kind.BUSY,
                f"the server has {limits.max_streams} Stylize calls open, its limit; try again shortly",
            )
        self._waiting -= 1
        self._working += 1
        slot.working = True

    def close(self, slot: Slot) -> None:
        """The call has fully ended, its status sent."""
        self._streams[slot.client] -= 1
        if not self._streams[slot.client]:
            del self._streams[slot.client]
        if slot.working:
            self._working -= 1
        else:
            self._waiting -= 1
        self._changed.set()

    async def drain(self, timeout: float) -> bool:
        """Waits, up to `timeout`, until every Stylize call has ended: at shutdown each has been told its
        job's fate, and its status must reach the client before the connection closes. True if any
        call was open."""
        if not self._streams:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._streams and loop.time() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            except TimeoutError:
                break
        if self._streams:
            log.warning("%d Stylize calls still open at shutdown", sum(self._streams.values()))
        return True
