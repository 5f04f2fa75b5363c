"""``python -m worker.health``: is this container's caption worker alive with its model loaded? (compose's health check).

It reads the worker's own heartbeat in Redis (``shared.heartbeats``): a caption worker writes it
every ``worker_heartbeat_s`` once its model is loaded, under ``<hostname>:<pid>``, with an expiry.
A worker on this host whose heartbeat has not expired is healthy. This replaces
``celery inspect ping``, a broadcast that waits for replies through the broker: a worker busy in a
long batch, or a reply lost in the pub/sub, fails that check while the worker serves jobs
(docs/reliability.md, "Health checks"). The heartbeat is also what ``/readyz`` counts.
Exit status: 0 healthy, 1 not (with the reason on stderr).
"""

from __future__ import annotations

import socket
import sys
import time
from typing import cast

from redis import Redis
from redis.exceptions import RedisError

from shared.keys import Keys
from shared.settings import Settings


def has_live_heartbeat(redis: Redis, keys: Keys, host: str, now_s: float | None = None) -> bool:
    """True when some caption worker on ``host`` has a heartbeat that has not expired."""
    now_s = time.time() if now_s is None else now_s
    # redis-py types its sync and async clients alike; this one is sync.
    ids = cast("list[bytes]", redis.zrangebyscore(keys.ready_workers(), f"({now_s}", "+inf"))
    return any(worker_id.startswith(f"{host}:".encode()) for worker_id in ids)


def main() -> int:
    """Check this host's caption worker; the exit status says whether it is healthy."""
    settings = Settings()
    host = socket.gethostname()
    client = Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        healthy = has_live_heartbeat(client, Keys(settings.key_prefix), host)
    except RedisError as exc:
        print(f"unhealthy: Redis does not answer ({exc})", file=sys.stderr)
        return 1
    finally:
        client.close()
    if not healthy:
        print(f"unhealthy: no caption worker on {host} has beaten within worker_heartbeat_s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
