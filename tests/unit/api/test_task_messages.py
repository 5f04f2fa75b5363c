"""The caption task the API writes itself is the message, event and queue binding Celery's ``send_task`` writes.

Against a real redis-server: the same task sent both ways, and what lands in Redis compared field for field
(all but what is fresh on every send: the delivery tag, the event's clock and timestamp, the per-thread reply_to).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from api.broker.publisher import TaskQueue
from api.broker.task_messages import event_topic
from shared.keys import CAPTION_TASK, Keys
from shared.settings import Settings

PREFIX = "captionizer-messages"
QUEUE = Keys(PREFIX).caption_queue()


@pytest.fixture
def redis(redis_server_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_server_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _send_both_ways(redis_url: str, *, task_events: bool) -> None:
    """job_celery through Celery's send_task (what the API did before), then job_direct the API's way."""

    async def send() -> None:
        client = AsyncRedis.from_url(redis_url)
        queue = TaskQueue(Settings(redis_url=redis_url, key_prefix=PREFIX, task_events=task_events), client)
        try:
            queue.celery.send_task(CAPTION_TASK, args=["job_celery"], task_id="job_celery", queue=QUEUE)
            await queue.enqueue_caption("job_direct")
        finally:
            queue.close()
            await client.aclose()

    asyncio.run(send())


def _comparable(raw: bytes, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The envelope and its decoded body, job id replaced and fresh-per-send values dropped."""
    envelope = json.loads(raw.decode().replace(job_id, "JOB"))
    body = json.loads(base64.b64decode(envelope.pop("body")).decode().replace(job_id, "JOB"))
    properties = envelope["properties"]
    assert properties.pop("delivery_tag")
    properties.pop("reply_to", None)
    if isinstance(body, dict):
        assert isinstance(body.pop("clock"), int) and isinstance(body.pop("timestamp"), float)
    return envelope, body


def _events(pubsub: Any) -> list[bytes]:
    events = []
    while (message := pubsub.get_message(timeout=2)) is not None:
        if message["type"] == "message":
            events.append(message["data"])
    return events


def test_the_direct_caption_task_is_the_message_celery_sends(redis: Redis, redis_server_url: str) -> None:
    pubsub = redis.pubsub()
    pubsub.subscribe(event_topic(0))
    pubsub.get_message(timeout=2)
    _send_both_ways(redis_server_url, task_events=True)
    direct, by_celery = redis.lrange(QUEUE, 0, -1)  # LPUSH: the newest first
    assert _comparable(direct, "job_direct") == _comparable(by_celery, "job_celery")
    event_by_celery, direct_event = _events(pubsub)
    assert _comparable(direct_event, "job_direct") == _comparable(event_by_celery, "job_celery")
    pubsub.close()


def test_with_task_events_off_neither_way_publishes_a_task_sent_event(redis: Redis, redis_server_url: str) -> None:
    pubsub = redis.pubsub()
    pubsub.subscribe(event_topic(0))
    pubsub.get_message(timeout=2)
    _send_both_ways(redis_server_url, task_events=False)
    direct, by_celery = redis.lrange(QUEUE, 0, -1)
    assert _comparable(direct, "job_direct") == _comparable(by_celery, "job_celery")
    assert _events(pubsub) == []
    pubsub.close()


def test_the_queue_binding_is_the_one_celery_declares(redis: Redis, redis_server_url: str) -> None:
    # A prefix of its own: kombu's producer pools are process-wide and declare a queue once per process.
    settings = Settings(redis_url=redis_server_url, key_prefix="captionizer-bindings")
    queue_name = Keys(settings.key_prefix).caption_queue()

    async def send_direct() -> None:
        client = AsyncRedis.from_url(redis_server_url)
        queue = TaskQueue(settings, client)
        try:
            await queue.enqueue_caption("job_direct")
        finally:
            queue.close()
            await client.aclose()

    asyncio.run(send_direct())
    direct = {key: redis.smembers(key) for key in redis.keys("_kombu.*")}
    redis.flushdb()
    queue = TaskQueue(settings, AsyncRedis.from_url(redis_server_url))
    try:
        queue.celery.send_task(CAPTION_TASK, args=["job_celery"], task_id="job_celery", queue=queue_name)
    finally:
        queue.close()
    assert direct == {key: redis.smembers(key) for key in redis.keys("_kombu.*")}
    assert direct
