"""The API's side of the Celery queue: it sends tasks by name and never imports the worker.

Caption tasks, one per job, are written directly in Celery's own format (:mod:`api.broker.task_messages`) by
the app's asyncio Redis client; every other task (webhooks, batch chunks) goes through Celery's
``send_task``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery
from redis.asyncio import Redis

from api.broker.task_messages import event_topic, node_name, task_message, task_sent_event
from shared.broker.bulk_backlog import BulkBacklog
from shared.broker.config import celery_config
from shared.broker.routing import batch_items_route, single_job_route
from shared.jobs.store import REDIS_ERRORS, map_redis_errors
from shared.keys import Keys
from shared.settings import Settings

logger = logging.getLogger(__name__)


# kombu's Redis transport: a queue's bindings, and the separator of a binding's fields (Channel._queue_bind).
_BINDING_KEYS = ("_kombu.binding.{}", "_kombu.binding_permanent.{}")
_BINDING_SEP = "\x06\x16"
# KEYS[1] the queue (a list), KEYS[2] the task-sent events channel, KEYS[3] and KEYS[4] the queue's bindings.
# ARGV[1] the message, ARGV[2] the event ('' = none: task events are off), ARGV[3] the binding to declare
# ('' = declared already).
# One script: one reply to parse, and a Redis that refuses the task (full) publishes no event for it.
_PUBLISH_TASK_LUA = """
if ARGV[3] ~= '' then
  redis.call('SADD', KEYS[3], ARGV[3])
  redis.call('SADD', KEYS[4], ARGV[3])
end
redis.call('LPUSH', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('PUBLISH', KEYS[2], ARGV[2]) end
return 1
"""


class TaskQueue:
    """Publishes caption tasks (and, for ``shared.webhooks.delivery``, any task) by name.

    ``redis`` (the app's asyncio client, which its owner closes) carries the caption tasks.
    """

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.keys = Keys(settings.key_prefix)
        self.redis = redis
        self._event_topic = event_topic(int(redis.connection_pool.connection_kwargs.get("db", 0)))
        # kombu declares a queue (its bindings) on a connection's first publish; so do we, once per process.
        self._declared = False
        # As Celery's task_send_sent_event: the task-sent event only when task events are on (Flower).
        self._sends_events = settings.task_events
        self._publish = redis.register_script(_PUBLISH_TASK_LUA)
        self.backlog = BulkBacklog.for_settings(redis, self.keys, settings)
        # set_as_current=False: this client must not become the process's default app.
        self.celery = Celery("captionizer-api", set_as_current=False)
        self.celery.conf.update(celery_config(settings))
        # Fail fast when Redis is down: the client answers 503 rather than holding the request.
        self.celery.conf.update(
            task_publish_retry_policy={
                "max_retries": 2,
                "interval_start": 0,
                "interval_step": 0.2,
                "interval_max": 0.2,
            },
            broker_connection_timeout=2,
        )

    def send_task(self, name: str, *, args: list[Any], queue: str, argsrepr: str | None = None) -> object:
        """Celery's ``send_task`` (blocking); matches ``shared.webhooks.delivery.SendTask``."""
        # argsrepr: what Celery's log lines print in place of the arguments (no URLs, see shared.webhooks.delivery).
        return self.celery.send_task(name, args=args, queue=queue, argsrepr=argsrepr)

    async def enqueue_caption(self, job_id: str) -> None:
        """Queue the caption task of ``job_id`` and publish its ``task-sent`` event (if on), in one round trip.

        The task id is the job id, so broker-side traces name the job.

        Raises:
            QueueUnavailable: Redis cannot be reached, or is full.
        """
        route = single_job_route(self.keys, job_id)
        queue = route.queue
        # Per call, as Celery names the sender: a process forked after the app was built has its own pid.
        origin = node_name()
        message = task_message(route.task, job_id, route.args, queue, origin=origin, reply_to=self.celery.thread_oid)
        event = b""
        if self._sends_events:
            clock = self.celery.clock.forward()
            event = task_sent_event(route.task, job_id, route.args, queue, hostname=origin, clock=clock)
        binding = "" if self._declared else _BINDING_SEP.join([queue, "", queue])
        keys = [queue, self._event_topic, *(key.format(queue) for key in _BINDING_KEYS)]
        with map_redis_errors("the task queue (Redis)"):
            await self._publish(keys=keys, args=[message, event, binding])
        self._declared = True

    async def enqueue_item_messages(self, owner: str, job_ids: Sequence[str], items_per_message: int) -> list[str]:
        """Queue a batch's items, ``items_per_message`` job ids per task message, in order, in ``owner``'s backlog.

        The messages wait in the key's backlog and reach the bulk queue round-robin with other keys'
        (:mod:`shared.broker.bulk_backlog`); this feeds at once, so an idle service starts them now.
        Returns the ids whose message was not stored (all or none, one script): the caller fails them,
        so the batch still ends.
        """
        chunks = [list(job_ids[i : i + items_per_message]) for i in range(0, len(job_ids), items_per_message)]
        origin = node_name()
        routes = [batch_items_route(self.keys, chunk, owner) for chunk in chunks]
        messages = [
            task_message(
                route.task, str(uuid.uuid4()), route.args, route.queue, origin=origin, reply_to=self.celery.thread_oid
            )
            for route in routes
        ]
        try:
            await self.backlog.append(owner, messages)
        except REDIS_ERRORS:
            logger.warning("the task messages of batch items could not be stored", exc_info=True)
            return list(job_ids)
        try:
            await self.backlog.feed()
        except REDIS_ERRORS:
            # Stored: the workers feed them on their next chunk or heartbeat.
            logger.warning("feeding the bulk queue failed", exc_info=True)
        return []

    def close(self) -> None:
        """Release the broker connections."""
        self.celery.close()
