"""Fixtures the integration tests of the shared stack have in common."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from scripts.stack import LocalStack


@pytest.fixture
def redis(stack: LocalStack) -> Iterator[Redis]:
    """A client of the shared stack's redis-server, for reading what the API and workers stored."""
    client = Redis.from_url(stack.redis_url)
    try:
        yield client
    finally:
        client.close()
