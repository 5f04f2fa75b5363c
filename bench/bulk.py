"""Bulk captioning end to end, with single jobs as the baseline measured in the same run. Prints JSON.

``python -m bench.bulk --model null --items 5000`` starts redis-server, the API and one caption worker
(``scripts.stack.LocalStack``) and a local image server (``bench.image_server``, its own process), then:

1. **singles** (the baseline): ``--singles`` jobs through ``POST /v1/jobs`` and a long-poll each, from
   ``--clients`` concurrent clients: jobs/s and CPU ms per job in the API, the worker and Redis; then
   twice as many bare ``GET /healthz`` from as many clients: the API's CPU for two requests that do
   no work (its HTTP stack's own cost, the floor of a job's POST + long-poll);
2. **bulk**: ``--items`` jobs of ``--image-size`` PNGs by URL, stored and sent as chunks of ``--chunk-size``
   to the bulk queue through ``shared/`` (``scripts.chunks``, what the batch API does), while
   ``--probe-rate`` single jobs per second are posted: items/s, CPU ms per item of every process
   (from ``/proc/<pid>/stat``), the accelerator's busy fraction (generate time over wall time, from the
   worker's metrics), the CPU of the thread that calls the model per image (the serial path), the
   single jobs' start delay under bulk load (in ms and in model batches), and Redis bytes per item
   (``MEMORY USAGE`` of the job records);
3. **decode capacity**: how many of the same PNGs the worker's prepare function (decode and the model's
   preprocessing) handles per second with one thread per core, to compare with the simulated accelerator's
   capacity (``batch / MS``), and the CPU ms per image it took.

``--model null`` does no compute (the pipeline's own ceiling); ``--model sleep:MS`` holds each batch MS
ms with the GIL released (a simulated accelerator). Both are bench-only (``worker.captioning.standins``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from bench.image_server import drawn_pngs
from scripts.chunks import ChunkSender
from scripts.processes import ManagedProcess, free_port, session_cpu_s
from scripts.stack import REPO_ROOT, LocalStack
from shared.jobs.store import decode_job
from shared.keys import Keys
from shared.settings import Settings

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_POLL_S = 0.05
DISTINCT_IMAGES = 16


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="null", help="null, sleep:MS, embedded or a checkpoint folder")
    parser.add_argument("--items", type=int, default=5000, help="bulk items")
    parser.add_argument("--singles", type=int, default=300, help="single jobs of the baseline")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the baseline")
    parser.add_argument("--batch-size", type=int, default=32, help="the worker's max_batch_size")
    parser.add_argument("--chunk-size", type=int, default=0, help="items per chunk message (0: the batch size)")
    parser.add_argument("--probe-rate", type=float, default=4, help="single jobs per second posted under bulk load")
    parser.add_argument("--image-size", type=int, default=128, help="side of the square PNGs, in pixels")
    parser.add_argument("--max-new-tokens", type=int, default=5, help="tokens per caption of every job")
    parser.add_argument("--keep-logs", action="store_true", help="keep the stack's logs and print where")
    parser.add_argument("--json", type=Path, help="write the report here instead of printing it")
    return parser.parse_args(argv)


def process_cpu_s(pid: int | str) -> float:
    """User + system CPU seconds of one process so far (fields 14 and 15 of /proc/<pid>/stat).

    ``pid`` may also be ``"<pid>/task/<tid>"``: one thread of a process.
    """
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def process_tree_cpu_s(pid: int | str) -> float:
    """CPU seconds of ``pid`` and, when it leads a session (a ``ManagedProcess``), of every live process in it.

    The caption worker decodes in child processes of its own (``worker.intake.decoders``): counting the
    worker's process alone left their CPU out. A child that ends between two readings takes its CPU with it.
    """
    if isinstance(pid, str) or os.getsid(pid) != pid:
        return process_cpu_s(pid)
    return sum(session_cpu_s(pid).values())


class CpuMeter:
    """CPU seconds each named process (with its session's children) spent between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int | str]) -> None:
        self.pids = pids
        self._before: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: process_tree_cpu_s(pid) for name, pid in self.pids.items()}

    def per_item_ms(self, items: int) -> dict[str, float]:
        spent = {name: process_tree_cpu_s(pid) - self._before[name] for name, pid in self.pids.items()}
        return {name: round(1000 * seconds / items, 3) for name, seconds in spent.items()}


def worker_metrics(port: int) -> dict[str, float]:
    """The worker's Prometheus counters the bench reads (generate time, batches, model-thread CPU)."""
    wanted = (
        "captionizer_batch_generate_seconds_sum",
        "captionizer_batch_generate_seconds_count",
        "captionizer_generate_thread_cpu_seconds_total",
        "captionizer_batch_size_sum",
    )
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            values[name] = float(value)
    return values


def spent_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """How much each of the worker's counters (``worker_metrics``) grew between two reads."""
    return {name: after[name] - before.get(name, 0.0) for name in after}


def succeeded_or_failed(redis: Redis, keys: Keys) -> int:
    counts = {name.decode(): int(value) for name, value in redis.hgetall(keys.job_counts()).items()}
    return counts.get("entered:succeeded", 0) + counts.get("entered:failed", 0)


def wait_for_count(redis: Redis, keys: Keys, target: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while succeeded_or_failed(redis, keys) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {succeeded_or_failed(redis, keys)} of {target} jobs ended in {timeout_s} s")
        time.sleep(_POLL_S)


async def run_singles(
    api_url: str, urls: list[str], clients: int, *, prefer_wait: bool = False, max_new_tokens: int = 5
) -> list[str]:
    """POST each URL as a job and wait for its end, ``clients`` at a time; returns the job ids.

    With ``prefer_wait`` the POST itself waits (``Prefer: wait=60``, one request per job); otherwise
    a ``GET ?wait=60`` long-poll follows it (two requests per job).
    """
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    ids: list[str] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            url = queue.get_nowait()
            headers = {"Prefer": "wait=60"} if prefer_wait else {}
            body = {"image_url": url, "max_new_tokens": max_new_tokens}
            posted = await http.post("/v1/jobs", json=body, headers=headers)
            posted.raise_for_status()
            ids.append(posted.json()["id"])
            if prefer_wait:
                assert posted.status_code == 200, posted.text
            else:
                (await http.get(f"/v1/jobs/{ids[-1]}", params={"wait": 60})).raise_for_status()

    async with httpx.AsyncClient(base_url=api_url, timeout=120) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return ids


def post_probes(api_url: str, url: str, rate: float, stop: threading.Event, max_new_tokens: int = 5) -> list[str]:
    """POST one single job every 1/rate s until ``stop``; returns their ids."""
    ids: list[str] = []
    with httpx.Client(base_url=api_url, timeout=60) as http:
        while not stop.wait(1 / rate):
            response = http.post("/v1/jobs", json={"image_url": url, "max_new_tokens": max_new_tokens})
            response.raise_for_status()
            ids.append(response.json()["id"])
    return ids


def start_delays_s(redis: Redis, keys: Keys, job_ids: list[str]) -> list[float]:
    """started_at - created_at of each job (from its record)."""
    delays = []
    for job_id in job_ids:
        job = decode_job(redis.hgetall(keys.job(job_id)))
        if job.started_at is not None:
            delays.append((job.started_at - job.created_at).total_seconds())
    return delays


def redis_bytes_per_item(redis: Redis, keys: Keys, job_ids: list[str]) -> float:
    sample = job_ids[:: max(1, len(job_ids) // 200)]
    sizes = [redis.memory_usage(keys.job(job_id)) or 0 for job_id in sample]
    return round(statistics.fmean(sizes), 1)


def decode_capacity(pngs: list[bytes], model: str, seconds: float = 3.0) -> dict[str, float]:
    """Images/s the machine prepares (the worker's decode + the model's preprocessing) with one thread per core,
    and the CPU ms each image took (the figure a loaded machine does not distort)."""
    from worker.intake.images import decode_image
    from worker.runtime import load_captioner

    settings = Settings(model=model)
    captioner = load_captioner(settings)

    def prepare(data: bytes) -> Any:
        # What the worker's prepare does in a thread when decoding in threads (worker.runtime.prepare_fn_for).
        return captioner.preprocess([decode_image(data, settings, model_input_px=captioner.input_size_px)])

    threads = os.cpu_count() or 1
    done, cpu_s = [0] * threads, [0.0] * threads
    deadline = time.monotonic() + seconds

    def prepare_until(slot: int) -> None:
        began_cpu = time.thread_time()
        while time.monotonic() < deadline:
            prepare(pngs[done[slot] % len(pngs)])
            done[slot] += 1
        cpu_s[slot] = time.thread_time() - began_cpu

    began = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(prepare_until, range(threads)))
    return {
        "images_per_s": round(sum(done) / (time.monotonic() - began), 1),
        "cpu_ms_per_image": round(1000 * sum(cpu_s) / max(1, sum(done)), 3),
    }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_image_server(
    log_dir: Path, size_px: int, count: int = DISTINCT_IMAGES, cache_control: str = ""
) -> tuple[ManagedProcess, str]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.image_server",
        "--port",
        str(port),
        "--size",
        str(size_px),
        "--count",
        str(count),
        "--cache-control",
        cache_control,
    ]
    server = ManagedProcess("images", argv, log_path=log_dir / "images.log", env=dict(os.environ), cwd=REPO_ROOT)
    server.start()
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{base}/img/0.png", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    server.wait_until(answers, timeout_s=60, what="serving images")
    return server, base


def stack_env(args: argparse.Namespace, image_port: str, metrics_port: int) -> dict[str, str]:
    return {
        "CAPTIONIZER_MODEL": args.model,
        "CAPTIONIZER_MAX_BATCH_SIZE": str(args.batch_size),
        "CAPTIONIZER_ALLOW_ANONYMOUS": "true",
        "CAPTIONIZER_ALLOW_PRIVATE_NETWORKS": "true",
        "CAPTIONIZER_ALLOWED_PORTS": f"80,443,{image_port}",
        "CAPTIONIZER_RATE_LIMIT_PER_MINUTE": "0",
        # Its images repeat: the caption cache would answer the repeats without the pipeline this
        # measures (bench/cache.py measures the cache).
        "CAPTIONIZER_CACHE_ENABLED": "false",
        # The baseline long-polls more jobs than the default read burst allows.
        "CAPTIONIZER_RATE_LIMIT_READS_PER_MINUTE": "0",
        "CAPTIONIZER_WORKER_METRICS_PORT": str(metrics_port),
        "CAPTIONIZER_LOG_LEVEL": "WARNING",
    }


def run_bulk(
    args: argparse.Namespace, stack: LocalStack, base: str, metrics_port: int, cpu: CpuMeter
) -> dict[str, Any]:
    """Phase 2: the items as chunks, single-job probes meanwhile; returns the bulk figures."""
    redis = Redis.from_url(stack.redis_url)
    sender = ChunkSender(stack.redis_url, stack.keys.prefix)
    try:
        began_store = time.perf_counter()
        ids = sender.store([f"{base}/img/{n}.png" for n in range(args.items)], max_new_tokens=args.max_new_tokens)
        store_s = time.perf_counter() - began_store
        ended_before = succeeded_or_failed(redis, stack.keys)
        metrics_before = worker_metrics(metrics_port)
        stop = threading.Event()
        probes: list[str] = []
        prober = threading.Thread(
            target=lambda: probes.extend(
                post_probes(stack.api_url, f"{base}/img/1.png", args.probe_rate, stop, args.max_new_tokens)
            )
        )
        cpu.start()
        began = time.perf_counter()
        sender.send_chunks(ids, args.chunk_size or args.batch_size)
        prober.start()
        wait_for_count(redis, stack.keys, ended_before + args.items, timeout_s=1800)
        wall_s = time.perf_counter() - began
        per_item = cpu.per_item_ms(args.items)
        stop.set()
        prober.join()
        metrics_after = worker_metrics(metrics_port)
        wait_for_count(redis, stack.keys, ended_before + args.items + len(probes), timeout_s=120)
        delays = start_delays_s(redis, stack.keys, probes)
        return _bulk_figures(args, ids, wall_s, store_s, per_item, metrics_before, metrics_after, delays, redis, stack)
    finally:
        sender.close()
        redis.close()


def _bulk_figures(
    args: argparse.Namespace, ids: list[str], wall_s: float, store_s: float, per_item: dict[str, float],
    before: dict[str, float], after: dict[str, float], delays: list[float], redis: Redis, stack: LocalStack,
) -> dict[str, Any]:  # fmt: skip
    spent = spent_between(before, after)
    generate_s = spent["captionizer_batch_generate_seconds_sum"]
    batches = spent["captionizer_batch_generate_seconds_count"]
    thread_cpu_s = spent["captionizer_generate_thread_cpu_seconds_total"]
    batch_s = generate_s / batches if batches else None
    p99 = _quantile(delays, 0.99)
    statuses = {str(decode_job(redis.hgetall(stack.keys.job(job_id))).status) for job_id in ids[:: len(ids) // 50 or 1]}
    return {
        "items": args.items,
        "items_per_s": round(args.items / wall_s, 1),
        "wall_s": round(wall_s, 3),
        "store_s": round(store_s, 3),
        "cpu_ms_per_item": per_item,
        "cpu_ms_per_item_total": round(sum(per_item.values()), 3),
        "accelerator_busy_fraction": round(generate_s / wall_s, 3),
        "batches": int(batches),
        "mean_batch_ms": round(1000 * batch_s, 2) if batch_s else None,
        "model_thread_cpu_ms_per_item": round(1000 * thread_cpu_s / args.items, 4),
        "interactive_probes": len(delays),
        "interactive_start_delay_ms": {
            "p50": round(1000 * (_quantile(delays, 0.5) or 0), 1),
            "p99": round(1000 * (p99 or 0), 1),
            "max": round(1000 * max(delays, default=0), 1),
        },
        "interactive_p99_start_delay_in_batches": round(p99 / batch_s, 2) if p99 is not None and batch_s else None,
        "redis_bytes_per_item": redis_bytes_per_item(redis, stack.keys, ids),
        "sampled_item_statuses": sorted(statuses),
    }


async def run_bare_requests(api_url: str, requests: int, clients: int) -> None:
    """GET /healthz ``requests`` times from ``clients`` concurrent clients (no Redis, no dependency)."""
    left = [requests]

    async def client(http: httpx.AsyncClient) -> None:
        while left[0] > 0:
            left[0] -= 1
            (await http.get("/healthz")).raise_for_status()

    async with httpx.AsyncClient(base_url=api_url, timeout=120) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))


def _singles_figures(args: argparse.Namespace, stack: LocalStack, urls: list[str], cpu: CpuMeter,
                     *, prefer_wait: bool) -> dict[str, Any]:  # fmt: skip
    # The worker's main thread is Celery's consumer (fetching, acknowledging): apart, as it hardly batches.
    consumer = CpuMeter({"worker_consumer_thread": f"{cpu.pids['worker']}/task/{cpu.pids['worker']}"})
    cpu.start()
    consumer.start()
    began = time.perf_counter()
    asyncio.run(
        run_singles(stack.api_url, urls, args.clients, prefer_wait=prefer_wait, max_new_tokens=args.max_new_tokens)
    )
    wall_s = time.perf_counter() - began
    per_job = cpu.per_item_ms(len(urls))
    busy = {name: ms for name, ms in per_job.items() if name != "images"}
    return {
        "jobs": len(urls),
        "jobs_per_s": round(len(urls) / wall_s, 1),
        "cpu_ms_per_job": per_job,
        "cpu_ms_per_job_api_worker_redis": round(sum(busy.values()), 3),
        "cpu_ms_per_job_of_which_worker_consumer_thread": consumer.per_item_ms(len(urls))["worker_consumer_thread"],
    }


def run_singles_phase(args: argparse.Namespace, stack: LocalStack, base: str, cpu: CpuMeter) -> dict[str, Any]:
    """Phase 1, the baseline: single jobs through the API, two ways.

    First POST + long-poll (``GET ?wait``) each, then as many again with ``POST`` + ``Prefer: wait``
    (one request per job). Then as many pairs of bare requests (``GET /healthz``) from as many
    clients: the API's CPU for those is what its HTTP stack (uvicorn, Starlette, FastAPI, the
    middlewares) costs a job's two requests before any work of its own.
    """
    urls = [f"{base}/img/{n}.png" for n in range(args.singles)]
    figures = _singles_figures(args, stack, urls, cpu, prefer_wait=False)
    figures["prefer_wait"] = _singles_figures(args, stack, urls, cpu, prefer_wait=True)
    cpu.start()
    asyncio.run(run_bare_requests(stack.api_url, 2 * args.singles, args.clients))
    figures["api_cpu_ms_per_two_bare_requests"] = cpu.per_item_ms(args.singles)["api"]
    return figures


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    metrics_port = free_port()
    images, base = start_image_server(log_dir, args.image_size)
    stack = LocalStack(log_dir, env=stack_env(args, base.rsplit(":", 1)[1], metrics_port), api_port=free_port(),
                       webhooks=False)  # fmt: skip
    try:
        stack.start(timeout_s=300)
        assert stack.api is not None and stack.worker is not None and stack.redis is not None
        pids: dict[str, int | str] = {
            "api": stack.api.pid,
            "worker": stack.worker.pid,
            "redis": stack.redis.pid,
            "images": images.pid,
        }
        cpu = CpuMeter(pids)
        singles = run_singles_phase(args, stack, base, cpu)
        bulk = run_bulk(args, stack, base, metrics_port, cpu)
    finally:
        stack.stop()
        images.stop()
    pngs = drawn_pngs(args.image_size, DISTINCT_IMAGES)
    capacity = decode_capacity(pngs, args.model)
    report = {
        "model": args.model,
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size or args.batch_size,
        "image": f"{args.image_size}x{args.image_size} PNG by URL",
        "max_new_tokens": args.max_new_tokens,
        "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
        "at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "baseline_singles": singles,
        "bulk": bulk,
        "decode_capacity": capacity,
    }
    if args.model.startswith("sleep:"):
        batch_ms = float(args.model.split(":", 1)[1])
        report["simulated_accelerator_images_per_s"] = round(args.batch_size / (batch_ms / 1000), 1)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    else:
        print(json.dumps(report, indent=2))
    if args.keep_logs:
        print(f"logs: {log_dir}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
