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

from api.queue import TaskQueue
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
    return TaskQueue(Settings(redis_url=redis_url, key_prefix=PREFIX))


def _messages(redis: Redis, queue_name: str) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in redis.lrange(queue_name, 0, -1)]


def test_a_caption_task_is_published_by_name_with_the_job_id_as_task_id(redis: Redis, redis_server_url: str) -> None:
    queue = _queue(redis_server_url)
    try:
        asyncio.run(queue.enqueue_caption("job_abc"))
    finally:
        queue.close()
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
    queue = _queue("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(QueueUnavailable):
            asyncio.run(queue.enqueue_caption("job_abc"))
    finally:
        queue.close()


def test_a_full_broker_is_queue_unavailable(redis: Redis, redis_server_url: str) -> None:
    queue = _queue(redis_server_url)
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", "1")
    try:
        with pytest.raises(QueueUnavailable):
            asyncio.run(queue.enqueue_caption("job_abc"))
    finally:
        redis.config_set("maxmemory", "0")
        queue.close()
    assert redis.llen(Keys(PREFIX).caption_queue()) == 0
