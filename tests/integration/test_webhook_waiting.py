"""The deferral schedule on the real stack: a key's deliveries beyond its share wait unqueued, at no cost per second.

Tenant A has 100 deliveries for a receiver that hangs every request; its share is 2 (``WEBHOOKS_PER_KEY``),
so 98 wait in A's waiting set. Tenant B's webhook goes out while A's wait. The number of deferrals is
bounded by the attempts made, not by the time that passes: checked after A's first two attempts have hung
for their whole timeout (5 s), when the old design (each deferral queued again a second later) would have
deferred each of the 98 five times over.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from redis import Redis

from scripts.chunks import ChunkSender
from scripts.processes import session_cpu_s
from scripts.stack import LocalStack
from shared.webhooks.delivery import WebhookDelivery, enqueue_delivery
from tests.integration.chaos import wait_until
from tests.integration.webhook_receiver import HANG, WebhookReceiver
from tests.servers import HostileServer
from tests.stack import TENANT_B_KEY, WEBHOOKS_PER_KEY

_GREEDY = "greedy-webhook-tenant"
_PENDING = 100
_DEADLINE_S = 90
_DEFERRED_LINE = "webhook deferred"


@pytest.fixture
def receiver(webhook_receiver: WebhookReceiver) -> Iterator[WebhookReceiver]:
    webhook_receiver.reset()
    yield webhook_receiver
    webhook_receiver.release_hangs()


def _deferrals(stack: LocalStack) -> int:
    return (stack.log_dir / "webhooks.log").read_text(errors="replace").count(_DEFERRED_LINE)


def _greedy_attempts(receiver: WebhookReceiver) -> list[str]:
    return [r.headers.get("webhook-id", "") for r in receiver.received if _GREEDY in r.headers.get("webhook-id", "")]


def test_a_key_s_deliveries_beyond_its_share_wait_unqueued_and_another_key_s_goes_out(
    stack: LocalStack, api: httpx.Client, redis: Redis, image_server: HostileServer, receiver: WebhookReceiver
) -> None:
    keys, sender = stack.keys, ChunkSender(stack.redis_url, stack.keys.prefix)
    assert stack.webhook_worker is not None
    webhook_worker = stack.webhook_worker.pid
    deferred_before = _deferrals(stack)
    try:
        for n in range(_PENDING):
            delivery = WebhookDelivery(
                webhook_id=f"msg_{_GREEDY}_{n}", job_id=f"job_{_GREEDY}_{n}", owner=_GREEDY,
                url=receiver.url_for(then=HANG), event="job.succeeded",
                body=json.dumps({"type": "job.succeeded", "data": {"id": f"job_{_GREEDY}_{n}"}}),
            )  # fmt: skip
            enqueue_delivery(sender.app.send_task, keys, delivery)
        waiting = keys.webhook_waiting(_GREEDY)
        wait_until(lambda: receiver.hanging == WEBHOOKS_PER_KEY, timeout_s=_DEADLINE_S, what="A's share hanging")
        wait_until(lambda: redis.zcard(waiting) == _PENDING - WEBHOOKS_PER_KEY, timeout_s=_DEADLINE_S, what="A waiting")
        cpu_before_s = sum(session_cpu_s(webhook_worker).values())

        # Tenant B's job and webhook: delivered while A's deliveries still wait.
        created = api.post(
            "/v1/jobs",
            json={"image_url": image_server.url("/image/shape.png"), "webhook_url": receiver.url_for()},
            headers={"Authorization": f"Bearer {TENANT_B_KEY}"},
        )
        assert created.status_code == 202, created.text
        b_job = created.json()["id"]
        receiver.wait_for(lambda: bool(receiver.for_job(b_job)), deadline_s=_DEADLINE_S)
        assert [r.answer for r in receiver.for_job(b_job)] == ["200"]
        assert len(set(_greedy_attempts(receiver))) < _PENDING and redis.zcard(waiting) > 0

        # A's first attempts hang for their whole timeout (5 s), then the two they wake go out.
        wait_until(lambda: len(_greedy_attempts(receiver)) >= 2 * WEBHOOKS_PER_KEY, timeout_s=_DEADLINE_S,
                   what="A's next attempts")  # fmt: skip
        attempts = len(_greedy_attempts(receiver))
        deferred = _deferrals(stack) - deferred_before
        cpu_s = sum(session_cpu_s(webhook_worker).values()) - cpu_before_s
        # Each task message is an attempt or a deferral; messages come from the 100 sent, one wake per attempt
        # that ends and one retry per attempt that fails. Re-queued each second, the 98 would pass 490 by now.
        assert _PENDING - WEBHOOKS_PER_KEY <= deferred <= _PENDING + 2 * attempts, (deferred, attempts, cpu_s)
        assert not redis.zcount(keys.webhook_schedule(), "-inf", "+inf") > 2 * attempts
    finally:
        receiver.release_hangs()
        sender.close()
    # Released (410 Gone from now on): every waiting delivery is attempted, each by a freed slot's wake.
    wait_until(lambda: redis.zcard(keys.webhook_waiting(_GREEDY)) == 0, timeout_s=_DEADLINE_S, what="A drained")
    wait_until(lambda: len(set(_greedy_attempts(receiver))) == _PENDING, timeout_s=_DEADLINE_S, what="A attempted")
