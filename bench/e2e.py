"""End-to-end throughput of the whole system against the raw model, measured in the same run on the same machine.

``python -m bench.e2e --model git-base --jobs 64 --clients 32`` (or ``--model embedded --jobs 3000``) starts a
real redis-server, the uvicorn API and one worker, serves drawn images from a local HTTP server, submits
``--jobs`` jobs over HTTP from ``--clients`` concurrent clients as fast as the API takes them (the worker is
saturated throughout), waits for every job to end, stops the stack, then times ``Captioner`` alone on the
same images at the worker's batch size. It prints JSON.

``git-base`` is git-base-textcaps' architecture (``GitConfig.from_pretrained('../shared/git-base-textcaps')``)
with random weights, saved to a temporary folder with that checkpoint's tokenizer and processor files. Its
generation config has no end token, so every caption is exactly ``--max-new-tokens`` long, end to end and raw.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from model import shapes
from scripts.processes import free_port
from scripts.stack import LocalStack

GIT_BASE_FILES = Path(__file__).resolve().parents[2] / "shared" / "git-base-textcaps"
#: Photo-like input size, so decoding and the processor's resize cost what they cost in production.
IMAGE_SIZE = (640, 480)
DISTINCT_IMAGES = 16
JOB_WAIT_S = 60


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["embedded", "git-base"], default="git-base")
    parser.add_argument("--jobs", type=int, default=64, help="jobs submitted")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="tokens per caption (fixed for git-base)")
    parser.add_argument("--batch-size", type=int, default=8, help="the worker's max_batch_size")
    parser.add_argument("--batch-wait-ms", type=int, default=20, help="the worker's max_batch_wait_ms")
    parser.add_argument("--raw-batches", type=int, default=0, help="batches timed for the raw model (0: as many as jobs)")
    parser.add_argument("--keep-logs", action="store_true", help="print where the stack's logs are and keep them")
    return parser.parse_args(argv)


def build_git_base(folder: Path) -> Path:
    """git-base-textcaps' architecture with random weights and its own tokenizer files; no end token."""
    import torch
    from transformers import GitConfig, GitForCausalLM

    torch.manual_seed(0)
    model = GitForCausalLM(GitConfig.from_pretrained(GIT_BASE_FILES))
    # No end token: generate always runs to max_new_tokens, so work per caption is fixed.
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)
    for path in GIT_BASE_FILES.iterdir():
        if path.name not in ("config.json", "generation_config.json"):
            shutil.copy(path, folder / path.name)
    return folder


def draw_images() -> list[bytes]:
    """Distinct PNG drawings of captioned shapes."""
    rng = random.Random(0)
    encoded = []
    for _ in range(DISTINCT_IMAGES):
        image, _caption = shapes.draw_sample(rng, image_size=IMAGE_SIZE)
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


async def submit_all(http: aiohttp.ClientSession, api: str, urls: list[str], clients: int, tokens: int) -> dict[str, Any]:
    """POST every job from ``clients`` concurrent clients; returns ids, latencies and the rate."""
    pending = list(enumerate(urls))
    ids: list[str] = [""] * len(urls)
    latencies: list[float] = []

    async def client() -> None:
        while pending:
            index, url = pending.pop()
            started = time.perf_counter()
            async with http.post(f"{api}/v1/jobs", json={"image_url": url, "max_new_tokens": tokens}) as response:
                body = await response.json()
            latencies.append(time.perf_counter() - started)
            if response.status != 202:
                raise RuntimeError(f"POST answered {response.status}: {body}")
            ids[index] = body["id"]

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return {"ids": ids, "latencies": latencies, "jobs_per_s": len(urls) / elapsed}


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
                if job["status"] in ("succeeded", "failed", "canceled", "expired"):
                    jobs.append(job)
                    break

    await asyncio.gather(*(client() for _ in range(clients)))
    return jobs


async def run_load(api: str, image_port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then submit and wait for ``args.jobs`` jobs; returns the measurements."""
    base = f"http://127.0.0.1:{image_port}/image"
    connector = aiohttp.TCPConnector(limit=2 * args.clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=JOB_WAIT_S + 30)) as http:
        warm = await submit_all(http, api, [f"{base}/0.png"] * args.batch_size, args.batch_size, args.max_new_tokens)
        await wait_all(http, api, warm["ids"], args.batch_size)
        urls = [f"{base}/{i % DISTINCT_IMAGES}.png" for i in range(args.jobs)]
        submitted = await submit_all(http, api, urls, args.clients, args.max_new_tokens)
        jobs = await wait_all(http, api, submitted["ids"], args.clients)
    return summarize(submitted, jobs, args)


def summarize(submitted: dict[str, Any], jobs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Throughput, latencies and batch sizes from the job records (server clocks)."""
    succeeded = [job for job in jobs if job["status"] == "succeeded"]
    created = [datetime.fromisoformat(job["created_at"]) for job in jobs]
    finished = [datetime.fromisoformat(job["finished_at"]) for job in jobs if job["finished_at"]]
    span_s = (max(finished) - min(created)).total_seconds()
    batches: dict[str, int] = {job["timings"]["batch_id"]: job["timings"]["batch_size"] for job in succeeded}
    latencies = [job["timings"]["total_s"] for job in succeeded]
    post_ms = [1000 * seconds for seconds in submitted["latencies"]]
    return {
        "jobs": len(jobs),
        "succeeded": len(succeeded),
        "submit_jobs_per_s": round(submitted["jobs_per_s"], 1),
        "post_latency_ms": {"p50": round(percentile(post_ms, 0.5), 2), "p99": round(percentile(post_ms, 0.99), 2)},
        "e2e_images_per_s": round(len(succeeded) / span_s, 3),
        "job_latency_s": {"p50": round(percentile(latencies, 0.5), 3), "p99": round(percentile(latencies, 0.99), 3)},
        "mean_batch_size": round(statistics.mean(batches.values()), 2),
        "batches": len(batches),
        "max_batch_size": args.batch_size,
    }


def measure_raw(model_path: str, images: list[bytes], args: argparse.Namespace, batches: int) -> dict[str, Any]:
    """Images per second of ``Captioner`` alone, batched like the worker, on the same images (decoded once)."""
    from PIL import Image

    from model.captioner import EMBEDDED_MODEL_DIR, Captioner

    captioner = Captioner.load(EMBEDDED_MODEL_DIR if model_path == "embedded" else model_path)
    decoded = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    batch = [decoded[i % len(decoded)] for i in range(args.batch_size)]
    tokens = args.max_new_tokens
    fixed = None if model_path == "embedded" else tokens
    captioner.caption(batch, max_new_tokens=tokens, min_new_tokens=fixed)  # warm at this batch size
    started = time.perf_counter()
    for _ in range(batches):
        captioner.caption(batch, max_new_tokens=tokens, min_new_tokens=fixed)
    elapsed = time.perf_counter() - started
    return {"raw_images_per_s": round(batches * args.batch_size / elapsed, 3), "raw_batches": batches}


def stack_env(model_path: str, image_port: int, args: argparse.Namespace) -> dict[str, str]:
    return {
        "CAPTIONIZER_MODEL": model_path,
        "CAPTIONIZER_ALLOW_ANONYMOUS": "true",
        "CAPTIONIZER_ALLOW_PRIVATE_NETWORKS": "true",
        "CAPTIONIZER_ALLOWED_PORTS": f"80,443,{image_port}",
        "CAPTIONIZER_RATE_LIMIT_PER_MINUTE": "0",
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
    stack = LocalStack(log_dir, env=stack_env(model_path, image_port, args), api_port=free_port())
    try:
        await asyncio.to_thread(stack.start, 300)
        return await run_load(stack.api_url, image_port, args)
    finally:
        await asyncio.to_thread(stack.stop)
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    images = draw_images()
    with tempfile.TemporaryDirectory(prefix="captionizer-e2e-") as folder:
        model_path = "embedded" if args.model == "embedded" else str(build_git_base(Path(folder) / "git-base"))
        log_dir = Path(tempfile.mkdtemp(prefix="captionizer-e2e-logs-"))
        e2e = asyncio.run(run_e2e(model_path, images, log_dir, args))
        raw_batches = args.raw_batches or max(3, args.jobs // args.batch_size)
        raw = measure_raw(model_path, images, args, raw_batches)
    if not args.keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    report = {
        "model": args.model,
        "max_new_tokens": args.max_new_tokens,
        "clients": args.clients,
        **e2e,
        **raw,
        "e2e_vs_raw": round(e2e["e2e_images_per_s"] / raw["raw_images_per_s"], 3),
        "mean_batch_vs_max": round(e2e["mean_batch_size"] / args.batch_size, 3),
        "logs": str(log_dir) if args.keep_logs else None,
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
