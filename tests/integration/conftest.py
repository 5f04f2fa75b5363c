"""Fixtures the integration tests of the shared stack have in common."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from redis import Redis

from scripts.stack import LocalStack
from tests.servers import HostileServer
from tests.stack import standin_stack


@pytest.fixture
def redis(stack: LocalStack) -> Iterator[Redis]:
    """A client of the shared stack's redis-server, for reading what the API and workers stored."""
    client = Redis.from_url(stack.redis_url)
    try:
        yield client
    finally:
        client.close()


def own_stack(log_name: str, env: Mapping[str, str]) -> Any:
    """A module-scoped fixture: a stack of the test module's own (``tests.stack.standin_stack`` with ``env``).

    Assign it to the fixture's name (``fair_stack = own_stack("fair-bulk", {...})``); its logs go to a
    temporary folder named after ``log_name``.
    """

    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory, image_server: HostileServer) -> Iterator[LocalStack]:
        with standin_stack(tmp_path_factory.mktemp(f"{log_name}-logs"), image_server, env) as stack:
            yield stack

    return fixture
