"""The API's own CPU per request, and Redis's for the API's commands: the app called in process. Prints JSON.

``python -m bench.api_path`` starts a redis-server, builds the app with ``create_app`` (no uvicorn, no
worker, no network client: each request is one ASGI call, on uvloop as uvicorn runs it) and measures, per request, the CPU of this
process (``time.process_time``) and of redis-server (``/proc/<pid>/stat``) for:

- ``POST /v1/jobs`` (a URL job: validation, the create script, the caption task's publication);
- ``GET /v1/jobs/{id}`` of a queued job (the owner check's read; a long-poll's waiting is not in it);
- ``GET /healthz`` (the middlewares and routing alone).

Rounds are interleaved (each request kind once per round) and the fastest round of each is kept, so a
burst of other work on a shared machine does not land on one kind only. Rate limits are off, as in
``bench.bulk``; with them on, each request spends one more Redis script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import uvloop

from bench.bulk import process_cpu_s
from scripts.processes import ManagedProcess, free_port
from scripts.stack import REPO_ROOT, redis_answers

Call = Callable[[int], Awaitable[int]]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests of each kind per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the fastest of each kind is kept")
    return parser.parse_args(argv)


def asgi_caller(app: Any) -> Callable[[str, str, bytes], Awaitable[tuple[int, bytes]]]:
    """Send one request through the ASGI app; returns its status and body."""

    async def call(method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]
        headers.append((b"content-length", str(len(body)).encode()))
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {},
        }  # fmt: skip
        request = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if request:
                return request.pop()
            await asyncio.Event().wait()  # a client that never disconnects
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return int(sent[0]["status"]), b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    return call


async def measure(args: argparse.Namespace, redis_url: str, redis_pid: int) -> dict[str, Any]:
    from api.app import create_app
    from shared.settings import Settings

    settings = Settings(
        redis_url=redis_url, allow_anonymous=True, allow_private_networks=True, allowed_ports=[80, 443, 8080],
        rate_limit_per_minute=0, rate_limit_reads_per_minute=0, max_queue_depth=10_000_000, owner_queue_share=1.0,
    )  # fmt: skip
    app = create_app(settings)
    call = asgi_caller(app)
    body = json.dumps({"image_url": "http://127.0.0.1:8080/img/1.png", "max_new_tokens": 5}).encode()
    async with app.router.lifespan_context(app):
        ids = [json.loads((await call("POST", "/v1/jobs", body))[1])["id"] for _ in range(50)]
        kinds: dict[str, Call] = {
            "post_job": lambda n: _status(call("POST", "/v1/jobs", body)),
            "get_job": lambda n: _status(call("GET", f"/v1/jobs/{ids[n % len(ids)]}")),
            "healthz": lambda n: _status(call("GET", "/healthz")),
        }
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):
            for name, request in kinds.items():
                figures = await _round(request, args.requests, redis_pid)
                if name not in best or figures["api_cpu_us"] < best[name]["api_cpu_us"]:
                    best[name] = figures
    return best


async def _status(response: Awaitable[tuple[int, bytes]]) -> int:
    return (await response)[0]


async def _round(request: Call, requests: int, redis_pid: int) -> dict[str, float]:
    began, redis_began = time.process_time(), process_cpu_s(redis_pid)
    for n in range(requests):
        status = await request(n)
        if status not in (200, 202):
            raise RuntimeError(f"answered {status}")
    api_s, redis_s = time.process_time() - began, process_cpu_s(redis_pid) - redis_began
    return {"api_cpu_us": round(1e6 * api_s / requests, 1), "redis_cpu_us": round(1e6 * redis_s / requests, 1)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-api-path-"))
    argv_redis = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    redis = ManagedProcess("redis", argv_redis, log_path=log_dir / "redis.log", env=dict(os.environ), cwd=REPO_ROOT)
    redis.start()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        redis.wait_until(lambda: redis_answers(url), timeout_s=30, what="answering PING")
        # uvloop, as uvicorn runs the app when it is installed.
        figures = uvloop.run(measure(args, url, redis.pid))
    finally:
        redis.stop()
    report = {
        "per_request": figures,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
