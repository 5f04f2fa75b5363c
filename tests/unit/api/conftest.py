"""Fixtures for the API unit tests: the job API over fakeredis (a real redis-server: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis as FakeAsyncRedis
from fastapi import FastAPI
from fastapi.testclient import TestClient

import api.app
from shared.jobs.store import JobStore
from shared.keys import Keys
from shared.settings import Settings
from tests.fakes import FakeQueue

# --- the job API over fakeredis (no broker, no worker) -------------------------------------


@dataclass
class ApiHarness:
    """The app under test, its fake Redis server and the jobs it queued."""

    app: FastAPI
    settings: Settings
    server: FakeServer
    queue: FakeQueue

    def redis(self) -> FakeAsyncRedis:
        """Another client of the same fake Redis (for the current event loop)."""
        return FakeAsyncRedis(server=self.server)

    def store(self) -> JobStore:
        """A job store on the same data, playing the worker's part."""
        return JobStore(self.redis(), Keys(self.settings.key_prefix), self.settings.job_ttl_s)


@pytest.fixture
def api_settings() -> Settings:
    """Anonymous access, no rate limit, small upload limits that tests can exceed cheaply."""
    return Settings(
        allow_anonymous=True,
        rate_limit_per_minute=0,
        key_prefix="captionizer-test",
        max_upload_bytes=64 * 1024,
        max_request_bytes=128 * 1024,
        max_prompt_chars=50,
        max_new_tokens_limit=40,
        caption_wait_s=2,
        max_wait_s=5,
    )


@pytest.fixture
def api_harness(api_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> ApiHarness:
    """``create_app(api_settings)`` with every Redis client on one fake server and a recording queue."""
    server = FakeServer()
    queue = FakeQueue(bulk_queue=Keys(api_settings.key_prefix).bulk_queue())
    redis_class = SimpleNamespace(from_url=lambda *args, **kwargs: FakeAsyncRedis(server=server))
    monkeypatch.setattr(api.app, "Redis", redis_class)
    monkeypatch.setattr(api.app, "TaskQueue", lambda settings, redis: queue)
    return ApiHarness(api.app.create_app(api_settings), api_settings, server, queue)


@pytest.fixture
def client(api_harness: ApiHarness) -> Iterator[TestClient]:
    """A TestClient with the app's lifespan running (the job-events listener included)."""
    with TestClient(api_harness.app) as test_client:
        yield test_client
