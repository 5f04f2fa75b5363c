"""Fair shares of image fetches: per key and per host, counted only while a download is under way.

A worker's fetches are fenced per host (``worker.egress``: 8 connections each), but a key whose images
sit on many slow hosts, or on one slow host that others use too, could still hold every connection
and every fetching job of the worker, and delay everyone else's downloads. Here a job whose key already
has ``max_fetches_per_key`` downloads in progress waits (within its time limit) until one of them ends;
other keys' fetches never wait for it. The wait happens before the download, so it never eats into the
download's own ``fetch_timeout_s``.

The host's connection slots are counted here too, and a fetch takes its key's share and its host's
slot together or not at all. Before, aiohttp's own per-host limit queued a fetch *inside* the download,
while it held its key's share: 40 jobs on a host that never answers took the 8 connections, the other
32 waited for one with their key's shares in hand, and the key's image on another host waited 19 s for
a share (issue #23). Now a fetch waiting for a busy host holds nothing, and the key's images on other
hosts go straight in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from yarl import URL

from worker.egress import CONNECTIONS_PER_HOST


def origin_of(url: str) -> str | None:
    """The origin aiohttp pools a URL's connections by (scheme, host, port); None for a URL without a host."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return None
    return str(parsed.origin()) if parsed.absolute and parsed.host else None


@dataclass
class _Waiter:
    owner: str
    host: str | None
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FetchShares:
    """Counts downloads in progress per key (at most ``max_fetches_per_key``, 0: unbounded) and per host."""

    def __init__(self, max_fetches_per_key: int, *, per_host: int = CONNECTIONS_PER_HOST) -> None:
        if max_fetches_per_key < 0:
            raise ValueError("max_fetches_per_key must be 0 (no limit) or more")
        self.max_fetches_per_key = max_fetches_per_key
        self.per_host = per_host
        self._by_owner: Counter[str] = Counter()
        self._by_host: Counter[str] = Counter()
        # In arrival order. A release grants every waiter that now has room, so one waiting on a busy host
        # never holds up a later one of the same key bound for a free host. At most the worker's jobs in
        # hand wait here (a few dozen), so the walk on each release stays short.
        self._waiters: list[_Waiter] = []

    def fetches_of(self, owner: str) -> int:
        """How many downloads ``owner`` has in progress now."""
        return self._by_owner[owner]

    def fetches_to(self, host: str) -> int:
        """How many downloads from ``host`` are in progress now."""
        return self._by_host[host]

    @contextlib.asynccontextmanager
    async def hold(self, owner: str, host: str | None = None) -> AsyncIterator[None]:
        """Wait for room among ``owner``'s downloads and ``host``'s connections, and hold both while the block runs.

        ``host`` is the download's origin (scheme, host and port, as aiohttp pools connections); None
        counts the key only.
        """
        await self._enter(owner, host)
        try:
            yield
        finally:
            self._leave(owner, host)

    def _has_room(self, owner: str, host: str | None) -> bool:
        if self.max_fetches_per_key and self._by_owner[owner] >= self.max_fetches_per_key:
            return False
        return host is None or self._by_host[host] < self.per_host

    def _take(self, owner: str, host: str | None) -> None:
        self._by_owner[owner] += 1
        if host is not None:
            self._by_host[host] += 1

    async def _enter(self, owner: str, host: str | None) -> None:
        if self._has_room(owner, host):
            self._take(owner, host)
            return
        waiter = _Waiter(owner, host)
        self._waiters.append(waiter)
        try:
            await waiter.granted
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.granted.done() and not waiter.granted.cancelled():
                self._leave(owner, host)  # granted just as it was cancelled: give it back
            raise

    def _leave(self, owner: str, host: str | None) -> None:
        self._by_owner[owner] -= 1
        if not self._by_owner[owner]:
            del self._by_owner[owner]
        if host is not None:
            self._by_host[host] -= 1
            if not self._by_host[host]:
                del self._by_host[host]
        self._grant_waiting()

    def _grant_waiting(self) -> None:
        """Let in, in arrival order, every waiter that has room now; no await, so it is safe in ``finally``."""
        still: list[_Waiter] = []
        for waiter in self._waiters:
            if not waiter.granted.done() and self._has_room(waiter.owner, waiter.host):
                self._take(waiter.owner, waiter.host)
                waiter.granted.set_result(None)
            elif not waiter.granted.done():
                still.append(waiter)
        self._waiters = still
