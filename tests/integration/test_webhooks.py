"""Webhooks against a real receiver that verifies signatures with standardwebhooks: retries, 410, hangs.

The first tests drive one attempt at a time through the real aiohttp session (with
the intake's connect-time SSRF checks) and the stack's real Redis, with time
injected, so the backoff schedule is asserted without sleeping. The last ones go
through the whole stack: API, caption worker and webhook worker subprocesses.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from redis.asyncio import Redis
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from scripts.run_stack import local_webhook_secret
from scripts.stack import LocalStack
from shared.jobs.model import Job, JobStatus, WebhookState
from shared.jobs.store import JobStore
from shared.keys import WEBHOOK_TASK, Keys
from shared.settings import Settings
from shared.webhooks.delivery import WebhookDelivery, build_delivery
from tests.fakes import scheduled_retries
from tests.integration.webhook_receiver import HANG, HOLD, NEW_SECRET, OLD_SECRET, WebhookReceiver
from tests.servers import HostileServer
from tests.stack import TENANT_A_KEY, TENANT_B_KEY, WEBHOOKS_PER_KEY, log_of
from worker.egress import make_egress_session
from worker.webhooks.deliverer import WebhookDeliverer
from worker.webhooks.schedule import RetrySchedule, move_due_retries

DELAYS_S = [5.0, 30.0, 120.0, 600.0]
T0 = 1_700_000_000.0
#: Key prefix of the in-process tests, apart from the stack's own keys.
RIG_PREFIX = "captionizer-webhook-rig"
WAIT_S = 60


@pytest.fixture
def receiver(webhook_receiver: WebhookReceiver) -> Iterator[WebhookReceiver]:
    webhook_receiver.reset()
    yield webhook_receiver
    webhook_receiver.release_hangs()


# --- one attempt at a time, time injected ------------------------------------------------


class Rig:
    """A deliverer on real Redis and the real session factory, with an injected clock and seeded jitter."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.keys = Keys(settings.key_prefix)
        self.store = JobStore(redis, self.keys, settings.job_ttl_s)
        self.schedule = RetrySchedule(redis, self.keys)
        self.now_s = T0
        self.sent: list[dict[str, Any]] = []
        self.deliverer = WebhookDeliverer(
            settings, self.store, self.schedule, clock=lambda: self.now_s, rng=random.Random(5)
        )

    def send_task(self, name: str, *, args: list[Any], queue: str, argsrepr: str | None = None) -> None:
        assert (name, queue) == (WEBHOOK_TASK, self.keys.webhook_queue())
        self.sent.append(args[0])

    async def new_job(self, url: str) -> WebhookDelivery:
        job = Job(id="job_rig", image_url="https://example.com/a.png", webhook_url=url)
        job = job.model_copy(update={"status": JobStatus.SUCCEEDED, "caption": "a red circle"})
        await self.store.create(job)
        return build_delivery(job, JobStatus.SUCCEEDED, datetime.now(UTC))

    async def next_retry(self) -> WebhookDelivery:
        """Move the clock to the scheduled retry and let the schedule queue it (not a moment earlier)."""
        [(_, due_s)] = await scheduled_retries(self.schedule)
        assert await move_due_retries(self.schedule, self.send_task, due_s - 0.5) == 0
        self.now_s = due_s
        assert await move_due_retries(self.schedule, self.send_task, self.now_s) == 1
        return WebhookDelivery.model_validate(self.sent.pop())

    async def record(self) -> WebhookState | None:
        job = await self.store.get("job_rig")
        assert job is not None
        return job.webhook


def run_with_rig(
    stack: LocalStack, receiver: WebhookReceiver, scenario: Callable[[Rig], Awaitable[None]], **overrides: Any
) -> None:
    values: dict[str, Any] = {
        "redis_url": stack.redis_url,
        "key_prefix": RIG_PREFIX,
        "allow_private_networks": True,
        "allowed_ports": [receiver.port],
        "webhook_secrets": [OLD_SECRET, NEW_SECRET],
        "webhook_retry_delays_s": DELAYS_S,
    }
    settings = Settings(**(values | overrides))

    async def main() -> None:
        redis = Redis.from_url(settings.redis_url)
        try:
            await scenario(Rig(settings, redis))
        finally:
            doomed = [key async for key in redis.scan_iter(match=f"{RIG_PREFIX}:*")]
            if doomed:
                await redis.delete(*doomed)
            await redis.aclose()

    asyncio.run(main())


def test_delivery_verifies_with_the_receivers_secret(stack: LocalStack, receiver: WebhookReceiver) -> None:
    async def scenario(rig: Rig) -> None:
        state = await rig.deliverer.deliver(await rig.new_job(receiver.url_for()))
        assert (state.status, state.attempts, state.last_status_code) == ("delivered", 1, 200)
        assert await rig.record() == state
        [request] = receiver.received
        assert request.payload is not None, "the signature did not verify"
        assert request.payload["type"] == "job.succeeded"
        assert request.payload["data"]["id"] == "job_rig" and request.payload["data"]["caption"] == "a red circle"
        assert request.headers["webhook-id"] == "msg_job_rig_succeeded"
        # Signed with the owner's own secret and both deployment-wide ones; the receiver knows only the newer one.
        assert len(request.headers["webhook-signature"].split(" ")) == 3

    run_with_rig(stack, receiver, scenario)


def test_failing_receiver_gets_retries_on_schedule_with_one_id(stack: LocalStack, receiver: WebhookReceiver) -> None:
    async def scenario(rig: Rig) -> None:
        delivery = await rig.new_job(receiver.url_for(500, 503, 429))
        waits_s = []
        for expected in (500, 503, 429):
            state = await rig.deliverer.deliver(delivery)
            assert (state.status, state.last_status_code) == ("retrying", expected)
            assert state.last_error == f"HTTP {expected}" and await rig.record() == state
            assert state.next_attempt_at is not None
            waits_s.append(state.next_attempt_at.timestamp() - rig.now_s)
            delivery = await rig.next_retry()
        state = await rig.deliverer.deliver(delivery)
        assert (state.status, state.attempts, state.last_status_code, state.last_error) == ("delivered", 4, 200, None)
        for wait_s, base_s in zip(waits_s, DELAYS_S, strict=False):
            assert 0.8 * base_s <= wait_s <= 1.2 * base_s
        assert [r.answer for r in receiver.received] == ["500", "503", "429", "200"]
        assert {r.headers["webhook-id"] for r in receiver.received} == {"msg_job_rig_succeeded"}
        assert len({r.body for r in receiver.received}) == 1
        assert all(r.payload is not None for r in receiver.received)

    run_with_rig(stack, receiver, scenario)


def test_receiver_that_keeps_failing_is_given_up(stack: LocalStack, receiver: WebhookReceiver) -> None:
    async def scenario(rig: Rig) -> None:
        delivery = await rig.new_job(receiver.url_for(then=500))
        for _ in DELAYS_S:
            assert (await rig.deliverer.deliver(delivery)).status == "retrying"
            delivery = await rig.next_retry()
        state = await rig.deliverer.deliver(delivery)
        assert (state.status, state.attempts, state.next_attempt_at) == ("failed", len(DELAYS_S) + 1, None)
        assert await rig.record() == state
        assert await scheduled_retries(rig.schedule) == []
        assert len(receiver.received) == len(DELAYS_S) + 1

    run_with_rig(stack, receiver, scenario)


def test_gone_stops_retrying(stack: LocalStack, receiver: WebhookReceiver) -> None:
    async def scenario(rig: Rig) -> None:
        state = await rig.deliverer.deliver(await rig.new_job(receiver.url_for(410)))
        assert (state.status, state.attempts, state.last_status_code) == ("gone", 1, 410)
        assert await scheduled_retries(rig.schedule) == []
        assert len(receiver.received) == 1

    run_with_rig(stack, receiver, scenario)


def test_receiver_hanging_past_the_timeout_is_retried(stack: LocalStack, receiver: WebhookReceiver) -> None:
    async def scenario(rig: Rig) -> None:
        started_s = time.monotonic()
        state = await rig.deliverer.deliver(await rig.new_job(receiver.url_for(HANG)))
        # The receiver hangs until the test ends; 30 s is the attempt's 0.5 s timeout plus room for a loaded machine.
        assert time.monotonic() - started_s < 30, "the attempt outlived its timeout"
        assert (state.status, state.last_status_code, state.last_error) == ("retrying", None, "timed out after 0.5 s")
        state = await rig.deliverer.deliver(await rig.next_retry())
        assert (state.status, state.attempts) == ("delivered", 2)

    run_with_rig(stack, receiver, scenario, webhook_timeout_s=0.5)


class RebindingDns(AbstractResolver):
    """Resolves every name to 127.0.0.1, like a name rebound to an internal address after submit."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": family, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("allow_private", [False, True])
def test_each_attempt_checks_where_the_name_resolves(
    stack: LocalStack, receiver: WebhookReceiver, allow_private: bool
) -> None:
    url = f"http://hooks.example.com:{receiver.port}/hook"

    async def scenario(rig: Rig) -> None:
        rig.deliverer.open_session = lambda settings: make_egress_session(
            settings, headers={}, timeout=aiohttp.ClientTimeout(total=5), dns=RebindingDns()
        )
        state = await rig.deliverer.deliver(await rig.new_job(url))
        if allow_private:  # the same lookup reaches the receiver when internal addresses are allowed
            assert state.status == "delivered" and len(receiver.received) == 1
        else:
            assert state.status == "failed" and (state.last_error or "").startswith("url_not_allowed")
            assert receiver.received == []

    run_with_rig(stack, receiver, scenario, allow_private_networks=allow_private)


def test_literal_internal_address_is_refused_at_delivery(stack: LocalStack, receiver: WebhookReceiver) -> None:
    # Accepted while private networks were allowed; refused once they are not.
    async def scenario(rig: Rig) -> None:
        state = await rig.deliverer.deliver(await rig.new_job(receiver.url_for()))
        assert state.status == "failed" and (state.last_error or "").startswith("url_not_allowed")
        assert receiver.received == []

    run_with_rig(stack, receiver, scenario, allow_private_networks=False)


# --- the whole stack ---------------------------------------------------------------------


def submit(api: httpx.Client, key: str | None = None, **body: object) -> str:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    response = api.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def wait_for_end(api: httpx.Client, job_id: str, key: str | None = None) -> dict[str, Any]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    response = api.get(f"/v1/jobs/{job_id}", params={"wait": WAIT_S}, headers=headers)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    assert JobStatus(job["status"]).is_final, job
    return job


def wait_for_webhook(
    api: httpx.Client,
    job_id: str,
    statuses: set[str],
    deadline_s: float = 30,
    key: str | None = None,
    event: str | None = None,
) -> dict[str, Any]:
    """Poll the job until its webhook record (of ``event``, if given) reaches one of ``statuses``."""
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    end = time.monotonic() + deadline_s
    while True:
        webhook = api.get(f"/v1/jobs/{job_id}", headers=headers).json()["webhook"]
        if webhook is not None and webhook["status"] in statuses and event in (None, webhook["event"]):
            return dict(webhook)
        assert time.monotonic() < end, f"webhook record still {webhook}"
        time.sleep(0.1)


def test_a_finished_job_is_delivered_signed(
    api: httpx.Client, image_server: HostileServer, receiver: WebhookReceiver, stack: LocalStack
) -> None:
    job_id = submit(
        api, image_url=image_server.url("/image/shape.png"), webhook_url=receiver.url_for(), webhook_events=["running"]
    )
    job = wait_for_end(api, job_id)
    assert job["status"] == "succeeded", log_of(stack, "worker")
    # The running event's record may show first: the final event takes it over once queued.
    record = wait_for_webhook(api, job_id, {"delivered"}, event="job.succeeded")
    assert (record["event"], record["attempts"], record["last_status_code"]) == ("job.succeeded", 1, 200)
    events = {r.payload["type"]: r.payload for r in receiver.for_job(job_id) if r.payload}
    assert set(events) == {"job.running", "job.succeeded"}, log_of(stack, "webhooks")
    assert events["job.succeeded"]["data"]["caption"] == job["caption"]
    assert events["job.running"]["data"]["status"] == "running"


def test_the_webhook_worker_retries_a_failing_receiver(
    api: httpx.Client, image_server: HostileServer, receiver: WebhookReceiver, stack: LocalStack
) -> None:
    # The first attempt gets 503; the retry is held by the receiver until the test has read the record.
    job_id = submit(api, image_url=image_server.url("/image/shape.png"), webhook_url=receiver.url_for(503, HOLD))
    wait_for_end(api, job_id)
    receiver.wait_for(lambda: len(receiver.for_job(job_id)) == 2, deadline_s=WAIT_S)
    # While the retry is in flight the record still carries the due time the worker scheduled it for.
    held = wait_for_webhook(api, job_id, {"delivering"})
    assert held["attempts"] == 1 and held["last_status_code"] == 503 and held["next_attempt_at"], held
    due_s = datetime.fromisoformat(held["next_attempt_at"]).timestamp()
    first, retry = receiver.for_job(job_id)
    # Due one delay (1 s, -20% jitter at most) after the failed attempt, and not sent before it was due.
    first_delay_s = float(stack.env["CAPTIONIZER_WEBHOOK_RETRY_DELAYS_S"].split(",")[0])
    assert due_s >= first.at_epoch_s + 0.8 * first_delay_s
    assert retry.at_epoch_s >= due_s
    receiver.release_hangs()
    record = wait_for_webhook(api, job_id, {"delivered", "failed"})
    assert (record["status"], record["attempts"], record["last_status_code"]) == ("delivered", 2, 200), log_of(
        stack, "webhooks"
    )
    assert [r.answer for r in receiver.for_job(job_id)] == ["503", HOLD]
    assert first.headers["webhook-id"] == retry.headers["webhook-id"]


def test_captions_keep_their_pace_while_a_receiver_hangs(
    api: httpx.Client, image_server: HostileServer, receiver: WebhookReceiver, stack: LocalStack
) -> None:
    image_url = image_server.url("/image/shape.png")

    def caption_in_waves(waves: int = 3, jobs_per_wave: int = 8, **extra: object) -> list[str]:
        # Waves, each submitted when the last has ended: the deliveries the first waves leave
        # hanging are in flight while the later waves are captioned.
        ids: list[str] = []
        for _ in range(waves):
            wave = [submit(api, image_url=image_url, **extra) for _ in range(jobs_per_wave)]
            assert all(wait_for_end(api, job_id)["status"] == "succeeded" for job_id in wave)
            ids += wave
        return ids

    # Every wave ends while earlier waves' deliveries hang. That deliveries never take caption threads is
    # structural, not a matter of speed: test_monitoring.py checks which queues each worker consumes.
    ids = caption_in_waves(webhook_url=receiver.url_for(then=HANG), webhook_events=["running"])
    # The receiver was holding deliveries of these jobs while they were captioned.
    held = [r for job_id in ids for r in receiver.for_job(job_id)]
    assert held and {r.answer for r in held} == {HANG}
    receiver.wait_for(lambda: receiver.hanging > 0, deadline_s=WAIT_S)
    receiver.release_hangs()
    # Drain: released deliveries end `gone` (or `failed` if their retries ran out first), so no held
    # webhook thread outlives this test.
    for job_id in ids:
        wait_for_webhook(api, job_id, {"gone", "failed"}, deadline_s=90)


def secret_of(api: httpx.Client, key: str | None) -> str:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    response = api.get("/v1/webhooks/secret", headers=headers)
    assert response.status_code == 200, response.text
    secret: str = response.json()["key"]
    return secret


def test_only_the_owners_secret_verifies_its_delivery(
    api: httpx.Client, image_server: HostileServer, receiver: WebhookReceiver
) -> None:
    secret_a, secret_b, local = secret_of(api, TENANT_A_KEY), secret_of(api, TENANT_B_KEY), secret_of(api, None)
    assert len({secret_a, secret_b, local}) == 3
    job_id = submit(api, TENANT_A_KEY, image_url=image_server.url("/image/shape.png"), webhook_url=receiver.url_for())
    receiver.wait_for(lambda: bool(receiver.for_job(job_id)))
    [delivery] = receiver.for_job(job_id)
    assert Webhook(secret_a).verify(delivery.body, delivery.headers)["data"]["id"] == job_id
    # Tenant B (or the local owner) holds nothing that verifies, so nothing that could forge, A's events.
    for other in (secret_b, local):
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(delivery.body, delivery.headers)


def test_a_key_with_a_slow_receiver_holds_only_its_share_and_others_are_delivered(
    api: httpx.Client, image_server: HostileServer, receiver: WebhookReceiver, stack: LocalStack
) -> None:
    image_url = image_server.url("/image/shape.png")
    # Six deliveries for A's receiver, which holds every request: more than the webhook worker's 4 threads.
    greedy = [submit(api, TENANT_A_KEY, image_url=image_url, webhook_url=receiver.url_for(then=HANG)) for _ in range(6)]
    receiver.wait_for(lambda: receiver.hanging == WEBHOOKS_PER_KEY)
    other = submit(api, TENANT_B_KEY, image_url=image_url, webhook_url=receiver.url_for())
    receiver.wait_for(lambda: bool(receiver.for_job(other)), deadline_s=30)
    assert [r.answer for r in receiver.for_job(other)] == ["200"], log_of(stack, "webhooks")
    # A's receiver never held more than A's share of the webhook threads at once.
    assert receiver.peak_hanging == WEBHOOKS_PER_KEY
    receiver.release_hangs()
    for job_id in greedy:
        wait_for_webhook(api, job_id, {"gone", "failed"}, deadline_s=90, key=TENANT_A_KEY)


def test_the_local_secret_make_run_prints_signs_anonymous_deliveries(
    api: httpx.Client, image_server: HostileServer, receiver: WebhookReceiver, stack: LocalStack
) -> None:
    local = local_webhook_secret(stack.api_url)
    assert local.startswith("whsec_") and local == secret_of(api, None)
    job_id = submit(api, image_url=image_server.url("/image/shape.png"), webhook_url=receiver.url_for())
    receiver.wait_for(lambda: bool(receiver.for_job(job_id)))
    [delivery] = receiver.for_job(job_id)
    assert Webhook(local).verify(delivery.body, delivery.headers)["data"]["id"] == job_id
