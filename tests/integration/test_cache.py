"""The caption cache on a real stack: redis-server, a Celery caption worker (SIGKILLed once), uvicorn, the CLI.

A stack of its own, with the cache on (the shared stacks turn it off, as their tests count model
work on repeated images). Its model is the ``sleep:MS`` stand-in: every batch holds the model's thread
for ``_MODEL_MS``, long enough that an identical job submitted with the first finds it computing, and
that a test can kill the worker while a job holds a lease. Images are uploads drawn per test (random
pixels), so no test meets another's entries.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from redis import Redis

from scripts.stack import LocalStack
from tests.integration.chaos import wait_until
from tests.integration.conftest import own_stack
from tests.integration.test_cli import run_cli
from tests.servers import HostileServer
from tests.stack import TENANT_A_KEY, TENANT_B_KEY

pytestmark = pytest.mark.slow

_MODEL_MS = 2000
_MAX_ENTRIES = 8
_LEASE_S = 2
_TIME_LIMIT_S = 20
_REDELIVERY_S = 25
_DEADLINE_S = 120
_PREFIX = "cachetest"


cache_stack = own_stack(
    "cache",
    {
        "CAPTIONIZER_KEY_PREFIX": _PREFIX,
        "CAPTIONIZER_MODEL": f"sleep:{_MODEL_MS}",
        "CAPTIONIZER_CACHE_ENABLED": "true",
        "CAPTIONIZER_CACHE_MAX_ENTRIES": str(_MAX_ENTRIES),
        "CAPTIONIZER_CACHE_LEASE_S": str(_LEASE_S),
        # A killed worker's jobs come back within seconds, not the default 5 minutes.
        "CAPTIONIZER_JOB_TIME_LIMIT_S": str(_TIME_LIMIT_S),
        "CAPTIONIZER_REDELIVERY_TIMEOUT_S": str(_REDELIVERY_S),
        "CAPTIONIZER_MAX_BATCH_SIZE": "16",
    },
)


@pytest.fixture
def redis(cache_stack: LocalStack) -> Iterator[Redis]:
    client = Redis.from_url(cache_stack.redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def api(cache_stack: LocalStack, redis: Redis) -> Iterator[httpx.Client]:
    """A client of the API; job data and the cache (entries and counters) are deleted after each test."""
    with httpx.Client(base_url=cache_stack.api_url, timeout=90) as client:
        yield client
    keep = (cache_stack.keys.worker_heartbeat_pattern().rstrip("*"), cache_stack.keys.model_limits())
    doomed = [key for key in redis.scan_iter(match=f"{_PREFIX}:*") if not key.decode().startswith(keep)]
    if doomed:
        redis.delete(*doomed)


def image() -> bytes:
    """A PNG no other test sends: random pixels."""
    out = io.BytesIO()
    Image.frombytes("RGB", (16, 16), os.urandom(16 * 16 * 3)).save(out, "PNG")
    return out.getvalue()


def as_key(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def submit(api: httpx.Client, data: bytes, *, key: str | None = None, **options: Any) -> str:
    body = {"image_base64": base64.b64encode(data).decode(), **options}
    response = api.post("/v1/jobs", json=body, headers=as_key(key))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def final(api: httpx.Client, job_id: str, *, key: str | None = None) -> dict[str, Any]:
    """The job once it has ended (long-polls, with a deadline)."""
    job: dict[str, Any] = {}

    def ended() -> bool:
        nonlocal job
        job = api.get(f"/v1/jobs/{job_id}", params={"wait": 10}, headers=as_key(key)).json()
        return job["status"] in {"succeeded", "failed", "canceled", "expired"}

    wait_until(ended, timeout_s=_DEADLINE_S, what=lambda: f"job {job_id} to end (last seen {job.get('status')})")
    return job


def captioned(api: httpx.Client, data: bytes, *, key: str | None = None, **options: Any) -> dict[str, Any]:
    return final(api, submit(api, data, key=key, **options), key=key)


def metrics(api: httpx.Client) -> dict[str, float]:
    """The cache's series of the API's /metrics, by name and labels."""
    text = api.get("/metrics").text
    return {
        name: float(value)
        for name, value in re.findall(r"^(captionizer_cache_[^\s]+) ([0-9.e+-]+)$", text, flags=re.MULTILINE)
    }


def test_two_identical_jobs_submitted_together_are_captioned_once(api: httpx.Client) -> None:
    data = image()
    with ThreadPoolExecutor(2) as pool:
        ids = list(pool.map(lambda _: submit(api, data), range(2)))
    jobs = [final(api, job_id) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"]
    miss = next(job for job in jobs if job["cache"] == "miss")
    hit = next(job for job in jobs if job["cache"] == "hit")
    assert hit["cached_from"] == miss["id"] and hit["caption"] == miss["caption"]
    # The hit never reached the model: no batch, no generate time.
    assert hit["timings"]["batch_id"] is None and hit["timings"]["generate_s"] is None
    assert miss["timings"]["batch_id"] is not None
    seen = metrics(api)
    assert seen['captionizer_cache_lookups_total{result="miss"}'] == 1
    assert seen['captionizer_cache_lookups_total{result="hit"}'] == 1
    # Submitted together, the second found the first computing (a batch lasts _MODEL_MS) and waited for it.
    assert seen["captionizer_cache_deduplicated_total"] == 1


def test_a_crash_of_the_worker_holding_the_first_still_ends_both(
    api: httpx.Client, cache_stack: LocalStack, redis: Redis
) -> None:
    data = image()
    ids = [submit(api, data), submit(api, data)]
    worker = cache_stack.worker
    assert worker is not None

    def held_and_waited() -> bool:
        leases = list(redis.scan_iter(match=cache_stack.keys.cache_lease("*")))
        statuses = [redis.hget(cache_stack.keys.job(job_id), "status") for job_id in ids]
        return len(leases) == 1 and statuses == [b'"running"', b'"running"']

    # The first holds the lease while its batch sleeps in the model; the second waits for it.
    wait_until(held_and_waited, timeout_s=_DEADLINE_S, what="one job holding the lease and both running")
    worker.signal_group(9)
    wait_until(lambda: not worker.is_running(), timeout_s=60, what="the killed worker to exit")
    cache_stack.worker = cache_stack.start_worker(240)

    jobs = [final(api, job_id) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"]
    assert sorted(job["cache"] for job in jobs) == ["hit", "miss"]
    miss = next(job for job in jobs if job["cache"] == "miss")
    hit = next(job for job in jobs if job["cache"] == "hit")
    assert hit["cached_from"] == miss["id"]
    # Both were delivered again after the kill: nothing was lost, nothing waited forever.
    assert all(job["attempts"] >= 2 for job in jobs)
    assert list(redis.scan_iter(match=cache_stack.keys.cache_lease("*"))) == []


def test_any_change_to_the_bytes_the_options_or_the_model_misses(
    api: httpx.Client, cache_stack: LocalStack, tmp_path: Path
) -> None:
    data = image()
    first = captioned(api, data)
    assert (first["cache"], captioned(api, data)["cache"]) == ("miss", "hit")
    one_byte_more = data + b"\x00"  # trailing bytes after IEND: the same pixels, other bytes
    assert captioned(api, one_byte_more)["cache"] == "miss"
    assert captioned(api, data, prompt="a photo of")["cache"] == "miss"
    assert captioned(api, data, max_new_tokens=5)["cache"] == "miss"
    assert captioned(api, data, max_new_tokens=5)["cache"] == "hit"

    # Another model behind the same API: the worker restarted with another stand-in.
    worker = cache_stack.worker
    assert worker is not None
    worker.stop()
    cache_stack.env["CAPTIONIZER_MODEL"] = f"sleep:{_MODEL_MS + 1}"
    try:
        cache_stack.worker = cache_stack.start_worker(240)
        other = captioned(api, data)
        assert other["cache"] == "miss" and other["model"] == f"sleep:{_MODEL_MS + 1}"
    finally:
        if cache_stack.worker is not None:
            cache_stack.worker.stop()
        cache_stack.env["CAPTIONIZER_MODEL"] = f"sleep:{_MODEL_MS}"
        cache_stack.worker = cache_stack.start_worker(240)


def test_the_size_bound_holds_under_a_stream_of_distinct_images(
    api: httpx.Client, cache_stack: LocalStack, redis: Redis
) -> None:
    images = [image() for _ in range(3 * _MAX_ENTRIES)]
    # The first image ends before the others are sent and the last one after they all ended, so they
    # are the least and the most recently used entries whatever order the concurrent rest end in.
    jobs = [final(api, submit(api, images[0]))]
    ids = [submit(api, data) for data in images[1:-1]]
    jobs += [final(api, job_id) for job_id in ids]
    jobs.append(final(api, submit(api, images[-1])))
    assert {job["status"] for job in jobs} == {"succeeded"} and {job["cache"] for job in jobs} == {"miss"}
    entries = list(redis.scan_iter(match=cache_stack.keys.cache_entry("*")))
    assert len(entries) == _MAX_ENTRIES
    assert redis.zcard(cache_stack.keys.cache_lru()) == _MAX_ENTRIES
    seen = metrics(api)
    assert seen["captionizer_cache_evictions_total"] == 2 * _MAX_ENTRIES
    assert seen["captionizer_cache_entries"] == _MAX_ENTRIES
    # The newest image is still cached; the first was evicted.
    assert captioned(api, images[-1])["cache"] == "hit"
    assert captioned(api, images[0])["cache"] == "miss"


def test_a_job_that_opts_out_is_captioned_again(api: httpx.Client) -> None:
    data = image()
    assert captioned(api, data)["cache"] == "miss"
    fresh = captioned(api, data, cache=False)
    assert fresh["status"] == "succeeded" and fresh["cache"] == "off" and fresh["cached_from"] is None
    assert fresh["timings"]["batch_id"] is not None
    batch = api.post(
        "/v1/batches", json={"items": [{"image_base64": base64.b64encode(data).decode()}], "cache": False}
    ).json()
    item = final(api, f"job_{batch['id'][4:]}_0")
    assert item["cache"] == "off" and item["timings"]["batch_id"] is not None


def test_a_tenant_learns_nothing_of_another_tenants_images(api: httpx.Client) -> None:
    data = image()
    theirs = captioned(api, data, key=TENANT_A_KEY)
    assert theirs["cache"] == "miss"
    mine = captioned(api, data, key=TENANT_B_KEY)
    # No hit, no foreign job id: B's job went through the model as if A had never sent the image, so it
    # took as long as any miss (its own batch and generate time).
    assert mine["cache"] == "miss" and mine["cached_from"] is None
    assert mine["timings"]["generate_s"] is not None and mine["timings"]["batch_id"] != theirs["timings"]["batch_id"]
    again = captioned(api, data, key=TENANT_B_KEY)
    assert again["cache"] == "hit" and again["cached_from"] == mine["id"]
    assert theirs["id"] not in str(again) and theirs["id"] not in str(mine)
    # A's job stays A's: B cannot read it.
    assert api.get(f"/v1/jobs/{theirs['id']}", headers=as_key(TENANT_B_KEY)).status_code == 404


def test_a_batch_counts_its_cache_hits_and_the_cli_prints_them(
    api: httpx.Client, cache_stack: LocalStack, tmp_path: Path
) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    logo, hero = image(), image()
    for index in range(6):
        (folder / f"{index}.png").write_bytes(logo if index % 3 else hero)

    result = run_cli(cache_stack, "caption", str(folder), "--wait", "--json")

    assert result.returncode == 0, result.stderr
    match = re.search(r"batch (bat_[A-Za-z0-9_-]{22}): (\d+) cache hits", result.stderr)
    assert match is not None, result.stderr
    assert int(match.group(2)) == 4  # six images, two distinct
    batch = api.get(f"/v1/batches/{match.group(1)}").json()
    assert batch["cache_hits"] == 4 and batch["counts"]["succeeded"] == 6


def test_a_decompression_bomb_sent_again_fails_from_the_cache_without_being_opened_again(
    api: httpx.Client, image_server: HostileServer
) -> None:
    url = image_server.url("/image/bomb.png")
    jobs = []
    for _ in range(2):
        response = api.post("/v1/jobs", json={"image_url": url})
        assert response.status_code == 202, response.text
        jobs.append(final(api, response.json()["id"]))
    first, again = jobs
    assert first["status"] == again["status"] == "failed"
    assert first["error"]["code"] == again["error"]["code"] == "too_many_pixels"
    # Cheap to send, costly to open: the repeat is refused by its bytes' digest, before any decoder runs.
    assert (first["cache"], again["cache"], again["cached_from"]) == (None, "hit", first["id"])


# --- fresh URLs: repeats answered without a download ---------------------------------------


def submit_url(api: httpx.Client, url: str, *, key: str | None = None) -> dict[str, Any]:
    response = api.post("/v1/jobs", json={"image_url": url}, headers=as_key(key))
    assert response.status_code == 202, response.text
    return final(api, response.json()["id"], key=key)


def batch_of(api: httpx.Client, url: str, items: int) -> dict[str, Any]:
    created = api.post("/v1/batches", json={"items": [{"image_url": url}] * items})
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    batch: dict[str, Any] = {}

    def ended() -> bool:
        nonlocal batch
        batch = api.get(f"/v1/batches/{batch_id}").json()
        return batch["status"] == "completed"

    wait_until(ended, timeout_s=_DEADLINE_S, what=lambda: f"batch {batch_id} to complete (last seen {batch})")
    return batch


def test_a_repeat_of_a_fresh_url_is_answered_through_every_door_without_downloading_it_again(
    api: httpx.Client, image_server: HostileServer
) -> None:
    token = os.urandom(8).hex()
    url = image_server.url(f"/unique/{token}.png?cc=public%2C+max-age%3D600")
    first = submit_url(api, url)
    assert first["cache"] == "miss" and image_server.requests_for(token) == 1
    before = metrics(api)

    again = submit_url(api, url)
    answer = api.get("/caption", params={"url": url})
    batch = batch_of(api, url, 3)
    content = [{"type": "image_url", "image_url": {"url": url}}]
    chat = api.post(
        "/openai/v1/chat/completions", json={"model": "any", "messages": [{"role": "user", "content": content}]}
    )

    assert (again["cache"], again["cached_from"], again["caption"]) == ("hit", first["id"], first["caption"])
    # Answered from the queue: it never ran, yet says when a worker took it, as its batch does.
    assert again["attempts"] == 0 and again["started_at"] is not None and batch["started_at"] is not None
    assert answer.status_code == 200 and answer.json() == first["caption"]
    assert batch["cache_hits"] == 3 and batch["counts"]["succeeded"] == 3
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == first["caption"]
    # One download in all: the server said the image stays fresh for ten minutes.
    assert image_server.requests_for(token) == 1
    after = metrics(api)
    fresh_hits = after["captionizer_cache_fresh_url_hits_total"] - before.get(
        "captionizer_cache_fresh_url_hits_total", 0
    )
    assert fresh_hits == 6


def test_the_size_bound_holds_under_a_stream_of_distinct_fresh_urls(
    api: httpx.Client, cache_stack: LocalStack, image_server: HostileServer, redis: Redis
) -> None:
    tokens = [os.urandom(8).hex() for _ in range(2 * _MAX_ENTRIES)]
    urls = [image_server.url(f"/unique/{token}.png?cc=max-age%3D600") for token in tokens]
    jobs = []
    for url in urls:
        response = api.post("/v1/jobs", json={"image_url": url})
        assert response.status_code == 202, response.text
        jobs.append(response.json()["id"])
    assert {final(api, job_id)["cache"] for job_id in jobs} == {"miss"}
    # Entries and their links together stay within the bound: a greedy stream of URLs evicts, never grows.
    assert redis.zcard(cache_stack.keys.cache_lru()) == _MAX_ENTRIES
    assert len(list(redis.scan_iter(match=cache_stack.keys.cache_entry("*")))) == _MAX_ENTRIES
    # 16 entries and 16 links written, 8 kept.
    assert metrics(api)["captionizer_cache_evictions_total"] == 3 * _MAX_ENTRIES


def test_a_url_whose_server_promises_nothing_is_downloaded_for_every_job(
    api: httpx.Client, image_server: HostileServer
) -> None:
    token = os.urandom(8).hex()
    for cache_control in ("", "?cc=no-cache%2C+max-age%3D600"):
        url = image_server.url(f"/unique/{token}.png{cache_control}")
        jobs = [submit_url(api, url) for _ in range(2)]
        assert jobs[1]["cache"] == "hit"  # by its bytes, downloaded again
    assert image_server.requests_for(token) == 4


def test_a_fresh_url_tells_another_tenant_nothing_and_keeps_its_secrets_out_of_the_cache(
    api: httpx.Client, image_server: HostileServer, redis: Redis
) -> None:
    token, secret = os.urandom(8).hex(), "sig-" + os.urandom(8).hex()
    url = image_server.url(f"/unique/{token}.png?cc=max-age%3D600&signature={secret}")
    theirs = submit_url(api, url, key=TENANT_A_KEY)
    mine = submit_url(api, url, key=TENANT_B_KEY)
    # B downloads and captions as if A had never sent the URL: no hit, no foreign job id, its own batch.
    assert image_server.requests_for(token) == 2
    assert (mine["cache"], mine["cached_from"]) == ("miss", None) and mine["timings"]["generate_s"] is not None
    assert theirs["id"] not in str(mine)
    # The URL (and the signature in its query) is hashed into the links' names, never stored in the cache.
    cache_keys = list(redis.scan_iter(match=f"{_PREFIX}:cache:*"))
    assert any(b":cache:e:u:" in name for name in cache_keys)
    for name in cache_keys:
        kind = redis.type(name)
        stored = redis.get(name) if kind == b"string" else str(redis.zrange(name, 0, -1) if kind == b"zset" else b"")
        assert secret.encode() not in name and secret not in str(stored)
