"""No tenant can slow another (issue #23): tenant B's figures alone, then beside a hostile tenant A, in one run.

One stack (``scripts.stack.LocalStack``) with two API keys and a simulated accelerator (``sleep:MS`` per
model batch). Phase 1, B alone: single jobs one after the other, a 10-item batch, jobs with a webhook.
Phase 2, the same while tenant A has at once: a batch on a host that never answers (a tarpit), two scan-bomb
JPEG uploads, single jobs on a slow host, and a batch whose item webhooks go to a receiver that hangs. B's
images are on another host name for the same server (``localhost``).
Prints one JSON object: B's p50/p99 single-job latency, batch completion and webhook latency in both
phases, the ratios, A's scan-bomb outcomes and the caption worker's session CPU after they ended.

    .venv/bin/python -m bench.fairness            # the issue's sizes
    .venv/bin/python -m bench.fairness --quick    # smaller A, for a loaded machine

The local servers come from the test suite (``tests/servers.py``, ``tests/integration/webhook_receiver.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from api.http.auth import hash_key
from scripts.processes import session_cpu_s
from scripts.stack import LocalStack
from tests.integration.webhook_receiver import HANG, NEW_SECRET, WebhookReceiver, running_receiver
from tests.servers import HostileServer, scan_bomb_jpeg

KEY_A = "cap_bench-a-0123456789abcdefghijklmnopqrstuvwxyz012345"
KEY_B = "cap_bench-b-0123456789abcdefghijklmnopqrstuvwxyz012345"
_WAIT_S = 60


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _run_job(api: httpx.Client, key: str, body: dict[str, Any]) -> dict[str, Any]:
    created = api.post("/v1/jobs", json=body, headers=_auth(key))
    created.raise_for_status()
    job: dict[str, Any] = created.json()
    while job["status"] not in ("succeeded", "failed", "canceled", "expired"):
        polled = api.get(job["url"], params={"wait": _WAIT_S}, headers=_auth(key))
        polled.raise_for_status()
        job = polled.json()
    return job


def _b_figures(api: httpx.Client, server: HostileServer, receiver: WebhookReceiver, jobs: int) -> dict[str, Any]:
    """Tenant B's single jobs, 10-item batch and webhooks; latencies in seconds."""
    # Another host name for the same server: A's tarpit holds its own host's connection slots
    # (worker.egress, 8 per host), as a host that never answers does in the issue; B's host is a good one.
    url = server.url("/image/shape.png", host="localhost")
    latencies = []
    for _ in range(jobs):
        began = time.perf_counter()
        assert _run_job(api, KEY_B, {"image_url": url})["status"] == "succeeded"
        latencies.append(time.perf_counter() - began)
    began = time.perf_counter()
    created = api.post("/v1/batches", json={"items": [{"image_url": url}] * 10}, headers=_auth(KEY_B)).json()
    while True:
        polled = api.get(f"/v1/batches/{created['id']}", headers=_auth(KEY_B))
        polled.raise_for_status()
        if polled.json()["status"] not in ("queued", "running"):
            break
        time.sleep(0.05)  # a bench polls; tests wait on state
    batch_s = time.perf_counter() - began
    webhook_s = []
    for _ in range(5):
        job = _run_job(api, KEY_B, {"image_url": url, "webhook_url": receiver.url_for()})
        deadline = time.monotonic() + _WAIT_S
        while not receiver.for_job(job["id"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        arrived = receiver.for_job(job["id"])[0].at_epoch_s
        webhook_s.append(arrived - datetime.fromisoformat(job["finished_at"]).timestamp())
    return {
        "single_p50_s": round(statistics.median(latencies), 4),
        "single_p99_s": round(_percentile(latencies, 0.99), 4),
        "batch_10_s": round(batch_s, 3),
        "webhook_p99_s": round(_percentile(webhook_s, 0.99), 4),
    }


def _start_a(api: httpx.Client, server: HostileServer, receiver: WebhookReceiver, scale: float) -> dict[str, Any]:
    """Tenant A's hostile load, all at once; returns the scan-bomb job ids and the tarpit batch's id.

    The batch with hanging item webhooks goes first: a key's own batches are fed in the order it posted
    them (fair order is between keys, docs/batches.md), so posted after the tarpit batch, its items
    would wait for A's tarpit chunks and its webhooks would never hang while B is measured.
    """
    hooked = {
        "items": [{"image_url": server.url("/image/shape.png")}] * int(1_000 * scale),
        "webhook_url": receiver.url_for(then=HANG),
        "webhook_item_events": True,
    }
    api.post("/v1/batches", json=hooked, headers=_auth(KEY_A)).raise_for_status()
    tarpit = [{"image_url": server.url("/tarpit/bench-a")}] * int(2_000 * scale)
    posted = api.post("/v1/batches", json={"items": tarpit}, headers=_auth(KEY_A))
    posted.raise_for_status()
    bombs = []
    for _ in range(2):
        files = {"file": ("bomb.jpg", scan_bomb_jpeg(scans=20_000, side_px=2048), "image/jpeg")}
        bombs.append(api.post("/v1/jobs", files=files, headers=_auth(KEY_A)).json()["id"])
    for _ in range(int(40 * scale) or 1):
        api.post("/v1/jobs", json={"image_url": server.url("/delayed/15")}, headers=_auth(KEY_A)).raise_for_status()
    return {"bombs": bombs, "tarpit_batch": posted.json()["id"]}


def _wait_for(predicate: Callable[[], bool], what: Callable[[], str], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what()}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of tenant A's load")
    parser.add_argument("--model", default="sleep:50", help="stand-in model: one model batch takes this long")
    parser.add_argument("--jobs", type=int, default=40, help="tenant B's single jobs per phase")
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    with HostileServer() as server, running_receiver(NEW_SECRET) as receiver:
        env = {
            "CAPTIONIZER_MODEL": args.model,
            "CAPTIONIZER_API_KEY_HASHES": f"{hash_key(KEY_A)},{hash_key(KEY_B)}",
            "CAPTIONIZER_ALLOW_ANONYMOUS": "false",
            "CAPTIONIZER_ALLOW_PRIVATE_NETWORKS": "true",
            "CAPTIONIZER_ALLOWED_PORTS": f"{server.port},{receiver.port}",
            "CAPTIONIZER_RATE_LIMIT_PER_MINUTE": "0",
            # Its images repeat: the caption cache would answer the repeats without the pipeline this
            # measures (bench/cache.py measures the cache).
            "CAPTIONIZER_CACHE_ENABLED": "false",
            # The bench polls the batch: its reads must not be rate limited (a 429 has no status to wait on).
            "CAPTIONIZER_RATE_LIMIT_READS_PER_MINUTE": "0",
            "CAPTIONIZER_OWNER_QUEUE_SHARE": "1",
            "CAPTIONIZER_WORKER_METRICS_PORT": "0",
            "CAPTIONIZER_WEBHOOK_SECRETS": NEW_SECRET,
            "CAPTIONIZER_WEBHOOK_TIMEOUT_S": "5",
            "CAPTIONIZER_FETCH_TIMEOUT_S": "10",
            "CAPTIONIZER_MAX_ITEMS_IN_FLIGHT": "100000",
        }
        stack = LocalStack(Path(tempfile.mkdtemp(prefix="fairness-")), env=env, api_port=_free())
        try:
            stack.start(timeout_s=300)
            with httpx.Client(base_url=stack.api_url, timeout=120) as api:
                solo = _b_figures(api, server, receiver, args.jobs)
                started = _start_a(api, server, receiver, scale)
                # B is measured once A's load is in the worker's hands: requests hanging at the tarpit and
                # item webhooks hanging at A's receiver (what each looked like during B is printed too).
                _wait_for(
                    lambda: server.tarpit("bench-a").open > 0 and receiver.hanging > 0,
                    lambda: (
                        f"A's load to hang: tarpit open {server.tarpit('bench-a').open}, "
                        f"webhooks hanging {receiver.hanging}"
                    ),
                )
                beside = _b_figures(api, server, receiver, args.jobs)
                a_during_b = {
                    "tarpit_requests_open": server.tarpit("bench-a").open,
                    "webhook_deliveries_hanging": receiver.hanging,
                    "tarpit_batch": api.get(f"/v1/batches/{started['tarpit_batch']}", headers=_auth(KEY_A)).json()[
                        "counts"
                    ],
                }
                bombs = [api.get(f"/v1/jobs/{job_id}", headers=_auth(KEY_A)).json() for job_id in started["bombs"]]
                assert stack.worker is not None
                worker = stack.worker.pid
                after_bombs = {pid: s for pid, s in session_cpu_s(worker).items() if pid != worker}
                time.sleep(5)  # a bench measures over time: decoder CPU must not grow once the bombs ended
                later = {pid: s for pid, s in session_cpu_s(worker).items() if pid != worker}
        finally:
            server.tarpit("bench-a").release()
            receiver.release_hangs()
            stack.stop()
    spent = sum(later.get(pid, 0.0) - cpu for pid, cpu in after_bombs.items() if pid in later)
    print(json.dumps({
        "model": args.model, "scale_of_a": scale, "load_average": os.getloadavg(),
        "b_alone": solo, "b_beside_a": beside, "a_while_b_was_measured": a_during_b,
        "ratios": {name: round(beside[name] / solo[name], 2) if solo[name] else None for name in solo},
        "scan_bombs": [(job["status"], (job.get("error") or {}).get("code")) for job in bombs],
        "decoder_cpu_s_after_bombs_ended": round(spent, 3),
    }, indent=2))  # fmt: skip


def _free() -> int:
    from scripts.processes import free_port

    return free_port()


if __name__ == "__main__":
    main()
