"""One redis-py client per broker channel for kombu's short commands, instead of a new one per command.

kombu's Redis transport builds a ``redis.Redis`` object around its connection pool for every short
operation: recording a delivered message as unacknowledged, acknowledging it, sweeping for expired
ones. Building one costs about 0.2 ms of CPU (redis-py fills its table of response callbacks each
time), twice per message, and a caption worker handles a message per single job: reusing it took the
Celery main thread from 1.19 to 0.79 ms per single job (bench/README.md, "Worker CPU"). The object holds no
connection of its own (each command takes one from the pool), so redis-py documents it as safe to
share between threads: :class:`ReuseBrokerClients` makes each channel build it once. The client
kombu keeps for BRPOP (from its other pool, with a connection pinned to it) is left alone.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps


def reuse_sync_client(channel: Any) -> bool:
    """Make ``channel`` (kombu's Redis channel) build its pool's client once; False if it is no such channel."""
    make_client = getattr(channel, "Client", None)
    if make_client is None or not hasattr(channel, "pool") or getattr(make_client, "reused", False):
        return False
    built: list[tuple[Any, Any]] = []  # (pool, client), replaced whole: threads read it without a lock

    def client(**kwargs: Any) -> Any:
        pool = kwargs.get("connection_pool")
        if pool is None or pool is not channel.pool or set(kwargs) != {"connection_pool"}:
            return make_client(**kwargs)  # the BRPOP client, or credentials we do not cache
        if not built or built[0][0] is not pool:
            built[:] = [(pool, make_client(**kwargs))]
        return built[0][1]

    client.reused = True  # type: ignore[attr-defined]
    channel.Client = client
    return True


class ReuseBrokerClients(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: after each (re)connection, the task channel builds its redis-py client once."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, parent: Any) -> None:
        """Called by Celery with the consumer once its task consumer exists."""
        consumer = getattr(parent, "task_consumer", None)
        if consumer is not None:
            reuse_sync_client(consumer.channel)
