"""TaskQueue: the API publishes caption tasks by name into the caption queue, and a broker that cannot take
them is a 503 ``queue_unavailable``, never a hung request or a 500. Against a real redis-server.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from api.broker.publisher import TaskQueue
from shared.errors import QueueUnavailable
from shared.keys import CAPTION_TASK, WEBHOOK_TASK, Keys
from shared.settings import Settings

PREFIX = "captionizer-queue"


@pytest.fixture
def redis(redis_server_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_server_url)
    client.flushdb()
    yield client
    client.config_set("maxmemory", "0")
    client.flushdb()
    client.close()


def _queue(redis_url: str) -> TaskQueue:
    # The caption path's asyncio client is never used by these (they only call send_task).
    return TaskQueue(Settings(redis_url=redis_url, key_prefix=PREFIX), AsyncRedis.from_url(redis_url))


def _enqueue_caption(redis_url: str, job_id: str) -> None:
    """``enqueue_caption`` with the app's kind of asyncio client, closed after."""

    async def enqueue() -> None:
        client = AsyncRedis.from_url(redis_url, socket_connect_timeout=2)
        queue = TaskQueue(Settings(redis_url=redis_url, key_prefix=PREFIX), client)
        try:
            await queue.enqueue_caption(job_id)
        finally:
            queue.close()
            await client.aclose()

    asyncio.run(enqueue())


def _messages(redis: Redis, queue_name: str) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in redis.lrange(queue_name, 0, -1)]


def test_a_caption_task_is_published_by_name_with_the_job_id_as_task_id(redis: Redis, redis_server_url: str) -> None:
    _enqueue_caption(redis_server_url, "job_abc")
    [message] = _messages(redis, Keys(PREFIX).caption_queue())
    headers = message["headers"]
    assert isinstance(headers, dict)
    assert (headers["task"], headers["id"]) == (CAPTION_TASK, "job_abc")
    body = json.loads(base64.b64decode(str(message["body"])))
    assert body[0] == ["job_abc"]


def test_send_task_publishes_any_task_on_the_named_queue(redis: Redis, redis_server_url: str) -> None:
    queue = _queue(redis_server_url)
    try:
        queue.send_task(WEBHOOK_TASK, args=["job_abc", "succeeded"], queue=Keys(PREFIX).webhook_queue())
    finally:
        queue.close()
    [message] = _messages(redis, Keys(PREFIX).webhook_queue())
    assert message["headers"]["task"] == WEBHOOK_TASK  # type: ignore[index]


def test_an_unreachable_broker_is_queue_unavailable() -> None:
    # The publish retry policy gives up after two quick retries (pytest-timeout bounds the wait).
    with pytest.raises(QueueUnavailable):
        _enqueue_caption("redis://127.0.0.1:1/0", "job_abc")


def test_a_full_broker_is_queue_unavailable(redis: Redis, redis_server_url: str) -> None:
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", "1")
    try:
        with pytest.raises(QueueUnavailable):
            _enqueue_caption(redis_server_url, "job_abc")
    finally:
        redis.config_set("maxmemory", "0")
    assert redis.llen(Keys(PREFIX).caption_queue()) == 0
