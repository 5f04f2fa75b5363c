"""A full Redis (``maxmemory`` with ``noeviction``) answers 503 ``queue_unavailable`` with Retry-After, never 500,
on every route, through uvicorn; once memory is freed the same processes serve again, with no restart.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from redis import Redis
from redis.exceptions import OutOfMemoryError

from scripts.processes import free_port
from scripts.stack import LocalStack

# Ballast written before Redis is capped, and the cap below what it then uses: Redis stays over
# its limit until the ballast goes, whatever it frees on its own (client buffers) meanwhile.
_BALLAST_CHUNKS = 32
_BALLAST_CHUNK = b"\x00" * 64 * 1024
_OVER_LIMIT_BYTES = 1024 * 1024
_URL_JOB = {"image_url": "https://example.com/a.png"}


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def _env(**extra: str) -> dict[str, str]:
    return {
        "CAPTIONIZER_ALLOW_ANONYMOUS": "true",
        "CAPTIONIZER_READY_REQUIRES_WORKER": "false",
        "CAPTIONIZER_CAPTION_WAIT_S": "0",
        "CAPTIONIZER_LOG_LEVEL": "INFO",
        **extra,
    }


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, LocalStack]]:
    """Redis and two APIs on it, no worker: one without a rate limit (every route reaches the store), one with."""
    logs = tmp_path_factory.mktemp("redis-full")
    # No rate limit on the open one, for reads (their own budget) as well as submissions.
    no_limits = _env(CAPTIONIZER_RATE_LIMIT_PER_MINUTE="0", CAPTIONIZER_RATE_LIMIT_READS_PER_MINUTE="0")
    open_api = LocalStack(logs / "open", env=no_limits, api_port=free_port())
    try:
        open_api.start_redis()
        metered = LocalStack(
            logs / "metered",
            env=_env(CAPTIONIZER_RATE_LIMIT_PER_MINUTE="100000", CAPTIONIZER_RATE_LIMIT_BURST="100000"),
            api_port=free_port(),
            redis_url=open_api.redis_url,
        )
        try:
            open_api.start_api()
            metered.start_api()
            yield open_api, metered
        finally:
            metered.stop()
    finally:
        open_api.stop()


def _fill(redis: Redis) -> None:
    """Make Redis full under noeviction: 2 MiB of ballast, then ``maxmemory`` 1 MiB below what it uses."""
    for index in range(_BALLAST_CHUNKS):
        redis.set(f"ballast:{index}", _BALLAST_CHUNK)
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", str(int(redis.info("memory")["used_memory"]) - _OVER_LIMIT_BYTES))
    with pytest.raises(OutOfMemoryError):
        redis.set("probe", b"x")


def _free(redis: Redis) -> None:
    redis.delete(*[f"ballast:{index}" for index in range(_BALLAST_CHUNKS)])


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "queue_unavailable"
    assert int(response.headers["retry-after"]) >= 1


def _no_tracebacks(stack: LocalStack) -> None:
    log = Path(stack.log_dir / "api.log").read_text(errors="replace")
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


def test_a_full_redis_is_503_on_every_route_and_recovers_when_memory_is_freed(
    stacks: tuple[LocalStack, LocalStack],
) -> None:
    open_api, metered = stacks
    redis = Redis.from_url(open_api.redis_url)
    with (
        httpx.Client(base_url=open_api.api_url, timeout=30) as api,
        httpx.Client(base_url=metered.api_url, timeout=30) as metered_api,
    ):
        before = api.post("/v1/jobs", json=_URL_JOB)
        assert before.status_code == 202
        job_url = before.json()["url"]
        _fill(redis)
        try:
            _assert_unavailable(api.post("/v1/jobs", json=_URL_JOB))
            _assert_unavailable(api.post("/v1/jobs", files={"file": ("a.png", _png(), "image/png")}))
            _assert_unavailable(api.post("/v1/jobs", json=_URL_JOB, headers={"Idempotency-Key": "full-1"}))
            _assert_unavailable(api.get("/caption", params={"url": "https://example.com/a.png"}))
            _assert_unavailable(api.post(f"{job_url}/cancel"))
            # Reads need no memory: they still answer, as the job is.
            assert api.get(job_url).json()["status"] == "queued"
            assert api.get("/readyz").status_code == 200
            assert "captionizer_redis_up 1.0" in api.get("/metrics").text
            # The rate limiter writes its bucket on every request: a full Redis stops it too.
            _assert_unavailable(metered_api.get(job_url))
            _assert_unavailable(metered_api.post("/v1/jobs", json=_URL_JOB))
        finally:
            _free(redis)
        assert api.post("/v1/jobs", json=_URL_JOB, headers={"Idempotency-Key": "full-1"}).status_code == 202
        assert api.post(f"{job_url}/cancel").json()["status"] == "canceled"
        assert metered_api.post("/v1/jobs", files={"file": ("a.png", _png(), "image/png")}).status_code == 202
    redis.close()
    _no_tracebacks(open_api)
    _no_tracebacks(metered)
