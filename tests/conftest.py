"""Fixtures for every layer: a clean environment, explicit settings, markers from paths, a throwaway redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.settings import Settings

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

# Layers are named by folder; a test's marker comes from where it lives.
_LAYER_MARKERS = ("unit", "integration", "browser", "infra")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        layer = _layer_of(item)
        if layer:
            item.add_marker(getattr(pytest.mark, layer))
    # Browser tests run last, however paths are given: Playwright's sync API keeps an event
    # loop running in the main thread until the session ends, breaking later asyncio.run().
    items.sort(key=lambda item: _layer_of(item) == "browser")


def _layer_of(item: pytest.Item) -> str | None:
    parts = Path(str(item.fspath)).relative_to(TESTS_DIR).parts
    return parts[0] if parts and parts[0] in _LAYER_MARKERS else None


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Strip CAPTIONIZER_* so only the settings a test builds apply (httpx's clean_environ)."""
    for name in list(os.environ):
        if name.startswith("CAPTIONIZER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


#: Host names the in-process test clients send (TestClient's ``testserver``, the ``base_url`` of
#: httpx clients): an anonymous API answers only the names it is told it serves.
TEST_CLIENT_HOSTS = ["testserver", "test", "t"]


@pytest.fixture
def settings() -> Settings:
    """Settings for a test: anonymous access, private networks allowed, no real secrets."""
    return Settings(
        allow_anonymous=True,
        allow_private_networks=True,
        key_prefix="captionizer-test",
        anonymous_hosts=TEST_CLIENT_HOSTS,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {deadline_s} s")


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """A throwaway redis-server on a free port (no persistence), killed at the end of the session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, deadline_s=60)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def fresh_redis_url(redis_server_url: str) -> str:
    """The session's redis-server, emptied for this test."""
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server_url
