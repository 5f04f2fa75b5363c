"""Monitoring sees the real workers: `celery inspect` answers, and task events (what Flower shows) once it asks for them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from celery import Celery

from scripts.stack import REPO_ROOT, LocalStack
from tests.servers import HostileServer

#: Deadline of every wait here: far beyond what the stack needs, even on a loaded machine.
DEADLINE_S = 60


def inspect(stack: LocalStack, command: str) -> dict[str, Any]:
    """`celery -A worker inspect COMMAND --json` against the stack's broker, as a user would run it."""
    env = {**os.environ, "CAPTIONIZER_REDIS_URL": stack.redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "inspect", command, "--json", "--timeout", "10"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    replies: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return replies


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not seen within {DEADLINE_S} s"
        time.sleep(0.2)


def test_celery_inspect_ping_sees_the_caption_and_the_webhook_worker(stack: LocalStack) -> None:
    replies = inspect(stack, "ping")
    assert stack.worker is not None and stack.webhook_worker is not None
    names = set(replies)
    assert any(name.startswith(f"worker-{os.getpid()}@") for name in names), names
    assert any(name.startswith(f"webhooks-{os.getpid()}@") for name in names), names
    assert all(reply == {"ok": "pong"} for reply in replies.values())


def test_deliveries_never_reach_the_caption_worker(stack: LocalStack) -> None:
    queues = {
        name.split("@")[0].rsplit("-", 1)[0]: {queue["name"] for queue in consumed}
        for name, consumed in inspect(stack, "active_queues").items()
    }
    # A hanging webhook receiver can hold only the webhook worker's threads, never a caption thread.
    assert stack.keys.caption_queue() in queues["worker"] and stack.keys.webhook_queue() not in queues["worker"]
    assert queues["webhooks"] == {stack.keys.webhook_queue()}


def test_celery_inspect_active_shows_the_job_being_captioned(
    stack: LocalStack, api: httpx.Client, image_server: HostileServer
) -> None:
    # The image server holds the image 30 s, so the task is in hand while we look.
    job_id = api.post("/v1/jobs", json={"image_url": image_server.url("/delayed/30")}).json()["id"]
    found: list[dict[str, Any]] = []

    def active_has_the_job() -> bool:
        tasks = [task for worker in inspect(stack, "active").values() for task in worker]
        found[:] = [task for task in tasks if job_id in json.dumps(task.get("args"))]
        return bool(found)

    try:
        wait_until(active_has_the_job, f"job {job_id} in `inspect active`")
        assert found[0]["name"] == "captionizer.caption" and found[0]["acknowledged"] is False  # acks_late
    finally:
        api.post(f"/v1/jobs/{job_id}/cancel")


@pytest.fixture
def task_events(stack: LocalStack) -> Iterator[list[dict[str, Any]]]:
    """Every event the stack's processes send while the test runs, received as Flower receives them."""
    app = Celery(broker=stack.redis_url)
    events: list[dict[str, Any]] = []
    # Set once the queue is bound, or once the thread has failed: the waiter wakes either way.
    settled = threading.Event()
    failures: list[BaseException] = []
    receivers: list[Any] = []

    def capture() -> None:
        try:
            with app.connection() as connection:
                receiver = app.events.Receiver(connection, handlers={"*": events.append})
                # kombu's ConsumerMixin hook: the queue is bound, so no event sent from now on is missed.
                receiver.on_consume_ready = lambda *args, **kwargs: settled.set()
                receivers.append(receiver)
                # Returns once should_stop is set (it re-checks it at least every second).
                receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as error:  # reported by the test, not lost as a thread's unhandled exception
            failures.append(error)
        finally:
            settled.set()

    def failure() -> str:
        return "".join(traceback.format_exception(failures[0])) if failures else "no exception"

    thread = threading.Thread(target=capture, name="event-capture", daemon=True)
    thread.start()
    try:
        assert settled.wait(DEADLINE_S), "the event receiver neither started nor failed"
        assert not failures and thread.is_alive(), f"the event receiver failed: {failure()}"
        yield events
        assert not failures, f"the event receiver failed during the test: {failure()}"
    finally:
        for receiver in receivers:
            receiver.should_stop = True
        thread.join(DEADLINE_S)
        app.close()
    assert not thread.is_alive(), "the event receiver did not stop"


@pytest.fixture
def events_enabled(stack: LocalStack) -> Iterator[None]:
    """Task events turned on in the running workers as Flower does (its enable_events), and off again after."""
    app = Celery(broker=stack.redis_url)
    # The caption worker's node name (scripts.stack: -n worker-<pid>@%h).
    caption_worker = [f"worker-{os.getpid()}@{socket.gethostname()}"]
    try:
        # reply=True: returns once the worker has switched them on (task events are off by default).
        assert app.control.enable_events(destination=caption_worker, reply=True, timeout=DEADLINE_S, limit=1)
        yield
        app.control.disable_events(destination=caption_worker, reply=True, timeout=DEADLINE_S, limit=1)
    finally:
        app.close()


@pytest.mark.usefixtures("events_enabled")
def test_task_events_and_heartbeats_reach_a_monitor(
    task_events: list[dict[str, Any]], api: httpx.Client, image_server: HostileServer
) -> None:
    job_id = api.post("/v1/jobs", json={"image_url": image_server.url("/image/shape.png")}).json()["id"]
    assert api.get(f"/v1/jobs/{job_id}", params={"wait": DEADLINE_S}).json()["status"] == "succeeded"

    def kinds_for_the_job() -> set[str]:
        events = list(task_events)
        uuids = {event["uuid"] for event in events if job_id in str(event.get("args", ""))}
        return {event["type"] for event in events if event.get("uuid") in uuids}

    # Received, started and succeeded in the worker: Flower's task list (the API's task-sent needs
    # CAPTIONIZER_TASK_EVENTS=true, which this stack leaves at its default).
    wait_until(lambda: {"task-received", "task-started", "task-succeeded"} <= kinds_for_the_job(), "task events")
    # Heartbeats are how Flower knows a worker is online.
    wait_until(lambda: any(event["type"] == "worker-heartbeat" for event in list(task_events)), "a worker heartbeat")
