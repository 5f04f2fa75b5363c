"""The caption task's Celery message and its ``task-sent`` event, written as ``send_task`` writes them.

``Celery.send_task`` cost more API CPU per job than everything else in a submission: a thread hop (kombu
blocks), the producer pool, the connection's retry wrapper, routing, then two Redis writes. The
caption task is always one shape (one positional argument, the job id, which is also the task id), so
the API writes the same two things itself, in one round trip of its asyncio Redis client (with this
module and the API's other changes of that session, the API's CPU per single job fell from 5.7-6.2 to
2.8 ms, and per ``POST /v1/jobs`` in process from 2,256-2,833 to 742-750 µs: bench/README.md, "The API's
share of a single job"):

- the task, in Celery's message protocol 2 (docs.celeryq.dev, "Message Protocol": headers, properties,
  and a body of ``[args, kwargs, embed]``), in kombu's Redis envelope (JSON with the body in base64),
  LPUSHed on the queue's list, as kombu's Redis transport does for priority 0;
- the ``task-sent`` event that Celery publishes when ``task_send_sent_event`` is on (setting ``task_events``; Flower reads
  it): the event dict in the same envelope, PUBLISHed on kombu's fanout topic ``/{db}.celeryev/task.sent``.

tests/unit/api/test_task_messages.py compares both with what ``send_task`` writes to a real Redis,
field for field, so a Celery or kombu upgrade that changes either fails there, not in production.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from typing import Any

from celery.utils.nodenames import anon_nodename
from celery.utils.time import utcoffset

#: kombu's fanout exchange of Celery events, and the routing key of this one.
EVENT_EXCHANGE = "celeryev"
TASK_SENT_ROUTING_KEY = "task.sent"
# Celery's embed part of a task body: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def event_topic(db: int) -> str:
    """kombu's pub/sub channel of ``task-sent`` events (``keyprefix_fanout`` + exchange + routing key)."""
    return f"/{db}.{EVENT_EXCHANGE}/{TASK_SENT_ROUTING_KEY}"


def _envelope(body: Any, headers: dict[str, Any], properties: dict[str, Any]) -> bytes:
    """kombu's Redis envelope: the JSON body base64-encoded, a fresh delivery tag (``Channel.basic_publish``)."""
    encoded = base64.b64encode(json.dumps(body).encode()).decode()
    properties = {**properties, "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}
    message = {
        "body": encoded,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": properties,
    }
    return json.dumps(message).encode()


def task_message(task: str, task_id: str, args: list[Any], queue: str, *, origin: str, reply_to: str) -> bytes:
    """The message ``send_task(task, args=args, task_id=task_id, queue=queue)`` LPUSHes on ``queue``."""
    argsrepr = repr(args)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": argsrepr,
        "kwargsrepr": "{}",
        "origin": origin,
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    properties = {
        "correlation_id": task_id,
        "reply_to": reply_to,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
    }
    return _envelope([args, {}, _EMBED], headers, properties)


def task_sent_event(task: str, task_id: str, args: list[str], queue: str, *, hostname: str, clock: int) -> bytes:
    """The ``task-sent`` event Celery's event dispatcher publishes for that message (``clock``: the app's)."""
    event = {
        "hostname": hostname,
        "utcoffset": utcoffset(),
        "pid": os.getpid(),
        "clock": clock,
        "uuid": task_id,
        "root_id": task_id,
        "parent_id": None,
        "name": task,
        "args": repr(args),
        "kwargs": "{}",
        "retries": 0,
        "eta": None,
        "expires": None,
        "queue": queue,
        "exchange": "",
        "routing_key": queue,
        "timestamp": time.time(),
        "type": "task-sent",
    }
    properties = {
        "delivery_mode": 1,
        "delivery_info": {"exchange": EVENT_EXCHANGE, "routing_key": TASK_SENT_ROUTING_KEY},
    }
    return _envelope(event, {"hostname": hostname}, properties)


def node_name() -> str:
    """Celery's name for a process that is not a worker (``gen<pid>@<host>``): messages' ``origin``."""
    name: str = anon_nodename()
    return name
