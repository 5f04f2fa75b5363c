"""End-to-end throughput of the whole system against the raw model, measured in the same run on the same machine.

``python -m bench.e2e --model git-base --jobs 64 --clients 32 --probe-rate 4`` starts a real redis-server, the
uvicorn API and one worker, and serves drawn images (640x480 PNGs by default) from a local HTTP server. It then:

1. submits ``--jobs`` jobs at once from ``--clients`` concurrent HTTP clients (submission throughput), which
   saturates the worker;
2. while the worker works through them, times ``--probe-rate`` POSTs per second for ``--probe-s`` seconds (POST
   latency as users see it when the worker is saturated);
3. long-polls every job to its end (end-to-end images/s, job latency, batch sizes, from the job records);

and times ``Captioner`` alone on the same images at the worker's batch size, before and after the system runs,
so load from elsewhere on the machine weighs on both. It prints JSON.

``--model git-base`` is git-base's architecture with random weights, its processor and a tokenizer of its vocabulary
size, built by ``model.standin`` into a temporary folder. Its generation config has no end token, so every caption is exactly ``--max-new-tokens`` long, end to end and raw.
``--model embedded`` (or a checkpoint folder) uses that model as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from model import shapes
from model.standin import build_standin
from scripts.processes import free_port
from scripts.stack import LocalStack

DISTINCT_IMAGES = 16
JOB_WAIT_S = 60


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="git-base", help="embedded, git-base, or a checkpoint folder")
    parser.add_argument("--jobs", type=int, default=64, help="jobs submitted at once (the saturating burst)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--probe-rate", type=float, default=20, help="POSTs per second timed while the worker is busy")
    parser.add_argument("--probe-s", type=float, default=5, help="seconds of timed POSTs")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="tokens per caption (fixed for git-base)")
    parser.add_argument("--batch-size", type=int, default=8, help="the worker's max_batch_size")
    parser.add_argument("--batch-wait-ms", type=int, default=20, help="the worker's max_batch_wait_ms")
    parser.add_argument("--raw-batches", type=int, default=0, help="raw batches timed (0: jobs / batch size)")
    parser.add_argument("--image-size", default="640x480", help="WIDTHxHEIGHT of the drawn images")
    parser.add_argument("--keep-logs", action="store_true", help="print where the stack's logs are and keep them")
    return parser.parse_args(argv)


def draw_images(size: str) -> list[bytes]:
    """Distinct PNG drawings of captioned shapes, ``size`` being WIDTHxHEIGHT."""
    width, height = (int(side) for side in size.lower().split("x"))
    rng = random.Random(0)
    encoded = []
    for _ in range(DISTINCT_IMAGES):
        image, _caption = shapes.draw_sample(rng, image_size=(width, height))
        out = io.BytesIO()
        image.save(out, "PNG")
        encoded.append(out.getvalue())
    return encoded


async def serve_images(images: list[bytes], port: int) -> web.AppRunner:
    """Serve ``/image/{i}.png`` on 127.0.0.1 from this process's event loop."""

    async def handler(request: web.Request) -> web.Response:
        index = int(request.match_info["index"]) % len(images)
        return web.Response(body=images[index], content_type="image/png")

    app = web.Application()
    app.router.add_get("/image/{index}.png", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


async def submit(http: aiohttp.ClientSession, api: str, url: str, tokens: int) -> tuple[str, float]:
    """POST one job; returns its id and the request's latency in seconds."""
    started = time.perf_counter()
    async with http.post(f"{api}/v1/jobs", json={"image_url": url, "max_new_tokens": tokens}) as response:
        body = await response.json()
    latency = time.perf_counter() - started
    if response.status != 202:
        raise RuntimeError(f"POST answered {response.status}: {body}")
    return body["id"], latency


async def submit_burst(
    http: aiohttp.ClientSession, api: str, urls: list[str], clients: int, tokens: int
) -> dict[str, Any]:
    """POST every job as fast as ``clients`` concurrent clients can; returns the ids and the rate."""
    pending = list(urls)
    ids: list[str] = []

    async def client() -> None:
        while pending:
            job_id, _latency = await submit(http, api, pending.pop(), tokens)
            ids.append(job_id)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return {"ids": ids, "jobs_per_s": len(urls) / (time.perf_counter() - started)}


async def submit_paced(
    http: aiohttp.ClientSession, api: str, urls: list[str], rate: float, tokens: int
) -> dict[str, Any]:
    """POST one job every ``1/rate`` seconds (open loop, as independent users would); returns ids and latencies."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def one(index: int, url: str) -> tuple[str, float]:
        # Scheduled by the clock, not by the previous answer, so a slow answer cannot hide the next one's wait.
        await asyncio.sleep(max(0.0, started + index / rate - loop.time()))
        return await submit(http, api, url, tokens)

    results = await asyncio.gather(*(one(i, url) for i, url in enumerate(urls)))
    return {"ids": [job_id for job_id, _ in results], "latencies": [latency for _, latency in results]}


async def wait_all(http: aiohttp.ClientSession, api: str, ids: list[str], clients: int) -> list[dict[str, Any]]:
    """Long-poll every job until it ends."""
    pending = list(ids)
    jobs: list[dict[str, Any]] = []

    async def client() -> None:
        while pending:
            job_id = pending.pop()
            while True:
                async with http.get(f"{api}/v1/jobs/{job_id}", params={"wait": str(JOB_WAIT_S)}) as response:
                    job = await response.json()
                if response.status != 200:  # never poll again at once: that loop would measure itself
                    raise RuntimeError(f"GET answered {response.status}: {job}")
                if job["status"] in ("succeeded", "failed", "canceled", "expired"):
                    jobs.append(job)
                    break

    await asyncio.gather(*(client() for _ in range(clients)))
    return jobs


async def run_load(api: str, image_port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up; then a saturating burst, timed POSTs while the worker works through it, and every job's end."""
    base = f"http://127.0.0.1:{image_port}/image"
    connector = aiohttp.TCPConnector(limit=2 * args.clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=JOB_WAIT_S + 30)) as http:
        tokens = args.max_new_tokens
        warm = await submit_burst(http, api, [f"{base}/0.png"] * args.batch_size, args.batch_size, tokens)
        await wait_all(http, api, warm["ids"], args.batch_size)
        urls = [f"{base}/{i % DISTINCT_IMAGES}.png" for i in range(args.jobs)]
        burst = await submit_burst(http, api, urls, args.clients, tokens)
        probe_urls = [f"{base}/{i % DISTINCT_IMAGES}.png" for i in range(round(args.probe_rate * args.probe_s))]
        probes = await submit_paced(http, api, probe_urls, args.probe_rate, tokens)
        jobs = await wait_all(http, api, burst["ids"] + probes["ids"], args.clients)
    return summarize(burst, probes, jobs, args)


def summarize(
    burst: dict[str, Any], probes: dict[str, Any], jobs: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """Throughput, latencies and batch sizes from the job records (server clocks)."""
    succeeded = [job for job in jobs if job["status"] == "succeeded"]
    created = [datetime.fromisoformat(job["created_at"]) for job in jobs]
    finished = [datetime.fromisoformat(job["finished_at"]) for job in jobs if job["finished_at"]]
    span_s = (max(finished) - min(created)).total_seconds()
    batches: dict[str, int] = {job["timings"]["batch_id"]: job["timings"]["batch_size"] for job in succeeded}
    generate_s = {job["timings"]["batch_id"]: job["timings"]["generate_s"] for job in succeeded}
    latencies = [job["timings"]["total_s"] for job in succeeded]
    post_ms = [1000 * seconds for seconds in probes["latencies"]]
    return {
        "jobs": len(jobs),
        "succeeded": len(succeeded),
        "submit_jobs_per_s": round(burst["jobs_per_s"], 1),
        "post_latency_ms": {
            "p50": round(percentile(post_ms, 0.5), 2),
            "p99": round(percentile(post_ms, 0.99), 2),
            "probes": len(post_ms),
            "probe_rate_per_s": args.probe_rate,
        },
        "e2e_images_per_s": round(len(succeeded) / span_s, 3),
        "job_latency_s": {"p50": round(percentile(latencies, 0.5), 3), "p99": round(percentile(latencies, 0.99), 3)},
        "mean_batch_size": round(statistics.mean(batches.values()), 2),
        "batches": len(batches),
        # Share of the run the model spent in generate: near 1, the model is the bottleneck, not the pipeline.
        "generate_busy_fraction": round(sum(generate_s.values()) / span_s, 3),
        "max_batch_size": args.batch_size,
    }


def measure_raw(model_path: str, images: list[bytes], args: argparse.Namespace, batches: int) -> dict[str, Any]:
    """Images per second of ``Captioner`` alone, batched like the worker, on the same images, decoded as it does."""
    from model.captioner import EMBEDDED_MODEL_DIR, Captioner
    from shared.settings import EMBEDDED_MODEL, Settings
    from worker.intake.images import decode_image

    captioner = Captioner.load(EMBEDDED_MODEL_DIR if model_path == EMBEDDED_MODEL else model_path)
    decoded = [decode_image(data, Settings(), model_input_px=captioner.input_size_px) for data in images]
    batch = [decoded[i % len(decoded)] for i in range(args.batch_size)]
    tokens = args.max_new_tokens
    fixed = tokens if args.model == "git-base" else None
    # Called from one dedicated thread, as the worker's batcher calls it: on a busy machine, torch's OpenMP
    # threads run small models many times slower when called from the main thread (measured: 1 s against
    # 28 ms a batch for the embedded model), and the baseline should not lose to the system on that.
    with ThreadPoolExecutor(max_workers=1) as generate:
        caption = functools.partial(captioner.caption, batch, max_new_tokens=tokens, min_new_tokens=fixed)
        generate.submit(caption).result()  # warm at this batch size
        started = time.perf_counter()
        for _ in range(batches):
            generate.submit(caption).result()
        elapsed = time.perf_counter() - started
    return {
        "images_per_s": round(batches * args.batch_size / elapsed, 3),
        "batches": batches,
        "loadavg_1m": os.getloadavg()[0],
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux ``/proc/PID/stat``, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stack_env(model_path: str, image_port: int, args: argparse.Namespace) -> dict[str, str]:
    return {
        "CAPTIONIZER_MODEL": model_path,
        "CAPTIONIZER_ALLOW_ANONYMOUS": "true",
        "CAPTIONIZER_ALLOW_PRIVATE_NETWORKS": "true",
        "CAPTIONIZER_ALLOWED_PORTS": f"80,443,{image_port}",
        "CAPTIONIZER_RATE_LIMIT_PER_MINUTE": "0",
        # Its images repeat: the caption cache would answer the repeats without the pipeline this
        # measures (bench/cache.py measures the cache).
        "CAPTIONIZER_CACHE_ENABLED": "false",
        # 32 clients long-polling thousands of jobs pass the default read limit; each 429 was answered at once
        # and polled again, so the API spun at 100 % CPU once the jobs had ended.
        "CAPTIONIZER_RATE_LIMIT_READS_PER_MINUTE": "0",
        # The bench is one client: its burst may take the whole queue, not one key's share of it.
        "CAPTIONIZER_OWNER_QUEUE_SHARE": "1",
        "CAPTIONIZER_MAX_BATCH_SIZE": str(args.batch_size),
        "CAPTIONIZER_MAX_BATCH_WAIT_MS": str(args.batch_wait_ms),
        "CAPTIONIZER_WORKER_METRICS_PORT": "0",
        "CAPTIONIZER_MAX_QUEUE_DEPTH": str(max(10_000, 2 * args.jobs)),
        # Logging every job would itself cost a share of these two cores.
        "CAPTIONIZER_LOG_LEVEL": "WARNING",
    }


async def run_e2e(model_path: str, images: list[bytes], log_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    image_port = free_port()
    runner = await serve_images(images, image_port)
    # No webhook worker: no job here has a webhook, and an idle process would still take a share of the CPU.
    stack = LocalStack(log_dir, env=stack_env(model_path, image_port, args), api_port=free_port(), webhooks=False)
    try:
        await asyncio.to_thread(stack.start, 300)
        pids = {process.name: process.pid for process in stack.processes} | {"bench": os.getpid()}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        wall_started = time.perf_counter()
        result = await run_load(stack.api_url, image_port, args)
        wall_s = time.perf_counter() - wall_started
        cpu_s = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()}
        # Independent of other load on the machine: how much of this system's CPU went to the worker.
        worker_share = cpu_s["worker"] / sum(cpu_s.values())
        return {**result, "cpu_s": cpu_s, "wall_s": round(wall_s, 1), "worker_cpu_share": round(worker_share, 3)}
    finally:
        await asyncio.to_thread(stack.stop)
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    images = draw_images(args.image_size)
    raw_batches = args.raw_batches or max(2, args.jobs // args.batch_size // 2)
    with tempfile.TemporaryDirectory(prefix="captionizer-e2e-") as folder:
        model_path = str(build_standin(Path(folder) / "git-base")) if args.model == "git-base" else args.model
        log_dir = Path(tempfile.mkdtemp(prefix="captionizer-e2e-logs-"))
        # The raw model is timed before and after the system, so load from other work on the machine
        # that changes during the run weighs on both sides alike.
        before = measure_raw(model_path, images, args, raw_batches)
        e2e = {**asyncio.run(run_e2e(model_path, images, log_dir, args)), "loadavg_1m": os.getloadavg()[0]}
        after = measure_raw(model_path, images, args, raw_batches)
    if not args.keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    raw_images_per_s = (before["images_per_s"] + after["images_per_s"]) / 2
    report = {
        "model": args.model,
        "max_new_tokens": args.max_new_tokens,
        "clients": args.clients,
        "image_size": args.image_size,
        **e2e,
        "raw_images_per_s": round(raw_images_per_s, 3),
        "raw_before": before,
        "raw_after": after,
        "e2e_vs_raw": round(e2e["e2e_images_per_s"] / raw_images_per_s, 3),
        "mean_batch_vs_max": round(e2e["mean_batch_size"] / args.batch_size, 3),
        "cpu_count": os.cpu_count(),
        "logs": str(log_dir) if args.keep_logs else None,
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
