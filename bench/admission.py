"""The API's responsiveness while it refuses huge batches at the items-in-flight cap. Prints JSON.

``python -m bench.admission`` starts the stack (redis-server, uvicorn, a ``null``-model worker) with one
key already holding its ``max_items_in_flight`` items (the counter set in Redis), then:

- **idle**: ``GET /healthz``, one request after another, for ``--probe-s`` seconds: the baseline;
- **refusals**: the same probe, while ``--batches`` clients each send a ``--items``-item batch (pre-encoded
  JSON, sent at once) that the cap refuses with 429 ``too_many_items_in_flight``, for ``--rounds`` rounds.

The probe's p50/p99/max under refusals against the idle baseline of the same run is the figure (issue 22:
six 10,000-item batches stalled ``/healthz`` up to 2.6 s when every item was checked before the cap).
Each refusal's latency is reported too. The machine is shared: the load average is printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from api.http.auth import hash_key, owner_of
from scripts.processes import free_port
from scripts.stack import LocalStack
from shared.keys import Keys

KEY = "cap_bench-admission-0123456789abcdefghijklmnopqrstu"
PREFIX = "bench-admission"
CAP = 20_000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=6, help="clients each sending one batch per round")
    parser.add_argument("--items", type=int, default=10_000, help="items per batch")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of batches")
    parser.add_argument("--probe-s", type=float, default=5.0, help="seconds of idle probing (the baseline)")
    return parser.parse_args(argv)


def _quantiles(values_s: list[float]) -> dict[str, float]:
    ordered = sorted(values_s)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"n": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(1000 * ordered[-1], 2)}


def probe(api_url: str, stop: threading.Event) -> list[float]:
    """``GET /healthz`` back to back until ``stop``; each one's latency in seconds."""
    latencies: list[float] = []
    with httpx.Client(base_url=api_url, timeout=30) as client:
        while not stop.is_set():
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
    return latencies


def send_batches(api_url: str, body: bytes, clients: int, rounds: int) -> tuple[list[float], list[int]]:
    """``clients`` threads each send the batch ``rounds`` times; every refusal's latency and status."""
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def client() -> None:
        with httpx.Client(base_url=api_url, timeout=120) as http:
            for _ in range(rounds):
                start = time.perf_counter()
                status = http.post("/v1/batches", content=body, headers=headers).status_code
                with lock:
                    latencies.append(time.perf_counter() - start)
                    statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, statuses


def probed(api_url: str, work: Any) -> tuple[list[float], Any]:
    stop = threading.Event()
    result: list[list[float]] = []
    prober = threading.Thread(target=lambda: result.append(probe(api_url, stop)))
    prober.start()
    try:
        outcome = work()
    finally:
        stop.set()
        prober.join()
    return result[0], outcome


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-admission-"))
    env = {
        "CAPTIONIZER_MODEL": "null",
        "CAPTIONIZER_KEY_PREFIX": PREFIX,
        "CAPTIONIZER_API_KEY_HASHES": hash_key(KEY),
        "CAPTIONIZER_RATE_LIMIT_PER_MINUTE": "0",
        "CAPTIONIZER_MAX_ITEMS_IN_FLIGHT": str(CAP),
        "CAPTIONIZER_MAX_REQUEST_BYTES": str(64 * 1024 * 1024),
        "CAPTIONIZER_LOG_LEVEL": "WARNING",
    }
    items = [{"image_url": f"https://images.example.com/catalogue/{i:06d}.jpg", "ref": f"{i:06d}.jpg"}
             for i in range(args.items)]  # fmt: skip
    body = json.dumps({"items": items}).encode()
    stack = LocalStack(log_dir, env=env, api_port=free_port(), webhooks=False)
    try:
        stack.start(timeout_s=300)
        redis = Redis.from_url(stack.redis_url)
        redis.set(Keys(PREFIX).items_in_flight(owner_of(hash_key(KEY))), CAP)
        stop = threading.Event()
        timer = threading.Timer(args.probe_s, stop.set)
        timer.start()
        idle = probe(stack.api_url, stop)
        busy, (refusals, statuses) = probed(
            stack.api_url, lambda: send_batches(stack.api_url, body, args.batches, args.rounds)
        )
        redis.close()
    finally:
        stack.stop()
    report = {
        "batches": {"clients": args.batches, "items": args.items, "rounds": args.rounds, "body_bytes": len(body)},
        "statuses": sorted(set(statuses)),
        "healthz_idle": _quantiles(idle),
        "healthz_during_refusals": _quantiles(busy),
        "p99_ratio_busy_to_idle": round(_quantiles(busy)["p99_ms"] / max(_quantiles(idle)["p99_ms"], 0.01), 2),
        "refusal_latency": _quantiles(refusals),
        "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
        "at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
