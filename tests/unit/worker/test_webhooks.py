"""Webhook delivery: signatures, outcomes, the job's record and the backoff schedule (time injected)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import fakeredis.aioredis
import pytest
from celery.exceptions import Reject
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.errors import QueueUnavailable, UrlNotAllowed
from shared.jobs.model import Job, JobStatus, WebhookState
from shared.jobs.store import JobStore
from shared.keys import WEBHOOK_TASK, Keys
from shared.settings import Settings
from shared.webhooks.delivery import WebhookDelivery, build_delivery
from tests.fakes import scheduled_retries
from worker.webhooks import tasks as webhook_tasks
from worker.webhooks.deliverer import WebhookDeliverer, next_state, retry_delay_s
from worker.webhooks.requests import AttemptResult, sign_headers
from worker.webhooks.schedule import RetrySchedule, move_due_retries

SECRET_OLD = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_NEW = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
DELAYS_S = [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0]
T0 = 1_700_000_000.0

Answer = int | BaseException


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now_s: float = T0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


class FakeResponse:
    def __init__(self, status: int) -> None:
        self.status = status
        self.ok = status < 400


class FakeSession:
    """Answers POSTs from a script: a status code, or an exception to raise."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []

    async def __aenter__(self) -> FakeSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    @asynccontextmanager
    async def post(self, url: str, **kwargs: Any) -> Any:
        self.requests.append({"url": url, **kwargs})
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        yield FakeResponse(answer)


@pytest.fixture
def webhook_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_secrets": [SECRET_OLD, SECRET_NEW], "webhook_retry_delays_s": DELAYS_S})


def make_job(**fields: Any) -> Job:
    defaults: dict[str, Any] = {
        "id": "job_hook",
        "image_url": "https://example.com/a.png",
        "webhook_url": "https://hooks.example.com/in",
        "status": JobStatus.SUCCEEDED,
        "caption": "a red circle",
    }
    return Job(**(defaults | fields))


class Harness:
    """A deliverer over fakeredis with a scripted receiver, an injected clock and seeded jitter."""

    def __init__(self, settings: Settings, answers: list[Answer]) -> None:
        self.redis = fakeredis.aioredis.FakeRedis()
        self.keys = Keys(settings.key_prefix)
        self.store = JobStore(self.redis, self.keys, ttl_s=86_400)
        self.schedule = RetrySchedule(self.redis, self.keys)
        self.session = FakeSession(answers)
        self.clock = FakeClock()
        self.sent: list[dict[str, Any]] = []
        self.deliverer = WebhookDeliverer(
            settings, self.store, self.schedule, lambda _s: self.session, self.clock, random.Random(7)
        )

    def send_task(self, name: str, *, args: list[Any], queue: str, argsrepr: str | None = None) -> None:
        assert name == WEBHOOK_TASK
        self.sent.append(args[0])

    async def webhook_record(self, job_id: str = "job_hook") -> WebhookState | None:
        job = await self.store.get(job_id)
        assert job is not None
        return job.webhook


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def test_each_secret_signs_and_each_signature_verifies() -> None:
    now = datetime.now(UTC)
    headers = sign_headers([SECRET_OLD, SECRET_NEW], "msg_1", now, '{"a":1}')
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET_OLD, SECRET_NEW):
        assert Webhook(secret).verify('{"a":1}', headers) == {"a": 1}


def test_signature_fails_for_another_secret_or_body() -> None:
    headers = sign_headers([SECRET_OLD], "msg_1", datetime.now(UTC), '{"a":1}')
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_NEW).verify('{"a":1}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_OLD).verify('{"a":2}', headers)


@pytest.mark.parametrize("attempt", range(1, len(DELAYS_S) + 1))
def test_retry_delay_is_the_setting_with_bounded_jitter(attempt: int) -> None:
    delay = retry_delay_s(attempt, DELAYS_S, random.Random(attempt))
    assert delay is not None
    assert 0.8 * DELAYS_S[attempt - 1] <= delay <= 1.2 * DELAYS_S[attempt - 1]


def test_no_retry_after_the_last_delay() -> None:
    assert retry_delay_s(len(DELAYS_S) + 1, DELAYS_S, random.Random(0)) is None


@pytest.mark.parametrize(
    ("result", "retry_in_s", "status"),
    [
        (AttemptResult(status_code=200), 5.0, "delivered"),
        (AttemptResult(status_code=204), None, "delivered"),
        (AttemptResult(status_code=410, error="HTTP 410"), 5.0, "gone"),
        (AttemptResult(status_code=500, error="HTTP 500"), 5.0, "retrying"),
        (AttemptResult(status_code=301, error="HTTP 301"), 5.0, "retrying"),
        (AttemptResult(status_code=404, error="HTTP 404"), 5.0, "retrying"),
        (AttemptResult(error="timed out after 10 s"), 5.0, "retrying"),
        (AttemptResult(status_code=503, error="HTTP 503"), None, "failed"),
        (AttemptResult(error="url_not_allowed: private", refused=True), 5.0, "failed"),
    ],
)
def test_attempt_outcome_decides_the_record(result: AttemptResult, retry_in_s: float | None, status: str) -> None:
    delivery = WebhookDelivery(webhook_id="msg_1", job_id="j", url="https://x", event="job.succeeded", body="{}")
    state = next_state(delivery, result, retry_in_s, datetime.fromtimestamp(T0, UTC))
    assert state.status == status
    assert state.attempts == 1 and state.webhook_id == "msg_1"
    assert (state.next_attempt_at is not None) == (status == "retrying")


def test_delivered_attempt_is_signed_and_recorded(webhook_settings: Settings) -> None:
    async def scenario() -> None:
        h = Harness(webhook_settings, [200])
        job = make_job()
        await h.store.create(job)
        delivery = build_delivery(job, JobStatus.SUCCEEDED, datetime.now(UTC))
        state = await h.deliverer.deliver(delivery)
        assert state.status == "delivered"
        assert await h.webhook_record() == state
        assert state.delivered_at == datetime.fromtimestamp(T0, UTC)
        [request] = h.session.requests
        assert request["allow_redirects"] is False
        assert request["timeout"].total == webhook_settings.webhook_timeout_s
        payload = Webhook(SECRET_NEW).verify(request["data"].decode(), request["headers"])
        assert payload["type"] == "job.succeeded" and payload["data"]["caption"] == "a red circle"
        assert await scheduled_retries(h.schedule) == []

    run(scenario)


def test_failures_follow_the_backoff_schedule_then_give_up(webhook_settings: Settings) -> None:
    async def scenario() -> None:
        h = Harness(webhook_settings, [500])
        job = make_job()
        await h.store.create(job)
        delivery = build_delivery(job, JobStatus.SUCCEEDED, datetime.now(UTC))
        waits_s: list[float] = []
        for attempt in range(1, len(DELAYS_S) + 2):
            assert delivery.attempt == attempt
            state = await h.deliverer.deliver(delivery)
            assert state.attempts == attempt and state.last_status_code == 500 and state.last_error == "HTTP 500"
            if state.status == "failed":
                break
            assert state.status == "retrying"
            [(scheduled, due_s)] = await scheduled_retries(h.schedule)
            assert state.next_attempt_at == datetime.fromtimestamp(due_s, UTC)
            waits_s.append(due_s - h.clock.now_s)
            # Not due a second early; due exactly on time.
            assert await move_due_retries(h.schedule, h.send_task, due_s - 1) == 0
            h.clock.now_s = due_s
            assert await move_due_retries(h.schedule, h.send_task, h.clock.now_s) == 1
            delivery = WebhookDelivery.model_validate(h.sent.pop())
            assert delivery == scheduled
        assert state.status == "failed" and state.attempts == len(DELAYS_S) + 1
        assert await h.webhook_record() == state
        assert await scheduled_retries(h.schedule) == []
        for wait_s, base_s in zip(waits_s, DELAYS_S, strict=True):
            assert 0.8 * base_s <= wait_s <= 1.2 * base_s
        ids = {request["headers"]["webhook-id"] for request in h.session.requests}
        assert ids == {"msg_job_hook_succeeded"} and len(h.session.requests) == len(DELAYS_S) + 1

    run(scenario)


def test_gone_stops_after_one_attempt(webhook_settings: Settings) -> None:
    async def scenario() -> None:
        h = Harness(webhook_settings, [410])
        job = make_job()
        await h.store.create(job)
        state = await h.deliverer.deliver(build_delivery(job, JobStatus.SUCCEEDED, datetime.now(UTC)))
        assert state.status == "gone" and state.attempts == 1 and state.last_status_code == 410
        assert await scheduled_retries(h.schedule) == []

    run(scenario)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (TimeoutError(), "timed out after 10 s"),
        (UrlNotAllowed("address 10.0.0.1 is private"), "url_not_allowed: address 10.0.0.1 is private"),
    ],
)
def test_network_trouble_is_recorded(webhook_settings: Settings, answer: BaseException, error: str) -> None:
    async def scenario() -> None:
        h = Harness(webhook_settings, [answer])
        job = make_job()
        await h.store.create(job)
        state = await h.deliverer.deliver(build_delivery(job, JobStatus.SUCCEEDED, datetime.now(UTC)))
        assert state.last_error == error and state.last_status_code is None
        # A timeout may pass; a refusal by the SSRF checks would only be refused again.
        assert state.status == ("retrying" if isinstance(answer, TimeoutError) else "failed")

    run(scenario)


def test_url_refused_at_delivery_is_never_posted(webhook_settings: Settings) -> None:
    async def scenario() -> None:
        h = Harness(webhook_settings, [200])
        job = make_job(webhook_url="file:///etc/passwd")
        await h.store.create(job)
        state = await h.deliverer.deliver(build_delivery(job, JobStatus.SUCCEEDED, datetime.now(UTC)))
        assert state.status == "failed" and state.last_error is not None
        assert state.last_error.startswith("url_not_allowed")
        assert h.session.requests == []

    run(scenario)


def test_older_event_leaves_the_newer_events_record_alone(webhook_settings: Settings) -> None:
    async def scenario() -> None:
        h = Harness(webhook_settings, [500])
        job = make_job(webhook_events=["running"])
        newer = WebhookState(status="delivered", event="job.succeeded", webhook_id="msg_job_hook_succeeded")
        await h.store.create(job.model_copy(update={"webhook": newer}))
        state = await h.deliverer.deliver(build_delivery(job, JobStatus.RUNNING, datetime.now(UTC)))
        assert state.status == "retrying"
        assert await h.webhook_record() == newer
        assert len(await scheduled_retries(h.schedule)) == 1

    run(scenario)


def test_final_event_takes_the_record_from_a_running_delivery(webhook_settings: Settings) -> None:
    async def scenario() -> None:
        h = Harness(webhook_settings, [200])
        job = make_job(webhook_events=["running"])
        # The running event's delivery wrote last, after the final event was dispatched.
        running = WebhookState(status="retrying", event="job.running", webhook_id="msg_job_hook_running", attempts=1)
        await h.store.create(job.model_copy(update={"webhook": running}))
        state = await h.deliverer.deliver(build_delivery(job, JobStatus.SUCCEEDED, datetime.now(UTC)))
        assert (state.status, state.event, state.attempts) == ("delivered", "job.succeeded", 1)
        assert await h.webhook_record() == state

    run(scenario)


def test_expired_job_is_still_delivered(webhook_settings: Settings) -> None:
    async def scenario() -> None:
        h = Harness(webhook_settings, [200])
        state = await h.deliverer.deliver(build_delivery(make_job(), JobStatus.SUCCEEDED, datetime.now(UTC)))
        assert state.status == "delivered" and len(h.session.requests) == 1
        assert await h.store.get("job_hook") is None

    run(scenario)


def test_redis_trouble_puts_the_attempt_back_on_the_queue(
    webhook_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    class StoreDown:
        async def deliver(self, delivery: WebhookDelivery) -> WebhookState:
            raise QueueUnavailable("the job store (Redis) cannot be reached")

    delivery = build_delivery(make_job(), JobStatus.SUCCEEDED, datetime.now(UTC))
    with asyncio.Runner() as runner:
        monkeypatch.setattr(webhook_tasks, "_deliverer_for", lambda _settings, _send_task: (runner, StoreDown()))
        with pytest.raises(Reject) as rejected:
            webhook_tasks.deliver_webhook(webhook_settings, delivery.model_dump(mode="json"))
    assert rejected.value.requeue is True


# --- per-owner secrets and each key's share of deliveries --------------------------------------


def test_each_owner_signs_with_its_own_secret_and_no_other_verifies(settings: Settings) -> None:
    async def scenario() -> None:
        h = Harness(settings, [200])
        job = make_job(owner="tenant-a")
        await h.store.create(job)
        await h.deliverer.deliver(build_delivery(job, JobStatus.SUCCEEDED, datetime.now(UTC)))
        [request] = h.session.requests
        body, headers = request["data"].decode(), request["headers"]
        own, other = await h.deliverer.secrets.current("tenant-a"), await h.deliverer.secrets.current("tenant-b")
        assert Webhook(own).verify(body, headers)["data"]["id"] == job.id
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(body, headers)

    run(scenario)


def test_after_a_rotation_both_secrets_sign_and_the_extra_ones_too(webhook_settings: Settings) -> None:
    async def scenario() -> None:
        h = Harness(webhook_settings, [200])
        old = await h.deliverer.secrets.current("tenant-a")
        new = await h.deliverer.secrets.rotate("tenant-a")
        job = make_job(owner="tenant-a")
        await h.store.create(job)
        await h.deliverer.deliver(build_delivery(job, JobStatus.SUCCEEDED, datetime.now(UTC)))
        [request] = h.session.requests
        assert len(request["headers"]["webhook-signature"].split(" ")) == 4
        for secret in (old, new, SECRET_OLD, SECRET_NEW):
            Webhook(secret).verify(request["data"].decode(), request["headers"])

    run(scenario)


def test_the_attempt_that_frees_a_slot_queues_the_oldest_waiting_delivery_at_once(settings: Settings) -> None:
    async def scenario() -> None:
        h = Harness(settings.model_copy(update={"webhook_max_concurrent_per_key": 1}), [200, 200])
        h.deliverer.send_task = h.send_task
        jobs = [make_job(id=f"job_{n}", owner="tenant-a") for n in range(3)]
        for job in jobs:
            await h.store.create(job)
        first, *waiting = [build_delivery(job, JobStatus.SUCCEEDED, datetime.now(UTC)) for job in jobs]
        hanging = first.model_copy(update={"webhook_id": "msg_hanging"})
        assert await h.deliverer.slots.take_or_wait(hanging, "hanging", h.clock())
        for delivery in waiting:
            assert await h.deliverer.deliver(delivery) is None
        await h.deliverer._release("tenant-a", "hanging")
        # The oldest waiting one is on the webhook queue, off the schedule; the other still waits, unqueued.
        assert [WebhookDelivery.model_validate(sent).webhook_id for sent in h.sent] == [waiting[0].webhook_id]
        assert await scheduled_retries(h.schedule) == []
        assert await h.redis.zcard(h.keys.webhook_waiting("tenant-a")) == 1
        state = await h.deliverer.deliver(waiting[0])
        assert state is not None and state.status == "delivered"
        # Its attempt freed the slot again: the last one is queued in turn.
        assert [WebhookDelivery.model_validate(sent).webhook_id for sent in h.sent][-1] == waiting[1].webhook_id
        assert await h.redis.zcard(h.keys.webhook_waiting("tenant-a")) == 0

    run(scenario)


def test_a_key_holding_its_share_is_deferred_unattempted_and_others_go_out(settings: Settings) -> None:
    async def scenario() -> None:
        h = Harness(settings.model_copy(update={"webhook_max_concurrent_per_key": 1}), [200])
        greedy, other = make_job(id="job_greedy", owner="tenant-a"), make_job(id="job_other", owner="tenant-b")
        for job in (greedy, other):
            await h.store.create(job)
        # tenant-a's one slot is held by a delivery hanging on its slow receiver.
        held_back = build_delivery(greedy, JobStatus.SUCCEEDED, datetime.now(UTC))
        hanging = held_back.model_copy(update={"webhook_id": "msg_hanging"})
        assert await h.deliverer.slots.take_or_wait(hanging, "hanging", h.clock())
        assert await h.deliverer.deliver(held_back) is None
        assert h.session.requests == []
        # It waits for the slot, off the schedule: nothing re-queues it while the slow one hangs.
        assert await scheduled_retries(h.schedule) == []
        assert await h.redis.zcard(h.keys.webhook_waiting("tenant-a")) == 1
        assert (await h.webhook_record("job_greedy")) is None  # not attempted, so not recorded
        state = await h.deliverer.deliver(build_delivery(other, JobStatus.SUCCEEDED, datetime.now(UTC)))
        assert state is not None and state.status == "delivered"
        # Once the slow one ends, the deferred delivery goes out on its next turn.
        assert await h.deliverer.slots.release("tenant-a", "hanging", h.clock()) == [held_back]
        assert await scheduled_retries(h.schedule) == [(held_back, T0)]
        state = await h.deliverer.deliver(held_back)
        assert state is not None and state.status == "delivered"
        assert await h.redis.zcard(h.keys.webhook_slots("tenant-a")) == 0

    run(scenario)


def test_the_slot_is_given_back_when_the_attempt_raises(settings: Settings) -> None:
    async def scenario() -> None:
        h = Harness(settings.model_copy(update={"webhook_max_concurrent_per_key": 1}), [200])
        job = make_job(owner="tenant-a")
        await h.store.create(job)
        h.deliverer.open_session = lambda _s: (_ for _ in ()).throw(RuntimeError("boom"))  # type: ignore[assignment]
        with pytest.raises(RuntimeError):
            await h.deliverer.deliver(build_delivery(job, JobStatus.SUCCEEDED, datetime.now(UTC)))
        assert await h.redis.zcard(h.keys.webhook_slots("tenant-a")) == 0

    run(scenario)


def test_a_running_attempt_that_ends_after_the_final_event_took_the_record_leaves_it(
    webhook_settings: Settings,
) -> None:
    async def scenario() -> None:
        h = Harness(webhook_settings, [200])
        job = make_job(webhook_events=["running"])
        await h.store.create(job)
        final = WebhookState(status="pending", event="job.succeeded", webhook_id="msg_job_hook_succeeded")
        post = h.session.post

        @asynccontextmanager
        async def post_while_the_job_ends(url: str, **kwargs: Any) -> Any:
            # The job ends during the running event's attempt, and its final event claims the record.
            await h.store.update(job.id, webhook=final)
            async with post(url, **kwargs) as response:
                yield response

        h.session.post = post_while_the_job_ends  # type: ignore[method-assign]
        state = await h.deliverer.deliver(build_delivery(job, JobStatus.RUNNING, datetime.now(UTC)))
        assert state is not None and state.status == "delivered"
        assert await h.webhook_record() == final

    run(scenario)
