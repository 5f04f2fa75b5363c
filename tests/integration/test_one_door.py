"""One door, on the real stack: every door gives a hostile image the same outcome, batch webhooks are
signed with the key's own secret, inline images count on the upload share, a bad item fails alone.

A stack of this module's own (redis-server, the ``null``-model caption worker, the webhook worker,
uvicorn) with NO deployment-wide webhook secret, so only the key's own secret can sign. Every wait is
on state with a deadline.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from redis import Redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from api.http.auth import hash_key, owner_of
from scripts.stack import LocalStack
from shared.keys import Keys
from tests.integration.chaos import wait_until
from tests.integration.test_intake_e2e import WORKER_REFUSALS
from tests.integration.webhook_receiver import NEW_SECRET, Received, WebhookReceiver, running_receiver
from tests.servers import HostileServer, hostile_images
from tests.stack import TENANT_A_KEY, TENANT_B_KEY, standin_stack

_DEADLINE_S = 90
_PREFIX = "onedoor"
# The key's upload share: 25 % of 400 KB.
_UPLOAD_SHARE_BYTES = 100_000
_FINAL = ("succeeded", "failed", "canceled", "expired")


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    # Its own secret is none of the stack's: the tests verify each delivery with the key's secret themselves.
    with running_receiver(NEW_SECRET) as running:
        yield running


@pytest.fixture(scope="module")
def door_stack(
    tmp_path_factory: pytest.TempPathFactory, image_server: HostileServer, receiver: WebhookReceiver
) -> Iterator[LocalStack]:
    env = {
        "CAPTIONIZER_KEY_PREFIX": _PREFIX,
        "CAPTIONIZER_ALLOWED_PORTS": f"80,443,{image_server.port},{receiver.port}",
        "CAPTIONIZER_MAX_PENDING_UPLOAD_BYTES": str(4 * _UPLOAD_SHARE_BYTES),
        "CAPTIONIZER_OWNER_UPLOAD_SHARE": "0.25",
        "CAPTIONIZER_WEBHOOK_SECRETS": "",
        "CAPTIONIZER_CAPTION_WAIT_S": "60",
    }
    with standin_stack(tmp_path_factory.mktemp("one-door-logs"), image_server, env, webhooks=True) as stack:
        yield stack


@pytest.fixture
def api(door_stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=door_stack.api_url, timeout=90, headers=_as(TENANT_A_KEY)) as client:
        yield client


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _ended_batch(api: httpx.Client, batch_id: str, key: str = TENANT_A_KEY) -> dict[str, Any]:
    def read() -> dict[str, Any]:
        body: dict[str, Any] = api.get(f"/v1/batches/{batch_id}", headers=_as(key)).json()
        return body

    wait_until(lambda: read()["status"] in ("completed", "canceled"), timeout_s=_DEADLINE_S, what=read)
    return read()


def _results(api: httpx.Client, batch_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(f"/v1/batches/{batch_id}/results", params={"limit": 1000}).json()["items"]
    return items


def _ended_job(api: httpx.Client, job_id: str) -> dict[str, Any]:
    for _ in range(5):  # a few long-polls: the deadline is theirs, not a sleep
        job: dict[str, Any] = api.get(f"/v1/jobs/{job_id}", params={"wait": 60}).json()
        if job["status"] in _FINAL:
            return job
    raise AssertionError(f"job did not end: {job}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- every door, one outcome ------------------------------------------------------------------


def _through_job(api: httpx.Client, url: str) -> str:
    created = api.post("/v1/jobs", json={"image_url": url})
    assert created.status_code == 202, created.text
    job = _ended_job(api, created.json()["id"])
    return str(job["error"]["code"]) if job["status"] == "failed" else str(job["status"])


def _through_caption(api: httpx.Client, url: str) -> str:
    answer = api.get("/caption", params={"url": url})
    return "succeeded" if answer.status_code == 200 else str(answer.json()["code"])


def _through_batch_item(api: httpx.Client, url: str) -> str:
    created = api.post("/v1/batches", json={"items": [{"image_url": url}]})
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    _ended_batch(api, batch_id)
    [item] = _results(api, batch_id)
    return str(item["error"]["code"]) if item["status"] == "failed" else str(item["status"])


def _through_batch_append(api: httpx.Client, url: str) -> str:
    created = api.post("/v1/batches", json={"items": [{"image_url": url}], "more_items": True})
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    assert api.post(f"/v1/batches/{batch_id}/items", json={"items": [{"image_url": url}]}).status_code == 202
    _ended_batch(api, batch_id)
    item = _results(api, batch_id)[1]
    return str(item["error"]["code"]) if item["status"] == "failed" else str(item["status"])


_DOORS = {
    "job": _through_job,
    "caption": _through_caption,
    "batch_item": _through_batch_item,
    "batch_append": _through_batch_append,
}


def test_the_real_stack_has_a_route_for_every_door() -> None:
    from api.admission import Door

    assert set(_DOORS) == {str(door) for door in Door}


@pytest.mark.parametrize(("path", "code", "_upstream"), [("/image/shape.png", "succeeded", None), *WORKER_REFUSALS])
def test_a_hostile_image_gets_the_same_outcome_through_every_door(
    api: httpx.Client, image_server: HostileServer, path: str, code: str, _upstream: int | None
) -> None:
    url = image_server.url(path)
    assert {door: through(api, url) for door, through in _DOORS.items()} == dict.fromkeys(_DOORS, code)


# --- webhooks signed with the key's own secret --------------------------------------------------


def _secret_of(api: httpx.Client, key: str) -> str:
    answer = api.get("/v1/webhooks/secret", headers=_as(key))
    assert answer.status_code == 200, answer.text
    return str(answer.json()["key"])


def _about(receiver: WebhookReceiver, subject_id: str, event: str) -> list[Received]:
    return [r for r in receiver.received if r.headers.get("webhook-id") == f"msg_{subject_id}_{event}"]


def test_batch_webhooks_verify_with_the_keys_own_secret_and_no_deployment_secret(
    api: httpx.Client, image_server: HostileServer, receiver: WebhookReceiver
) -> None:
    secret_a, secret_b = _secret_of(api, TENANT_A_KEY), _secret_of(api, TENANT_B_KEY)
    items = [{"image_url": image_server.url("/image/shape.png"), "ref": f"r{i}"} for i in range(3)]
    body = {"items": items, "webhook_url": receiver.url, "webhook_item_events": True}
    created = api.post("/v1/batches", json=body)
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    _ended_batch(api, batch_id)
    receiver.wait_for(lambda: bool(_about(receiver, batch_id, "completed")), deadline_s=_DEADLINE_S)
    [delivery] = _about(receiver, batch_id, "completed")
    # Issue 22: this had no webhook-signature at all without deployment-wide secrets.
    event = Webhook(secret_a).verify(delivery.body, delivery.headers)
    assert (event["type"], event["data"]["id"], event["data"]["counts"]["succeeded"]) == (
        "batch.completed",
        batch_id,
        3,
    )
    with pytest.raises(WebhookVerificationError):
        Webhook(secret_b).verify(delivery.body, delivery.headers)
    # The items' own events, from the same builder, verify with the same secret.
    item_id = _results(api, batch_id)[0]["id"]
    receiver.wait_for(lambda: bool(_about(receiver, item_id, "succeeded")), deadline_s=_DEADLINE_S)
    [item_event] = _about(receiver, item_id, "succeeded")
    assert Webhook(secret_a).verify(item_event.body, item_event.headers)["data"]["ref"] == "r0"


# --- quotas and per-item outcomes -----------------------------------------------------------------


def _noise_png(side: int, seed: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(seed).randbytes(side * side * 3)).save(out, "PNG")
    return out.getvalue()


def test_inline_images_over_the_upload_share_get_429_and_nothing_is_stored(
    api: httpx.Client, door_stack: LocalStack
) -> None:
    images = [_noise_png(64, seed) for seed in range(11)]  # about 12 KB each, 135 KB against a 100 KB share
    assert sum(map(len, images)) > _UPLOAD_SHARE_BYTES
    redis = Redis.from_url(door_stack.redis_url)
    try:
        keys_before = set(redis.keys(f"{_PREFIX}:*"))
        refused = api.post(
            "/v1/batches",
            json={"items": [{"image_base64": _b64(image)} for image in images]},
            headers=_as(TENANT_B_KEY),
        )
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "owner_quota_exceeded" and int(refused.headers["retry-after"]) >= 1
        # Nothing stored: no batch, no item, no upload, and the key's counters did not move.
        assert set(redis.keys(f"{_PREFIX}:*")) - keys_before == set()
        owner, keys = owner_of(hash_key(TENANT_B_KEY)), Keys(_PREFIX)
        assert int(redis.hget(keys.owner_upload_bytes(), owner) or 0) == 0
        assert int(redis.get(keys.items_in_flight(owner)) or 0) == 0
    finally:
        redis.close()
    # Within the share, the same images are taken.
    accepted = api.post(
        "/v1/batches",
        json={"items": [{"image_base64": _b64(image)} for image in images[:5]]},
        headers=_as(TENANT_B_KEY),
    )
    assert accepted.status_code == 202, accepted.text


def test_one_corrupt_image_fails_alone_naming_its_index_and_ref(api: httpx.Client) -> None:
    shape = hostile_images()["shape.png"][0]
    ico = b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00\x01\x00\x20\x00" + b"\x00" * 64
    items = [{"image_base64": _b64(shape), "ref": f"photo-{i}.png"} for i in range(6)]
    items[3] = {"image_base64": _b64(ico), "ref": "icon.png"}
    created = api.post("/v1/batches", json={"items": items})
    assert created.status_code == 202, created.text
    ended = _ended_batch(api, created.json()["id"])
    assert (ended["counts"]["succeeded"], ended["counts"]["failed"]) == (5, 1)
    failed = [item for item in _results(api, ended["id"]) if item["status"] == "failed"]
    assert [(item["index"], item["ref"], item["error"]["code"]) for item in failed] == [(3, "icon.png", "not_an_image")]
