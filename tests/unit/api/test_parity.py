"""Parity of the doors: every guard of POST /v1/jobs gives the same outcome through every :class:`Door`.

Each door has a driver that sends one image (and its options) the way a client of that door does and
reads back one outcome: ``accepted`` or the error code, whether the door answers it as a problem (a
single job, a whole batch refused) or as the item's own failure (a batch item refused alone). A case
states its expected outcome once, and every door that can carry the case must give exactly it.

A new member of :class:`Door` fails :func:`test_every_door_has_a_driver` until it has a driver here,
and then every case below runs through it. The same table runs on the real stack in
tests/integration/test_one_door.py. Over fakeredis (Lua included), no worker.
"""

from __future__ import annotations

import base64
import io
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.admission import Door
from api.http.auth import hash_key, owner_of
from shared.intake.model_limits import BERT_WORDPIECE, ModelLimits
from shared.keys import WEBHOOK_TASK
from shared.settings import Settings
from tests.unit.api.conftest import ApiHarness, MakeApiSettings
from tests.unit.api.test_prompt_limit import publish

KEY_A = "cap_parity-owner-a-0123456789abcdefghijklmnopqrst"
KEY_B = "cap_parity-owner-b-0123456789abcdefghijklmnopqrst"
GOOD_URL = "https://images.example.com/cat.png"
WEBHOOK_URL = "https://hooks.example.com/captions"
ACCEPTED = "accepted"


def png_base64(side: int, noise: bool = False) -> str:
    out = io.BytesIO()
    if noise:  # seeded noise does not compress: about side * side * 3 bytes
        Image.frombytes("RGB", (side, side), random.Random(side).randbytes(side * side * 3)).save(out, "PNG")
    else:
        Image.new("RGB", (side, side), (20, 200, 30)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


# An ICO file saved as .png: the folder upload of issue 22.
_ICO = b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00\x01\x00\x20\x00" + b"\x00" * 64


@pytest.fixture
def api_settings(make_api_settings: MakeApiSettings) -> Settings:
    """Two keys; shares small enough to reach in a few requests: 3 queued jobs, 4 items in flight, 10 KB uploads."""
    return make_api_settings(
        keys=[KEY_A, KEY_B],
        key_prefix="captionizer-parity",
        max_upload_bytes=16 * 1024,
        max_request_bytes=256 * 1024,
        max_prompt_chars=50,
        max_new_tokens_limit=40,
        max_queue_depth=12,
        owner_queue_share=0.25,
        max_pending_upload_bytes=40_000,
        owner_upload_share=0.25,
        max_items_in_flight=4,
        caption_wait_s=0,
        # No worker here: an admitted chat completion answers wait_timeout at once, naming its job.
        openai_wait_s=0.01,
    )


@dataclass
class Case:
    """One image and its options, as a client would send them through any door."""

    image_url: str | None = GOOD_URL
    image_base64: str | None = None
    prompt: str | None = None
    max_new_tokens: int | None = None
    webhook_url: str | None = None

    def item(self) -> dict[str, Any]:
        return {"image_url": self.image_url} if self.image_base64 is None else {"image_base64": self.image_base64}

    @property
    def needs_options(self) -> bool:
        return self.prompt is not None or self.max_new_tokens is not None or self.webhook_url is not None


@dataclass
class Outcome:
    code: str
    job_id: str | None = None
    batch_id: str | None = None


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _problem(response: Any) -> Outcome:
    return Outcome(response.json()["code"])


def _options(case: Case) -> dict[str, Any]:
    options = {"prompt": case.prompt, "max_new_tokens": case.max_new_tokens, "webhook_url": case.webhook_url}
    return {name: value for name, value in options.items() if value is not None}


@dataclass
class Driver:
    """Sends one case through its door and reads back its outcome."""

    send: Callable[[TestClient, str, Case], Outcome]
    #: Doors without options (GET /caption takes a URL only) skip cases that need them.
    takes_options: bool = True
    takes_uploads: bool = True
    #: The OpenAI facade's doors have no webhooks (OpenAI's API has none for these routes).
    takes_webhooks: bool = True
    prepared: dict[str, str] = field(default_factory=dict)


def _send_job(client: TestClient, key: str, case: Case) -> Outcome:
    response = client.post("/v1/jobs", json={**case.item(), **_options(case)}, headers=auth(key))
    return Outcome(ACCEPTED, job_id=response.json()["id"]) if response.status_code == 202 else _problem(response)


def _send_caption(client: TestClient, key: str, case: Case) -> Outcome:
    assert case.image_url is not None
    response = client.get("/caption", params={"url": case.image_url}, headers=auth(key))
    body = response.json()
    # No worker here: an admitted job is still queued when caption_wait_s (0) runs out.
    if response.status_code == 504 and body["code"] == "wait_timeout":
        return Outcome(ACCEPTED, job_id=body["job_id"])
    return Outcome(body["code"])


def _item_outcome(client: TestClient, key: str, batch_id: str, index: int) -> Outcome:
    page = client.get(f"/v1/batches/{batch_id}/results", params={"cursor": str(index), "limit": 1}, headers=auth(key))
    [item] = page.json()["items"]
    code = item["error"]["code"] if item["status"] == "failed" else ACCEPTED
    return Outcome(code, job_id=item["id"], batch_id=batch_id)


def _send_batch_item(client: TestClient, key: str, case: Case) -> Outcome:
    body = {"items": [case.item()], **_options(case), "webhook_item_events": case.webhook_url is not None}
    response = client.post("/v1/batches", json=body, headers=auth(key))
    if response.status_code != 202:
        return _problem(response)
    return _item_outcome(client, key, response.json()["id"], 0)


def _send_batch_append(client: TestClient, key: str, case: Case) -> Outcome:
    # The open batch carries the shared options (they are the batch's); the case's image is the appended item.
    body = {"items": [{"image_url": GOOD_URL}], **_options(case), "webhook_item_events": case.webhook_url is not None}
    opened = client.post("/v1/batches", json={**body, "more_items": True}, headers=auth(key))
    if opened.status_code != 202:
        return _problem(opened)
    batch_id = opened.json()["id"]
    appended = client.post(f"/v1/batches/{batch_id}/items", json={"items": [case.item()]}, headers=auth(key))
    if appended.status_code != 202:
        return _problem(appended)
    return _item_outcome(client, key, batch_id, 1)


def _chat_body(case: Case) -> dict[str, Any]:
    url = case.image_url if case.image_base64 is None else f"data:image/png;base64,{case.image_base64}"
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}}]
    if case.prompt is not None:
        content.insert(0, {"type": "text", "text": case.prompt})
    tokens = {"max_tokens": case.max_new_tokens} if case.max_new_tokens is not None else {}
    return {"model": "any", "messages": [{"role": "user", "content": content}], **tokens}


def _openai_error(response: Any) -> Outcome:
    error = response.json()["error"]
    return Outcome(error["code"], job_id=error.get("job_id"))


def _send_openai_chat(client: TestClient, key: str, case: Case) -> Outcome:
    response = client.post("/openai/v1/chat/completions", json=_chat_body(case), headers=auth(key))
    outcome = _openai_error(response)
    # No worker here: an admitted job is still queued when openai_wait_s runs out.
    return Outcome(ACCEPTED, job_id=outcome.job_id) if outcome.code == "wait_timeout" else outcome


def _send_openai_batch(client: TestClient, key: str, case: Case) -> Outcome:
    line = {"custom_id": "only", "method": "POST", "url": "/v1/chat/completions", "body": _chat_body(case)}
    files = {"file": ("in.jsonl", json.dumps(line).encode(), "application/jsonl")}
    uploaded = client.post("/openai/v1/files", files=files, data={"purpose": "batch"}, headers=auth(key))
    assert uploaded.status_code == 200, uploaded.text
    body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    created = client.post("/openai/v1/batches", json=body, headers=auth(key))
    if created.status_code != 200:
        return _openai_error(created)
    # The facade's batch is a native batch: its one item's outcome reads the same way.
    return _item_outcome(client, key, created.json()["id"], 0)


DRIVERS: dict[Door, Driver] = {
    Door.JOB: Driver(_send_job),
    Door.CAPTION: Driver(_send_caption, takes_options=False, takes_uploads=False, takes_webhooks=False),
    Door.BATCH_ITEM: Driver(_send_batch_item),
    Door.BATCH_APPEND: Driver(_send_batch_append),
    Door.OPENAI_CHAT: Driver(_send_openai_chat, takes_webhooks=False),
    Door.OPENAI_BATCH: Driver(_send_openai_batch, takes_webhooks=False),
}


def test_every_door_has_a_driver() -> None:
    # A door added to the enum without a driver here has never been run through the guards below.
    assert set(DRIVERS) == set(Door)


def _applies(driver: Driver, case: Case) -> bool:
    if case.webhook_url is not None and not driver.takes_webhooks:
        return False
    return (driver.takes_options or not case.needs_options) and (driver.takes_uploads or case.image_base64 is None)


#: Every hostile URL class of the suite, every hostile upload class, the prompt and option limits.
GUARDS: dict[str, tuple[Case, str]] = {
    "good-url": (Case(), ACCEPTED),
    "good-inline": (Case(image_url=None, image_base64=png_base64(8)), ACCEPTED),
    "metadata-ip": (Case(image_url="http://169.254.169.254/latest/meta-data/iam"), "url_not_allowed"),
    "metadata-ipv6-mapped": (Case(image_url="http://[::ffff:169.254.169.254]/"), "url_not_allowed"),
    "loopback": (Case(image_url="http://127.0.0.1:6379/"), "url_not_allowed"),
    "private-network": (Case(image_url="http://10.0.0.7/a.png"), "url_not_allowed"),
    "decimal-ip": (Case(image_url="http://2130706433/a.png"), "url_not_allowed"),
    "file-scheme": (Case(image_url="file:///etc/passwd"), "url_not_allowed"),
    "ftp-scheme": (Case(image_url="ftp://images.example.com/a.png"), "url_not_allowed"),
    "port-not-allowed": (Case(image_url="https://images.example.com:6379/a.png"), "url_not_allowed"),
    "not-an-image": (Case(image_url=None, image_base64=base64.b64encode(b"GIF? no: text").decode()), "not_an_image"),
    "ico-as-png": (Case(image_url=None, image_base64=base64.b64encode(_ICO).decode()), "not_an_image"),
    "over-upload-limit": (Case(image_url=None, image_base64=png_base64(80, noise=True)), "upload_too_large"),
    "prompt-over-chars": (Case(prompt="x" * 51), "invalid_request"),
    "prompt-over-model-tokens": (Case(prompt=" ".join(["a"] * 11)), "prompt_too_long"),
    "max-new-tokens-over-limit": (Case(max_new_tokens=41), "invalid_request"),
    "webhook-to-metadata": (Case(webhook_url="http://169.254.169.254/hook"), "url_not_allowed"),
}


#: Every guard at every door that can carry its input (GET /caption has no webhook, options or upload;
#: the facade no webhook). A Door with no driver fails here, at collection, until it is wired.
APPLICABLE = [(door, name) for door in Door for name in GUARDS if _applies(DRIVERS[door], GUARDS[name][0])]


@pytest.mark.parametrize(("door", "name"), APPLICABLE)
def test_each_guard_gives_the_same_outcome_through_every_door(
    client: TestClient, api_harness: ApiHarness, door: Door, name: str
) -> None:
    case, expected = GUARDS[name]
    driver = DRIVERS[door]
    publish(api_harness, ModelLimits(model="embedded", max_prompt_tokens=10, prompt_tokenizer=BERT_WORDPIECE))
    assert driver.send(client, KEY_A, case).code == expected


#: What a key over its queue quota gets at each door: single jobs count on the queue share, a batch's
#: items on the key's items in flight (a queue of its own, the bulk queue). Both are 429 with Retry-After.
QUEUE_QUOTA = {
    Door.JOB: "owner_quota_exceeded",
    Door.CAPTION: "owner_quota_exceeded",
    Door.BATCH_ITEM: "too_many_items_in_flight",
    Door.BATCH_APPEND: "too_many_items_in_flight",
    Door.OPENAI_CHAT: "owner_quota_exceeded",
    Door.OPENAI_BATCH: "too_many_items_in_flight",
}


def _fill(client: TestClient, driver: Driver, key: str, case: Case, limit: int = 20) -> Outcome:
    """Send ``case`` until the door refuses it; the refusal."""
    for _ in range(limit):
        outcome = driver.send(client, key, case)
        if outcome.code != ACCEPTED:
            return outcome
    raise AssertionError(f"still accepted after {limit} requests")


def test_every_door_names_its_queue_quota() -> None:
    assert set(QUEUE_QUOTA) == set(Door)


@pytest.mark.parametrize("door", list(Door))
def test_a_key_over_its_queue_quota_is_refused_and_another_key_is_still_served(
    client: TestClient, api_harness: ApiHarness, door: Door
) -> None:
    driver = DRIVERS[door]
    assert _fill(client, driver, KEY_A, Case()).code == QUEUE_QUOTA[door]
    # Tenant isolation: the greedy key's quota is its own.
    assert driver.send(client, KEY_B, Case()).code == ACCEPTED


@pytest.mark.parametrize("door", [door for door in Door if DRIVERS[door].takes_uploads])
def test_a_key_over_its_upload_share_is_refused_and_another_key_is_still_served(
    client: TestClient, api_harness: ApiHarness, door: Door
) -> None:
    driver = DRIVERS[door]
    # About 7 KB of noise each, against a share of 10 KB: the second is over it.
    inline = Case(image_url=None, image_base64=png_base64(48, noise=True))
    assert 6_000 < len(base64.b64decode(inline.image_base64 or "")) < 9_000
    assert _fill(client, driver, KEY_A, inline).code == "owner_quota_exceeded"
    assert driver.send(client, KEY_B, inline).code == ACCEPTED


def _deliveries(api_harness: ApiHarness) -> list[dict[str, Any]]:
    return [args[0] for name, args, _ in list(api_harness.queue.sent) if name == WEBHOOK_TASK]


def _wait_for_delivery(api_harness: ApiHarness, subject_id: str, deadline_s: float = 10.0) -> dict[str, Any]:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = [d for d in _deliveries(api_harness) if d["job_id"] == subject_id]
        if found:
            return found[0]
        time.sleep(0.05)  # polling recorded state, with a deadline
    raise AssertionError(f"no webhook for {subject_id}: {_deliveries(api_harness)}")


@pytest.mark.parametrize("door", [door for door in Door if DRIVERS[door].takes_webhooks])
def test_every_webhook_of_every_door_is_signed_as_its_owner(
    client: TestClient, api_harness: ApiHarness, door: Door
) -> None:
    outcome = DRIVERS[door].send(client, KEY_A, Case(webhook_url=WEBHOOK_URL))
    assert outcome.code == ACCEPTED and outcome.job_id is not None
    owner = owner_of(hash_key(KEY_A))
    if outcome.batch_id is None:
        assert client.post(f"/v1/jobs/{outcome.job_id}/cancel", headers=auth(KEY_A)).status_code == 200
    else:
        assert client.post(f"/v1/batches/{outcome.batch_id}/cancel", headers=auth(KEY_A)).status_code == 200
        # The batch's own event too: the one builder, the owner's secret and delivery slots.
        batch_event = _wait_for_delivery(api_harness, outcome.batch_id)
        assert (batch_event["event"], batch_event["owner"]) == ("batch.canceled", owner)
    job_event = _wait_for_delivery(api_harness, outcome.job_id)
    assert (job_event["event"], job_event["owner"]) == ("job.canceled", owner)
