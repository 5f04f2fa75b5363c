"""What the OpenAI-compatible facade costs the API: chat completions against native ``POST /v1/jobs`` + ``Prefer: wait``.

``python -m bench.openai_facade`` starts the stack (``scripts.stack.LocalStack``) with the ``null``
model and a local image server (``bench.image_server``), then sends, in interleaved rounds, the same
images two ways, each one request per caption that waits for it:

- native: ``POST /v1/jobs`` with ``Prefer: wait=30``;
- facade: ``POST /openai/v1/chat/completions`` with the image as an ``image_url`` part.

For each round it reads the API process's CPU from ``/proc/<pid>/stat`` and prints, as JSON, the API
CPU per request of each way (median of the rounds) and the median of the per-round differences,
which the facade's target bounds at 1 ms. The machine is shared: the load average is in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.bulk import CpuMeter, start_image_server
from scripts.processes import free_port
from scripts.stack import LocalStack


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests of each way per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (native, then facade)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    return parser.parse_args(argv)


def stack_env(image_port: str) -> dict[str, str]:
    return {
        "CAPTIONIZER_MODEL": "null",
        "CAPTIONIZER_ALLOW_ANONYMOUS": "true",
        "CAPTIONIZER_ALLOW_PRIVATE_NETWORKS": "true",
        "CAPTIONIZER_ALLOWED_PORTS": f"80,443,{image_port}",
        "CAPTIONIZER_RATE_LIMIT_PER_MINUTE": "0",
        "CAPTIONIZER_RATE_LIMIT_READS_PER_MINUTE": "0",
        # The rounds send the same images again: with the cache on, both ways would be answered from it.
        "CAPTIONIZER_CACHE_ENABLED": "false",
        "CAPTIONIZER_OWNER_QUEUE_SHARE": "1",
        "CAPTIONIZER_WORKER_METRICS_PORT": "0",
        "CAPTIONIZER_LOG_LEVEL": "WARNING",
    }


def native_request(url: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    return "/v1/jobs", {"image_url": url}, {"Prefer": "wait=30"}


def facade_request(url: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    return "/openai/v1/chat/completions", {"model": "null", "messages": [{"role": "user", "content": content}]}, {}


async def send_all(api_url: str, way: str, urls: list[str], clients: int) -> None:
    """Send one request per URL, ``clients`` at a time; every one must answer its caption (200)."""
    build = native_request if way == "native" else facade_request
    pending = list(urls)
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:

        async def client() -> None:
            while pending:
                path, body, headers = build(pending.pop())
                response = await http.post(path, json=body, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"{way} answered {response.status_code}: {response.text[:200]}")

        await asyncio.gather(*(client() for _ in range(clients)))


def measure(args: argparse.Namespace, stack: LocalStack, base: str, cpu: CpuMeter) -> dict[str, Any]:
    urls = [f"{base}/img/{n}.png" for n in range(args.requests)]
    asyncio.run(send_all(stack.api_url, "native", urls[:20], args.clients))  # warm both paths once
    asyncio.run(send_all(stack.api_url, "facade", urls[:20], args.clients))
    rounds: dict[str, list[float]] = {"native": [], "facade": []}
    for _ in range(args.rounds):
        for way in ("native", "facade"):
            cpu.start()
            asyncio.run(send_all(stack.api_url, way, urls, args.clients))
            rounds[way].append(cpu.per_item_ms(args.requests)["api"])
    differences = [facade - native for native, facade in zip(rounds["native"], rounds["facade"], strict=True)]
    return {
        "api_cpu_ms_per_request": {way: round(statistics.median(values), 3) for way, values in rounds.items()},
        "rounds_api_cpu_ms": rounds,
        "facade_minus_native_ms_median": round(statistics.median(differences), 3),
        "target_ms": 1.0,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-openai-"))
    images, base = start_image_server(log_dir, 64)
    stack = LocalStack(log_dir, env=stack_env(base.rsplit(":", 1)[1]), api_port=free_port(), webhooks=False)
    try:
        stack.start(timeout_s=300)
        assert stack.api is not None
        figures = measure(args, stack, base, CpuMeter({"api": stack.api.pid}))
    finally:
        stack.stop()
        images.stop()
    report = {
        **figures,
        "requests_per_round": args.requests,
        "clients": args.clients,
        "model": "null",
        "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
