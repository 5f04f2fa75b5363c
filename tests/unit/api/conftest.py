"""Fixtures for the API unit tests: the job API over fakeredis (a real redis-server: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis as FakeAsyncRedis
from fastapi import FastAPI
from fastapi.testclient import TestClient

import api.app
from api.http.auth import hash_key
from shared.jobs.store import JobStore
from shared.keys import Keys
from shared.settings import Settings
from tests.conftest import TEST_CLIENT_HOSTS
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


#: The ``make_api_settings`` fixture: :func:`build_api_settings`.
MakeApiSettings = Callable[..., Settings]


def build_api_settings(*, keys: Sequence[str] = (), **overrides: Any) -> Settings:
    """An API test's settings: no rate limit, the test key prefix, then ``overrides``.

    With ``keys`` the API accepts those API keys only; without, anonymous callers from the test clients.
    """
    values: dict[str, Any] = {"rate_limit_per_minute": 0, "key_prefix": "captionizer-test"}
    if keys:
        values["api_key_hashes"] = [hash_key(key) for key in keys]
    else:
        values |= {"allow_anonymous": True, "anonymous_hosts": TEST_CLIENT_HOSTS}
    return Settings(**(values | overrides))


@pytest.fixture
def make_api_settings() -> MakeApiSettings:
    """:func:`build_api_settings`, for a test module's own ``api_settings`` or a test that builds its app."""
    return build_api_settings


@pytest.fixture
def api_settings(make_api_settings: MakeApiSettings) -> Settings:
    """Anonymous access, no rate limit, small upload limits that tests can exceed cheaply."""
    return make_api_settings(
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
