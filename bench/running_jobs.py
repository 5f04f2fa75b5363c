"""What the running-jobs registry costs a worker per delivery, against writing each hold and release at once.

Runs ``--deliveries`` single-job deliveries (hold one id, release it) on one event loop against a
real ``redis-server``, yielding to the loop every ``--per-tick`` deliveries as a busy worker's loop
does, and prints JSON: CPU µs per delivery and Redis transactions sent, for ``worker.recovery.running_jobs``
(changes written behind one task, at most every 50 ms) and, as the baseline in the same run, a
registry that awaits one write at each hold and one at each release.

    .venv/bin/python -m bench.running_jobs --deliveries 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from scripts.processes import ManagedProcess, free_port
from shared.keys import Keys
from worker.recovery.running_jobs import RunningJobs

_VOUCH_S = 360


async def _write_behind(redis: Redis, deliveries: int, per_tick: int) -> None:
    registry = RunningJobs(redis, Keys("bench-behind"), "bench:1:a", vouch_s=_VOUCH_S)
    for index in range(deliveries):
        with registry.holding([f"job_{index}"]):
            if index % per_tick == 0:
                await asyncio.sleep(0)
    await registry.close()


async def _write_through(redis: Redis, deliveries: int, per_tick: int) -> None:
    key, keys = "bench-through:held", Keys("bench-through")
    for index in range(deliveries):
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {f"job_{index}": time.time()}).expire(key, _VOUCH_S).zadd(keys.job_holders(), {"b": 1})
            await pipe.execute()
        if index % per_tick == 0:
            await asyncio.sleep(0)
        await redis.zrem(key, f"job_{index}")


async def _measure(url: str, deliveries: int, per_tick: int) -> dict[str, object]:
    redis = Redis.from_url(url)
    figures: dict[str, object] = {"deliveries": deliveries}
    try:
        for name, run in (("write_behind", _write_behind), ("write_through", _write_through)):
            await redis.config_resetstat()
            began = time.process_time()
            await run(redis, deliveries, per_tick)
            cpu_us = (time.process_time() - began) / deliveries * 1e6
            stats = await redis.info("commandstats")
            writes = stats.get("cmdstat_exec", {}).get("calls", 0) + stats.get("cmdstat_zrem", {}).get("calls", 0)
            figures[name] = {"cpu_us_per_delivery": round(cpu_us, 1), "redis_writes": writes}
    finally:
        await redis.aclose()
    return figures


def main() -> None:
    """Start a redis-server, measure both registries, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--per-tick", type=int, default=20, help="deliveries between two yields to the loop")
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with tempfile.TemporaryDirectory() as logs:
        server = ManagedProcess("redis", argv, log_path=Path(logs) / "redis.log").start()
        try:
            server.wait_until(lambda: asyncio.run(_ping(port)), timeout_s=30)
            print(json.dumps(asyncio.run(_measure(f"redis://127.0.0.1:{port}/0", args.deliveries, args.per_tick))))
        finally:
            server.stop()


async def _ping(port: int) -> bool:
    client = Redis(port=port)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


if __name__ == "__main__":
    main()
