"""worker.health: compose's health check of a caption worker reads that worker's own heartbeat, not a Celery ping."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import fakeredis
from redis import Redis

from shared.keys import Keys
from tests.conftest import REPO_ROOT
from worker.health import has_live_heartbeat

KEYS = Keys("captionizer-test")


def test_only_an_unexpired_heartbeat_of_this_host_counts() -> None:
    redis = fakeredis.FakeRedis()
    now_s = 1_000.0
    redis.zadd(KEYS.ready_workers(), {"other-host:7": now_s + 30, "this-host:1": now_s - 1})
    assert not has_live_heartbeat(redis, KEYS, "this-host", now_s=now_s)  # its beat expired; another host's is no proof
    redis.zadd(KEYS.ready_workers(), {"this-host:1": now_s + 30})
    assert has_live_heartbeat(redis, KEYS, "this-host", now_s=now_s)
    # "this-host" must not match "this-host-2".
    assert not has_live_heartbeat(redis, KEYS, "this-hos", now_s=now_s)


def _check(redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAPTIONIZER_REDIS_URL": redis_url, "CAPTIONIZER_KEY_PREFIX": KEYS.prefix}
    return subprocess.run(
        [sys.executable, "-m", "worker.health"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_command_exits_0_only_while_this_hosts_worker_beats(redis_server_url: str) -> None:
    redis = Redis.from_url(redis_server_url)
    try:
        redis.delete(KEYS.ready_workers())
        refused = _check(redis_server_url)
        assert refused.returncode == 1 and "no caption worker on" in refused.stderr
        redis.zadd(KEYS.ready_workers(), {f"{socket.gethostname()}:1": time.time() + 60})
        assert _check(redis_server_url).returncode == 0
    finally:
        redis.delete(KEYS.ready_workers())
        redis.close()


def test_an_unreachable_redis_is_unhealthy() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = _check(f"redis://127.0.0.1:{port}/0")
    assert done.returncode == 1 and "Redis does not answer" in done.stderr
