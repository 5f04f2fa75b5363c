"""Which job events become deliveries, and what dispatching records and queues."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import fakeredis.aioredis
import pytest

from shared.jobs.model import Job, JobPublic, JobStatus
from shared.jobs.store import JobStore
from shared.keys import WEBHOOK_TASK, Keys
from shared.webhooks.delivery import build_delivery, dispatch_webhook, is_final_event, wants_webhook

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_job(**fields: Any) -> Job:
    defaults: dict[str, Any] = {"id": "job_1", "image_url": "https://example.com/a.png"}
    return Job(**(defaults | fields))


@pytest.mark.parametrize(
    ("events", "status", "delivered"),
    [
        ([], JobStatus.SUCCEEDED, True),
        ([], JobStatus.FAILED, True),
        ([], JobStatus.CANCELED, True),
        ([], JobStatus.EXPIRED, True),
        ([], JobStatus.RUNNING, False),
        (["running"], JobStatus.RUNNING, True),
        (["running"], JobStatus.QUEUED, False),
    ],
)
def test_final_events_always_and_others_on_request(events: list[str], status: JobStatus, delivered: bool) -> None:
    job = make_job(webhook_url="https://hooks.example.com/in", webhook_events=events)
    assert wants_webhook(job, status) is delivered


def test_a_job_without_webhook_url_gets_no_delivery() -> None:
    assert not wants_webhook(make_job(), JobStatus.SUCCEEDED)


def test_the_body_is_the_public_job_under_data_and_the_id_is_stable() -> None:
    job = make_job(webhook_url="https://hooks.example.com/in", status=JobStatus.SUCCEEDED, caption="a cat")
    delivery = build_delivery(job, JobStatus.SUCCEEDED, NOW)
    body = json.loads(delivery.body)
    assert body["type"] == delivery.event == "job.succeeded"
    assert body["timestamp"] == NOW.isoformat()
    assert JobPublic.model_validate(body["data"]) == JobPublic.from_job(job)
    assert "owner" not in body["data"]
    # The same change reported twice (a redelivered task) is the same event to the receiver.
    assert build_delivery(job, JobStatus.SUCCEEDED, NOW).webhook_id == delivery.webhook_id
    assert build_delivery(job, JobStatus.RUNNING, NOW).webhook_id != delivery.webhook_id


def test_dispatch_marks_the_record_pending_and_queues_by_task_name() -> None:
    async def scenario() -> None:
        store = JobStore(fakeredis.aioredis.FakeRedis(), Keys("t"), ttl_s=600)
        job = make_job(webhook_url="https://hooks.example.com/in", status=JobStatus.FAILED)
        await store.create(job)
        sent: list[tuple[str, list[Any], str]] = []

        def send_task(name: str, *, args: list[Any], queue: str, argsrepr: str | None = None) -> None:
            sent.append((name, args, queue))
            # Celery's log lines print argsrepr, never the URLs in the argument.
            assert argsrepr is not None and "hooks.example.com" not in argsrepr

        delivery = await dispatch_webhook(store, send_task, job, JobStatus.FAILED, now=NOW)
        assert delivery is not None
        assert sent == [(WEBHOOK_TASK, [delivery.model_dump(mode="json")], "t-webhooks")]
        stored = await store.get(job.id)
        assert stored is not None and stored.webhook is not None
        assert (stored.webhook.status, stored.webhook.webhook_id) == ("pending", delivery.webhook_id)
        assert await dispatch_webhook(store, send_task, make_job(), JobStatus.FAILED) is None
        assert len(sent) == 1

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("event", "final"), [("job.succeeded", True), ("job.expired", True), ("job.running", False), ("other", False)]
)
def test_final_events_are_told_apart(event: str, final: bool) -> None:
    assert is_final_event(event) is final


def test_a_late_running_event_leaves_a_finished_jobs_record_alone() -> None:
    async def scenario() -> None:
        store = JobStore(fakeredis.aioredis.FakeRedis(), Keys("t"), ttl_s=600)
        job = make_job(webhook_url="https://hooks.example.com/in", webhook_events=["running"])
        await store.create(job.model_copy(update={"status": JobStatus.SUCCEEDED}))
        sent: list[Any] = []
        delivery = await dispatch_webhook(store, lambda name, **kw: sent.append(kw), job, JobStatus.RUNNING)
        assert delivery is not None and len(sent) == 1  # still delivered
        stored = await store.get(job.id)
        assert stored is not None and stored.webhook is None

    asyncio.run(scenario())
