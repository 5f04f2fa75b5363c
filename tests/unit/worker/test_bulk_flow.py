"""BulkFlow: the worker stops consuming the bulk queue while it holds its share of chunks, and resumes."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from shared.keys import CAPTION_CHUNK_TASK, CAPTION_TASK
from worker.broker.bulk_flow import BulkFlow, max_chunks_held

BULK = "captions-bulk"


class FakeTaskConsumer:
    """kombu's Consumer, as far as BulkFlow uses it."""

    def __init__(self) -> None:
        self.queues = {BULK}
        self.switches: list[str] = []

    def consuming_from(self, queue: str) -> bool:
        return queue in self.queues

    def cancel_by_queue(self, queue: str) -> None:
        self.queues.discard(queue)
        self.switches.append("off")

    def add_queue(self, queue: Any) -> None:
        self.queues.add(queue.name)

    def consume(self) -> None:
        self.switches.append("on")


class FakeHub:
    """Runs callbacks when told to, as the consumer thread would on its next turn."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        self.ready.append(lambda: callback(*args))

    def run(self) -> None:
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


def _consumer() -> Any:
    queues = {BULK: SimpleNamespace(name=BULK)}
    return SimpleNamespace(
        task_consumer=FakeTaskConsumer(), hub=FakeHub(), app=SimpleNamespace(amqp=SimpleNamespace(queues=queues))
    )


def _request(task_id: str, name: str = CAPTION_CHUNK_TASK) -> Any:
    return SimpleNamespace(id=task_id, name=name)


def test_the_share_is_four_times_the_chunks_in_hand_with_a_quarter_of_the_threads_spare() -> None:
    assert max_chunks_held(items_in_hand=96, batch_size=32, pool_threads=64) == 12
    assert max_chunks_held(items_in_hand=100, batch_size=32, pool_threads=64) == 16
    assert max_chunks_held(items_in_hand=96, batch_size=32, pool_threads=8) == 6
    assert max_chunks_held(items_in_hand=96, batch_size=32, pool_threads=3) == 2
    assert max_chunks_held(items_in_hand=96, batch_size=32, pool_threads=1) == 1
    with pytest.raises(ValueError, match="at least one chunk"):
        BulkFlow(BULK, max_chunks=0)


def test_consuming_stops_at_the_share_and_resumes_when_a_chunk_ends() -> None:
    flow, consumer = BulkFlow(BULK, max_chunks=2), _consumer()
    flow.on_received(sender=consumer, request=_request("c1"))
    flow.on_received(sender=consumer, request=_request("single", CAPTION_TASK))  # single jobs never count
    assert consumer.task_consumer.consuming_from(BULK)
    flow.on_received(sender=consumer, request=_request("c2"))
    assert not consumer.task_consumer.consuming_from(BULK)
    flow.on_ended(task_id="single")
    flow.on_ended(task_id="c1")  # seen in a pool thread: applied on the consumer's next turn
    assert not consumer.task_consumer.consuming_from(BULK)
    consumer.hub.run()
    assert consumer.task_consumer.consuming_from(BULK)
    assert consumer.task_consumer.switches == ["off", "on"]
    assert flow.held == {"c2"}


def test_a_revoked_chunk_stops_counting_once() -> None:
    flow, consumer = BulkFlow(BULK, max_chunks=1), _consumer()
    flow.on_received(sender=consumer, request=_request("c1"))
    flow.on_ended(request=_request("c1"))
    flow.on_ended(task_id="c1")
    consumer.hub.run()
    assert flow.held == set() and consumer.task_consumer.switches == ["off", "on"]


def test_a_consumer_without_an_event_loop_is_left_alone() -> None:
    flow, consumer = BulkFlow(BULK, max_chunks=1), _consumer()
    consumer.hub = None
    flow.on_received(sender=consumer, request=_request("c1"))
    assert consumer.task_consumer.consuming_from(BULK) and flow.held == set()
