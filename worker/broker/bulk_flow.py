"""Bulk flow control: a caption worker holds only a few chunk messages, so pool threads stay free for single jobs.

Each pool thread holds one message (``-c`` of them, acknowledged late), and a chunk holds its thread
while it waits for room in the bulk images in hand (``worker.captioning.chunks``). Left alone, a worker under bulk
load takes a chunk into every free thread, and a single job posted then waits for one chunk to end
before any thread can take it. So the worker stops consuming the bulk queue while it holds
``max_chunks`` chunk messages (those in hand and a few waiting at the door, see :func:`max_chunks_held`),
and consumes it again as soon as one ends: the other threads are left to the caption queue, which the
worker reads first (``queue_order_strategy="priority"``), and the chunks it does not hold stay in Redis
for other workers. Nothing changes in what Celery guarantees: the held chunks are still acknowledged
late, and a chunk not taken is simply still in its queue.

The count is kept in Celery's consumer thread (the one that receives messages and owns the broker
channel): a chunk counts from ``task_received``, and stops counting once it has run
(``task_postrun``) or was revoked. Consuming is switched off there too, before the consumer asks Redis
for its next message; the end of a chunk, seen in a pool thread, is handed to the consumer thread
through its event loop's thread-safe ``call_soon`` (kombu's hub).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from shared.keys import CAPTION_CHUNK_TASK

logger = logging.getLogger(__name__)


def max_chunks_held(*, items_in_hand: int, batch_size: int, pool_threads: int) -> int:
    """Chunk messages a worker may hold: four times those that fill the images in hand, a quarter of the threads spare.

    Chunks in hand end together (a model batch mixes their images), and fetching the next ones takes
    the consumer thread a while on a busy machine: with only one chunk waiting at the door, the images
    in hand ran dry and bulk items/s fell by a third; with three times the chunks in hand waiting, they
    did not (bench/README.md, "Worker CPU": 450-460 bulk items/s against 630-665 with no limit, 809-1,070
    at twelve chunks).
    """
    in_hand_chunks = -(-items_in_hand // batch_size)  # chunks are sized to a model batch (shared.batches.model)
    return max(1, min(4 * in_hand_chunks, pool_threads - max(1, pool_threads // 4)))


class BulkFlow:
    """Stops and resumes the consumer's bulk queue by the chunk messages this worker holds."""

    def __init__(self, bulk_queue: str, *, max_chunks: int) -> None:
        if max_chunks < 1:
            raise ValueError("a worker must be able to hold at least one chunk")
        self.bulk_queue = bulk_queue
        self.max_chunks = max_chunks
        self.held: set[str] = set()  # chunk task ids; changed in the consumer thread only
        self._consumer: Any = None

    def connect(self) -> None:
        """Listen to Celery's task signals (in the worker process, until :meth:`disconnect`)."""
        signals.task_received.connect(self.on_received, weak=False)
        signals.task_postrun.connect(self.on_ended, weak=False)
        signals.task_revoked.connect(self.on_ended, weak=False)

    def disconnect(self) -> None:
        """Stop listening (worker shutdown)."""
        signals.task_received.disconnect(self.on_received)
        signals.task_postrun.disconnect(self.on_ended)
        signals.task_revoked.disconnect(self.on_ended)

    def on_received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        """A message arrived (consumer thread): count it if it is a chunk, and stop taking more when full."""
        if request is None or request.name != CAPTION_CHUNK_TASK:
            return
        if getattr(sender, "hub", None) is None:
            return  # no event loop in the consumer to hand chunk ends to: no flow control
        self._consumer = sender
        self.held.add(request.id)
        if len(self.held) >= self.max_chunks:
            self._set_consuming(False)

    def on_ended(self, sender: Any = None, task_id: str | None = None, request: Any = None, **_: Any) -> None:
        """A task ran or was revoked (any thread): uncount it in the consumer thread."""
        chunk_id = task_id or getattr(request, "id", None)
        consumer = self._consumer
        if chunk_id is None or consumer is None or chunk_id not in self.held:
            return
        consumer.hub.call_soon(self._release, chunk_id)

    def _release(self, chunk_id: str) -> None:
        self.held.discard(chunk_id)
        if len(self.held) < self.max_chunks:
            self._set_consuming(True)

    def _set_consuming(self, consuming: bool) -> None:
        """Start or stop consuming the bulk queue on the consumer's current channel (consumer thread)."""
        tasks = getattr(self._consumer, "task_consumer", None)
        if tasks is None or tasks.consuming_from(self.bulk_queue) == consuming:
            return
        if consuming:
            tasks.add_queue(self._consumer.app.amqp.queues[self.bulk_queue])
            tasks.consume()
        else:
            tasks.cancel_by_queue(self.bulk_queue)
        logger.debug("bulk queue", extra={"consuming": consuming, "chunks_held": len(self.held)})
