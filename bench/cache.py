"""The caption cache end to end: the same workload with the cache off (the baseline) and on, in one run. Prints JSON.

``python -m bench.cache --items 5000 --distinct 200 --repeat-share 0.8`` starts a local image server
(``bench.image_server``, its own process) and, for each of cache off and cache on, a stack of its own
(redis-server, the API, one caption worker with ``--model``, by default the embedded one), then:

1. **bulk**: one batch through ``POST /v1/batches`` of ``--items`` image URLs, of which ``--repeat-share``
   repeat ``--distinct`` images and the rest are each an image of its own, shuffled (seed 0); it waits for
   the batch to complete: items/s (up to the batch's own ``finished_at``), CPU ms per item of every process
   (``/proc/<pid>/stat``), the cores they kept busy, the batch's ``cache_hits``, and from the worker's
   ``/metrics`` what the thread that calls the model did (its model batches, images per batch, how much of
   the phase it was generating, and how much of that it was on a CPU);
2. **singles**: ``--singles`` single jobs, one at a time, each ``POST /v1/jobs`` with ``Prefer: wait``
   for an image the bulk phase captioned (with the cache on, all hits): p50/p99 latency, CPU ms per job;
3. with the cache on, **Redis bytes per entry**: ``MEMORY USAGE`` of the entries (sampled) plus the LRU
   set's bytes per member, and the cache's counters (``fresh_url_hits``: hits without a download).

The image server sends ``Cache-Control: --cache-control`` with every image (by default
``public, max-age=86400``, what a site's static images usually carry), so repeats of a URL may be
answered without downloading it again (docs/cache.md "Fresh URLs"); ``--cache-control ''`` sends none,
and every repeat is downloaded and recognised by its bytes.

The machine's load average is printed with the figures: items/s moves with other processes' load,
CPU per item much less.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from bench.bulk import CpuMeter, _quantile, spent_between, start_image_server, worker_metrics
from bench.image_server import drawn_pngs
from scripts.processes import free_port
from scripts.stack import LocalStack
from shared.keys import Keys
from shared.settings import Settings
from worker.intake.images import decode_image
from worker.runtime import load_captioner

_POLL_S = 0.2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded, a checkpoint folder, null or sleep:MS")
    parser.add_argument("--items", type=int, default=5000, help="items of the bulk batch")
    parser.add_argument("--distinct", type=int, default=200, help="distinct images the repeated items show")
    parser.add_argument("--repeat-share", type=float, default=0.8, help="share of the items that repeat")
    parser.add_argument("--singles", type=int, default=200, help="single jobs after the batch (all hits when on)")
    parser.add_argument("--batch-size", type=int, default=32, help="the worker's max_batch_size")
    parser.add_argument(
        "--image-size", type=int, default=512, help="side of the square PNGs, in pixels (512: the issue's 3-10 ms)"
    )
    parser.add_argument(
        "--cache-control", default="public, max-age=86400", help="the image server's Cache-Control; '' for none"
    )
    return parser.parse_args(argv)


def workload(args: argparse.Namespace) -> list[int]:
    """Image numbers of the items: the repeats among the first ``--distinct`` images, the rest one each."""
    repeats = round(args.items * args.repeat_share)
    rng = random.Random(0)
    numbers = [rng.randrange(args.distinct) for _ in range(repeats)]
    numbers += list(range(args.distinct, args.distinct + args.items - repeats))
    rng.shuffle(numbers)
    return numbers


def stack_env(args: argparse.Namespace, image_port: str, *, cache: bool, metrics_port: int) -> dict[str, str]:
    return {
        "CAPTIONIZER_MODEL": args.model,
        "CAPTIONIZER_KEY_PREFIX": "bench-cache-on" if cache else "bench-cache-off",
        "CAPTIONIZER_CACHE_ENABLED": "true" if cache else "false",
        "CAPTIONIZER_MAX_BATCH_SIZE": str(args.batch_size),
        "CAPTIONIZER_ALLOW_ANONYMOUS": "true",
        "CAPTIONIZER_ALLOW_PRIVATE_NETWORKS": "true",
        "CAPTIONIZER_ALLOWED_PORTS": f"80,443,{image_port}",
        "CAPTIONIZER_RATE_LIMIT_PER_MINUTE": "0",
        "CAPTIONIZER_RATE_LIMIT_READS_PER_MINUTE": "0",
        "CAPTIONIZER_OWNER_QUEUE_SHARE": "1",
        "CAPTIONIZER_WORKER_METRICS_PORT": str(metrics_port),
        "CAPTIONIZER_LOG_LEVEL": "WARNING",
    }


def run_bulk(http: httpx.Client, base: str, numbers: list[int], cpu: CpuMeter, metrics_port: int) -> dict[str, Any]:
    items = [{"image_url": f"{base}/img/{n}.png"} for n in numbers]
    metrics_before = worker_metrics(metrics_port)
    cpu.start()
    began = time.perf_counter()
    began_epoch_s = time.time()
    posted = http.post("/v1/batches", json={"items": items, "max_new_tokens": 10})
    posted.raise_for_status()
    post_s = time.perf_counter() - began
    batch_id = posted.json()["id"]
    while True:
        batch = http.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] == "completed":
            break
        time.sleep(_POLL_S)  # a bench's poll of the batch's counts, as the CLI does
    polled_wall_s = time.perf_counter() - began
    # Until the batch's own finished_at (same machine, same clock), not until the poll that saw it: a poll
    # every 0.2 s adds 0.1 s on average, a sixtieth of a six-second phase.
    wall_s = datetime.fromisoformat(batch["finished_at"]).timestamp() - began_epoch_s
    per_item = cpu.per_item_ms(len(numbers))
    # The CPU meter and the worker's counters are read at the poll: their shares are over the polled time.
    model_thread = model_thread_figures(metrics_before, worker_metrics(metrics_port), polled_wall_s)
    busy = {name: ms for name, ms in per_item.items() if name != "images"}
    return {
        "items": len(numbers),
        "items_per_s": round(len(numbers) / wall_s, 1),
        "wall_s": round(wall_s, 3),
        "polled_wall_s": round(polled_wall_s, 3),
        # The POST's own time: the batch's items are checked, stored and published before it answers.
        "post_s": round(post_s, 3),
        "cpu_ms_per_item": per_item,
        "cpu_ms_per_item_api_worker_redis": round(sum(busy.values()), 3),
        # The stack's CPU over the phase's wall time, image server included: near the machine's cores, the
        # phase was bound by CPU, and items/s can only follow CPU per item.
        "cores_busy": round(sum(per_item.values()) * len(numbers) / 1000 / polled_wall_s, 2),
        "succeeded": batch["counts"]["succeeded"],
        "cache_hits": batch.get("cache_hits", 0),
        "model_thread": model_thread,
    }


def model_thread_figures(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
    """What the one thread that calls the model did during the bulk phase, from the worker's counters.

    ``busy_share``: its generate calls' wall time over the phase's; ``on_cpu_share``: its own CPU time
    over its generate calls' wall time (the rest it waited: for the GIL, which the event loop's work
    holds, or for the CPU). Both near 1 and 0.3-0.6 say the phase was held by that thread.
    """
    spent = spent_between(before, after)
    batches = spent["captionizer_batch_generate_seconds_count"]
    generate_s = spent["captionizer_batch_generate_seconds_sum"]
    return {
        "model_batches": batches,
        "images_per_model_batch": round(spent["captionizer_batch_size_sum"] / batches, 1) if batches else 0.0,
        "generate_s": round(generate_s, 2),
        "busy_share": round(generate_s / wall_s, 2),
        "on_cpu_share": round(spent["captionizer_generate_thread_cpu_seconds_total"] / generate_s, 2)
        if generate_s
        else 0.0,
    }


def run_singles(http: httpx.Client, base: str, numbers: list[int], cpu: CpuMeter) -> dict[str, Any]:
    """One job at a time, each answered in its POST (``Prefer: wait``): latency as a client sees it."""
    latencies_s: list[float] = []
    outcomes: dict[str, int] = {}
    cpu.start()
    for n in numbers:
        began = time.perf_counter()
        answer = http.post(
            "/v1/jobs", json={"image_url": f"{base}/img/{n}.png", "max_new_tokens": 10}, headers={"Prefer": "wait=60"}
        )
        latencies_s.append(time.perf_counter() - began)
        assert answer.status_code == 200, answer.text
        outcome = str(answer.json().get("cache"))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    per_job = cpu.per_item_ms(len(numbers))
    busy = {name: ms for name, ms in per_job.items() if name != "images"}
    return {
        "jobs": len(numbers),
        "latency_ms": {
            "p50": round(1000 * (_quantile(latencies_s, 0.5) or 0), 2),
            "p99": round(1000 * (_quantile(latencies_s, 0.99) or 0), 2),
        },
        "cpu_ms_per_job": per_job,
        "cpu_ms_per_job_api_worker_redis": round(sum(busy.values()), 3),
        "cache": outcomes,
    }


def redis_bytes_per_entry(redis: Redis, keys: Keys) -> dict[str, float]:
    """Bytes per entry and per fresh URL's link (``u:`` members): its key (sampled) plus its share of the LRU set."""
    members = redis.zrange(keys.cache_lru(), 0, -1)
    lru_bytes = (redis.memory_usage(keys.cache_lru(), samples=0) or 0) / max(1, len(members))
    figures: dict[str, float] = {"lru_set_bytes_per_member": round(lru_bytes, 1)}
    for kind, chosen in (
        ("entry", [m for m in members if not m.startswith(b"u:")]),
        ("link", [m for m in members if m.startswith(b"u:")]),
    ):
        sample = chosen[:: max(1, len(chosen) // 200)]
        sizes = [redis.memory_usage(keys.cache_entry(member.decode())) or 0 for member in sample]
        mean = statistics.fmean(sizes) if sizes else 0.0
        figures |= {("entries" if kind == "entry" else "links"): len(chosen), f"{kind}_key_bytes": round(mean, 1)}
        figures[f"total_bytes_per_{kind}"] = round(mean + lru_bytes, 1)
    return figures


def decode_and_preprocess_ms(model: str, pngs: list[bytes]) -> float | None:
    """CPU ms per image to hash, decode and preprocess ``pngs`` as the worker does, in this process, after the phases.

    What a cache hit saves besides the model and the download: issue #26 puts it at 3-10 ms on a CPU, which
    512 px PNGs reach and 128 px ones do not. None for a model without a processor (``null``, ``sleep:``).
    """
    settings = Settings(model=model)
    captioner = load_captioner(settings)
    preprocess = getattr(captioner, "preprocess", None)
    if preprocess is None:
        return None
    spent_s: list[float] = []
    for data in pngs[:100]:
        began = time.process_time()
        hashlib.sha256(data).digest()
        preprocess([decode_image(data, settings, model_input_px=captioner.input_size_px)])
        spent_s.append(time.process_time() - began)
    # The median: the first calls warm the processor up, and this process shares the machine.
    return round(1000 * statistics.median(spent_s), 2)


def measure(args: argparse.Namespace, log_dir: Path, base: str, images_pid: int, *, cache: bool) -> dict[str, Any]:
    """Both phases on a stack of their own, with the cache on or off."""
    numbers = workload(args)
    metrics_port = free_port()
    env = stack_env(args, base.rsplit(":", 1)[1], cache=cache, metrics_port=metrics_port)
    stack = LocalStack(log_dir / ("on" if cache else "off"), env=env, api_port=free_port(), webhooks=False)
    (log_dir / ("on" if cache else "off")).mkdir(exist_ok=True)
    try:
        stack.start(timeout_s=300)
        assert stack.api is not None and stack.worker is not None and stack.redis is not None
        cpu = CpuMeter({"api": stack.api.pid, "worker": stack.worker.pid, "redis": stack.redis.pid,
                        "images": images_pid})  # fmt: skip
        with httpx.Client(base_url=stack.api_url, timeout=600) as http:
            bulk = run_bulk(http, base, numbers, cpu, metrics_port)
            singles = run_singles(http, base, [n % args.distinct for n in range(args.singles)], cpu)
        figures: dict[str, Any] = {"bulk": bulk, "singles": singles}
        if cache:
            redis = Redis.from_url(stack.redis_url)
            try:
                figures["redis_bytes_per_entry"] = redis_bytes_per_entry(redis, stack.keys)
                counters = redis.hgetall(stack.keys.cache_stats())
                figures["cache_counters"] = {name.decode(): int(value) for name, value in counters.items()}
            finally:
                redis.close()
        return figures
    finally:
        stack.stop()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    count = args.distinct + args.items - round(args.items * args.repeat_share)
    images, base = start_image_server(log_dir, args.image_size, count=count, cache_control=args.cache_control)
    load_before = os.getloadavg()
    try:
        off = measure(args, log_dir, base, images.pid, cache=False)
        on = measure(args, log_dir, base, images.pid, cache=True)
    finally:
        images.stop()
    pngs = drawn_pngs(args.image_size, count)
    report = {
        "model": args.model,
        "workload": {
            "items": args.items,
            "repeat_share": args.repeat_share,
            "distinct_repeated_images": args.distinct,
            "distinct_images_by_bytes": len({hashlib.sha256(png).digest() for png in pngs}),
            "image": f"{args.image_size}x{args.image_size} PNG by URL",
            "hash_decode_preprocess_cpu_ms_per_image": decode_and_preprocess_ms(args.model, pngs),
            "cache_control": args.cache_control,
        },
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_at_end": os.getloadavg()},
        "at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "cache_off": off,
        "cache_on": on,
        "bulk_items_per_s_ratio": round(on["bulk"]["items_per_s"] / off["bulk"]["items_per_s"], 2),
        "bulk_cpu_per_item_ratio": round(
            off["bulk"]["cpu_ms_per_item_api_worker_redis"] / on["bulk"]["cpu_ms_per_item_api_worker_redis"], 2
        ),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
