"""/healthz, /readyz (Redis and a ready caption worker) and /metrics (what Redis knows, in Prometheus text)."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis as SyncRedis
from redis.asyncio import Redis as AsyncRedis

import api.app
from shared.heartbeats import WorkerHeartbeats
from shared.jobs.model import JobStatus
from shared.keys import Keys
from shared.settings import Settings
from tests.conftest import TEST_CLIENT_HOSTS
from tests.unit.api.conftest import ApiHarness


def beat(api_harness: ApiHarness, worker_id: str = "host:1", model_load_s: float = 2.5) -> None:
    info = {"worker_id": worker_id, "model": "embedded", "model_load_s": model_load_s}

    async def write() -> None:
        await WorkerHeartbeats(api_harness.redis(), Keys(api_harness.settings.key_prefix)).beat(worker_id, info, 15)

    asyncio.run(write())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_healthz_answers_while_the_process_serves(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_waits_for_a_worker_with_its_model_loaded(client: TestClient, api_harness: ApiHarness) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["code"] == "model_not_ready"
    beat(api_harness)
    assert client.get("/readyz").json() == {"status": "ok", "workers": 1}


def test_readyz_can_skip_the_worker_check_for_scale_to_zero(api_harness: ApiHarness) -> None:
    settings = api_harness.settings.model_copy(update={"ready_requires_worker": False})
    with TestClient(api.app.create_app(settings)) as client:
        assert client.get("/readyz").json() == {"status": "ok", "workers": 0}


def test_readyz_and_metrics_say_when_redis_is_away(api_settings: Settings) -> None:
    settings = api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(api.app.create_app(settings)) as client:
        assert client.get("/readyz").json()["code"] == "queue_unavailable"
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert samples(metrics.text)[("captionizer_redis_up", ())] == 0


def test_metrics_count_jobs_by_status_from_the_stores_transitions(client: TestClient, api_harness: ApiHarness) -> None:
    ids = [client.post("/v1/jobs", json={"image_url": "https://example.com/a.png"}).json()["id"] for _ in range(3)]

    async def work() -> None:
        store = api_harness.store()
        assert await store.transition(ids[0], JobStatus.RUNNING)
        assert await store.transition(ids[0], JobStatus.RUNNING)  # a redelivery
        assert await store.transition(ids[0], JobStatus.SUCCEEDED)
        assert await store.transition(ids[1], JobStatus.RUNNING)

    asyncio.run(work())
    found = samples(client.get("/metrics").text)
    assert found[("captionizer_jobs_active", (("status", "queued"),))] == 1
    assert found[("captionizer_jobs_active", (("status", "running"),))] == 1
    assert found[("captionizer_jobs_total", (("status", "queued"),))] == 3
    assert found[("captionizer_jobs_total", (("status", "running"),))] == 2
    assert found[("captionizer_jobs_total", (("status", "succeeded"),))] == 1
    assert found[("captionizer_jobs_total", (("status", "expired"),))] == 0
    assert found[("captionizer_job_redeliveries_total", ())] == 1


def test_metrics_report_queues_webhooks_and_workers(client: TestClient, api_harness: ApiHarness) -> None:
    keys = Keys(api_harness.settings.key_prefix)

    async def seed() -> None:
        redis = api_harness.redis()
        await redis.rpush(keys.caption_queue(), "a", "b")
        await redis.zadd(keys.webhook_schedule(), {"retry": 1.0})
        await api_harness.store().count_webhook_outcome("delivered")
        await api_harness.store().count_webhook_outcome("retrying")
        await api_harness.store().count_webhook_outcome("delivered")

    asyncio.run(seed())
    beat(api_harness, "host:1", 2.5)
    beat(api_harness, "host:2", 4.0)
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(response.text)
    assert found[("captionizer_redis_up", ())] == 1
    assert found[("captionizer_queue_depth", (("queue", "captions"),))] == 2
    assert found[("captionizer_queue_depth", (("queue", "webhooks"),))] == 0
    assert found[("captionizer_webhook_retries_scheduled", ())] == 1
    assert found[("captionizer_webhook_attempts_total", (("outcome", "delivered"),))] == 2
    assert found[("captionizer_webhook_attempts_total", (("outcome", "retrying"),))] == 1
    assert found[("captionizer_workers_ready", ())] == 2
    assert found[("captionizer_model_load_seconds_max", (("model", "embedded"),))] == 4.0
    assert "host:1" not in response.text


@pytest.fixture
def keyed_settings(api_settings: Settings) -> Settings:
    return api_settings.model_copy(update={"allow_anonymous": False, "api_key_hashes": ["0" * 64]})


def test_metrics_take_an_api_key(keyed_settings: Settings, api_harness: ApiHarness) -> None:
    with TestClient(api.app.create_app(keyed_settings)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/healthz").status_code == 200


def test_metrics_and_the_scaler_see_both_queues_and_the_jobs_in_hand(
    client: TestClient, api_harness: ApiHarness
) -> None:
    keys = Keys(api_harness.settings.key_prefix)
    assert client.get("/scaler").json() == {"outstanding": 0}

    async def seed() -> None:
        redis = api_harness.redis()
        await redis.rpush(keys.caption_queue(), "a")
        await redis.rpush(keys.bulk_queue(), "chunk-1", "chunk-2", "chunk-3")
        # Two workers hold jobs: one runs a single job, the other a chunk of four (the queues are empty of them).
        await redis.zadd(keys.job_holders(), {"w1": 1.0, "w2": 1.0})
        await redis.zadd(keys.held_jobs("w1"), {"job_a": 1.0})
        await redis.zadd(keys.held_jobs("w2"), {f"job_b{n}": 1.0 for n in range(4)})
        await redis.zadd(keys.webhook_waiting_owners(), {"greedy": 1.0})
        await redis.rpush(keys.bulk_ring(), "k1")
        await redis.rpush(keys.bulk_backlog("k1"), "chunk-4", "chunk-5")

    asyncio.run(seed())
    found = samples(client.get("/metrics").text)
    assert found[("captionizer_queue_depth", (("queue", "captions"),))] == 1
    assert found[("captionizer_queue_depth", (("queue", "captions-bulk"),))] == 3
    assert found[("captionizer_jobs_in_hand", ())] == 5
    assert found[("captionizer_queue_depth", (("queue", "bulk-backlogs"),))] == 2
    assert found[("captionizer_outstanding_work", ())] == 11
    assert found[("captionizer_webhook_keys_waiting", ())] == 1
    # KEDA's metrics-api trigger reads this: a bulk-only load, or work only in hand, is never zero.
    assert client.get("/scaler").json() == {"outstanding": 11}


def test_the_scaler_needs_no_key_and_says_when_redis_is_away(keyed_settings: Settings, api_settings: Settings) -> None:
    with TestClient(api.app.create_app(keyed_settings)) as client:
        assert client.get("/scaler").json() == {"outstanding": 0}
    with TestClient(
        api.app.create_app(api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    ) as client:
        response = client.get("/scaler")
        assert (response.status_code, response.json()["code"]) == (503, "queue_unavailable")


def test_readyz_and_metrics_never_scan_the_keyspace(redis_server_url: str) -> None:
    settings = Settings(
        redis_url=redis_server_url,
        allow_anonymous=True,
        anonymous_hosts=TEST_CLIENT_HOSTS,
        key_prefix="captionizer-scan",
    )
    client = SyncRedis.from_url(redis_server_url)
    try:
        client.flushdb()
        # A busy deployment's keyspace: a scan would walk all of it on every probe.
        client.mset({f"captionizer-scan:job:job_{index}": b"x" for index in range(20_000)})
        info = {"worker_id": "host:1", "model": "embedded", "model_load_s": 1.0}
        asyncio.run(_beat_on(redis_server_url, settings, info))
        client.config_resetstat()
        with TestClient(api.app.create_app(settings)) as api_client:
            assert api_client.get("/readyz").json() == {"status": "ok", "workers": 1}
            assert samples(api_client.get("/metrics").text)[("captionizer_workers_ready", ())] == 1
        stats = client.info("commandstats")
        assert "cmdstat_scan" not in stats and "cmdstat_keys" not in stats
        assert stats["cmdstat_zcount"]["calls"] == 1
    finally:
        client.flushdb()
        client.close()


async def _beat_on(url: str, settings: Settings, info: dict[str, object]) -> None:
    redis = AsyncRedis.from_url(url)
    try:
        await WorkerHeartbeats(redis, Keys(settings.key_prefix)).beat("host:1", info, ttl_s=60)
    finally:
        await redis.aclose()


def test_metrics_report_the_caption_caches_counters_and_entries(client: TestClient, api_harness: ApiHarness) -> None:
    keys = Keys(api_harness.settings.key_prefix)

    async def seed() -> None:
        redis = api_harness.redis()
        await redis.hset(keys.cache_stats(), mapping={"hits": 7, "misses": 3, "deduplicated": 2, "evictions": 5})
        await redis.zadd(keys.cache_lru(), {"d1": 1.0, "d2": 2.0})

    asyncio.run(seed())
    found = samples(client.get("/metrics").text)
    assert found[("captionizer_cache_lookups_total", (("result", "hit"),))] == 7
    assert found[("captionizer_cache_lookups_total", (("result", "miss"),))] == 3
    assert found[("captionizer_cache_deduplicated_total", ())] == 2
    assert found[("captionizer_cache_evictions_total", ())] == 5
    assert found[("captionizer_cache_entries", ())] == 2
