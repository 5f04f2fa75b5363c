"""redis-py's asyncio client, packing commands with hiredis as its synchronous client already does.

redis-py's asyncio connections pack every command in Python, one argument at a time: for the job
store's create script (some 60 arguments) that took about 100 µs of CPU, against 5 µs for
``hiredis.pack_command``, which redis-py's synchronous connections use whenever hiredis is
installed (``redis.connection.HiredisRespSerializer``); for a transition, 2.1 µs against 11.1 µs
(bench/README.md, "A single job: one request or two" and "The API's share of a single job").
:func:`pack_with_hiredis` gives an asyncio client's connections that same serializer; what goes on
the wire is the same RESP.
"""

from __future__ import annotations

import functools
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.connection import HiredisRespSerializer
from redis.exceptions import DataError
from redis.utils import HIREDIS_AVAILABLE

# redis-py's own connection classes (what a redis://, rediss:// or unix:// URL selects); any other
# class (a test double's) is left as it is.
_REDIS_PY_CONNECTIONS = (Connection, SSLConnection, UnixDomainSocketConnection)


class _HiredisPacking(AbstractConnection):
    """Mixin: ``pack_command`` (and so pipelines' ``pack_commands``) by hiredis."""

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        try:
            packed: list[bytes] = self._serializer.pack(*args)
        except DataError:
            # hiredis takes str, bytes, int and float only; redis-py's own packer takes a little more
            # (int subclasses, memoryviews) and words its refusals its own way: it decides.
            return super().pack_command(*args)
        return packed


@functools.cache
def _packing(base: type[AbstractConnection]) -> type[AbstractConnection]:
    return type(f"HiredisPacking{base.__name__}", (_HiredisPacking, base), {})


def pack_with_hiredis(redis: Redis) -> Redis:
    """``redis``, whose connections (made from now on) pack commands with hiredis when it is installed."""
    pool = redis.connection_pool
    if HIREDIS_AVAILABLE and pool.connection_class in _REDIS_PY_CONNECTIONS:
        pool.connection_class = _packing(pool.connection_class)
    return redis
