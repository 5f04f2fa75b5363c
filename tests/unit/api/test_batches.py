"""POST/GET /v1/batches over fakeredis: limits with their exact codes, chunks on the bulk queue, owners, idempotency."""

from __future__ import annotations

import asyncio
import base64

import pytest
from fastapi.testclient import TestClient

from shared.batches.model import item_job_id
from shared.jobs.model import JobStatus
from shared.keys import CAPTION_CHUNK_TASK
from shared.settings import Settings
from tests.unit.api.conftest import ApiHarness, MakeApiSettings
from tests.unit.api.test_jobs import png_bytes

KEY_A, KEY_B = "cap_batch-tests-key-a", "cap_batch-tests-key-b"


@pytest.fixture
def api_settings(make_api_settings: MakeApiSettings) -> Settings:
    """Two keys, small chunks and a small in-flight cap, so limits are cheap to reach."""
    return make_api_settings(
        keys=[KEY_A, KEY_B],
        max_upload_bytes=64 * 1024,
        max_request_bytes=2 * 1024 * 1024,
        batch_chunk_items=4,
        max_items_in_flight=20,
    )


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def urls(count: int) -> list[dict[str, str]]:
    return [{"image_url": f"https://example.com/{i}.png", "ref": f"img-{i}"} for i in range(count)]


def test_a_batch_is_stored_queued_in_chunks_and_located(client: TestClient, api_harness: ApiHarness) -> None:
    response = client.post("/v1/batches", json={"items": urls(10), "max_new_tokens": 12}, headers=auth())
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/batches/{body['id']}" == body["url"]
    assert body["status"] == "running" and body["total"] == 10 and body["counts"]["queued"] == 10
    assert body["progress"] == 0 and body["max_new_tokens"] == 12
    chunks = [args[0] for name, args, queue in api_harness.queue.sent if name == CAPTION_CHUNK_TASK]
    assert [len(chunk) for chunk in chunks] == [4, 4, 2]
    assert {queue for _, _, queue in api_harness.queue.sent} == {"captionizer-test-captions-bulk"}
    assert chunks[0][0] == item_job_id(body["id"], 0)
    job = client.get(f"/v1/jobs/{chunks[2][1]}", headers=auth()).json()
    assert job["batch_id"] == body["id"] and job["ref"] == "img-9" and job["status"] == "queued"
    page = client.get(f"{body['results_url']}?limit=3", headers=auth()).json()
    assert [item["ref"] for item in page["items"]] == ["img-0", "img-1", "img-2"] and page["next_cursor"] == "3"


@pytest.mark.parametrize(
    ("items", "status", "code"),
    [
        ([], 422, "invalid_request"),
        (urls(10_001), 422, "invalid_request"),
        ([{"image_url": "https://example.com/a.png", "image_base64": "aGk="}], 422, "invalid_request"),
        ([{"image_url": "https://example.com/a.png", "ref": "r" * 257}], 422, "invalid_request"),
        ([{"image_url": "https://example.com/a.png", "extra": 1}], 422, "invalid_request"),
    ],
    ids=["empty", "10001-items", "two-images", "long-ref", "unknown-field"],
)
def test_bad_batches_are_refused_whole(
    client: TestClient, api_harness: ApiHarness, items: list[dict[str, object]], status: int, code: str
) -> None:
    response = client.post("/v1/batches", json={"items": urls(2) + items if items else []}, headers=auth())
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert api_harness.queue.sent == []


@pytest.mark.parametrize("max_new_tokens", [0, None, 5000, 2**63], ids=["zero", "limit+1", "5000", "2**63"])
def test_max_new_tokens_out_of_bounds_is_422_never_500(
    client: TestClient, api_harness: ApiHarness, max_new_tokens: int | None
) -> None:
    if max_new_tokens is None:
        max_new_tokens = api_harness.settings.max_new_tokens_limit + 1
    # 5000 once passed the batch schema and failed each item's own bound as a 500 (found by Schemathesis).
    response = client.post("/v1/batches", json={"items": urls(2), "max_new_tokens": max_new_tokens}, headers=auth())
    assert response.status_code == 422 and response.json()["code"] == "invalid_request", response.text
    assert api_harness.queue.sent == []


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ({"image_url": "http://169.254.169.254/latest/meta-data"}, "url_not_allowed"),
        ({"image_url": "ftp://example.com/a.png"}, "url_not_allowed"),
        ({"image_base64": base64.b64encode(b"not an image").decode()}, "not_an_image"),
        ({"image_base64": base64.b64encode(png_bytes() + b"\0" * (64 * 1024)).decode()}, "upload_too_large"),
        ({"image_base64": "!!not base64!!"}, "invalid_request"),
    ],
    ids=["metadata-url", "ftp-url", "not-an-image", "over-upload-limit", "bad-base64"],
)
def test_a_bad_item_fails_alone_naming_its_index_ref_and_code(
    client: TestClient, api_harness: ApiHarness, bad: dict[str, str], code: str
) -> None:
    # Issue 22: one bad file in a folder of 258 failed all 258; now only that item fails.
    small = {"image_base64": base64.b64encode(png_bytes()).decode(), "ref": "inline.png"}
    items = [*urls(2), {**bad, "ref": "bad-one"}, small]
    response = client.post("/v1/batches", json={"items": items}, headers=auth())
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["total"] == 4 and body["counts"]["failed"] == 1 and body["counts"]["queued"] == 3
    published = [job_id for name, args, _ in api_harness.queue.sent if name == CAPTION_CHUNK_TASK for job_id in args[0]]
    assert published == [item_job_id(body["id"], i) for i in (0, 1, 3)]
    results = client.get(body["results_url"], headers=auth()).json()["items"]
    assert [(r["index"], r["ref"], r["status"]) for r in results] == [
        (0, "img-0", "queued"),
        (1, "img-1", "queued"),
        (2, "bad-one", "failed"),
        (3, "inline.png", "queued"),
    ]
    assert results[2]["error"]["code"] == code
    # The refused item's URL, which may carry a token, is not kept.
    assert client.get(f"/v1/jobs/{results[2]['id']}", headers=auth()).json()["image_url"] is None


def test_a_batch_whose_items_all_fail_ends_at_once(client: TestClient, api_harness: ApiHarness) -> None:
    items = [{"image_url": "http://127.0.0.1/admin", "ref": f"r{i}"} for i in range(3)]
    body = client.post("/v1/batches", json={"items": items}, headers=auth()).json()
    assert body["counts"]["failed"] == 3 and body["status"] == "completed"
    assert [name for name, _, _ in api_harness.queue.sent if name == CAPTION_CHUNK_TASK] == []


def test_a_body_over_the_request_limit_is_413_before_parsing(client: TestClient) -> None:
    huge = [{"image_base64": "A" * (1024 * 1024)} for _ in range(3)]
    response = client.post("/v1/batches", json={"items": huge}, headers=auth())
    assert response.status_code == 413 and response.json()["code"] == "upload_too_large"


def test_the_items_in_flight_cap_answers_429_with_retry_after(client: TestClient, api_harness: ApiHarness) -> None:
    assert client.post("/v1/batches", json={"items": urls(15)}, headers=auth()).status_code == 202
    refused = client.post("/v1/batches", json={"items": urls(6)}, headers=auth())
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_items_in_flight"
    assert int(refused.headers["retry-after"]) >= 1
    # Another key has its own cap.
    assert client.post("/v1/batches", json={"items": urls(6)}, headers=auth(KEY_B)).status_code == 202


def test_a_key_at_its_cap_is_refused_before_its_items_are_validated_and_can_still_close_a_batch(
    client: TestClient, api_harness: ApiHarness
) -> None:
    opened = client.post("/v1/batches", json={"items": urls(20), "more_items": True}, headers=auth())
    assert opened.status_code == 202, opened.text
    # At the cap, even a body the schema would refuse (a bad item in it) gets the cap's answer: it was not validated.
    bad = [*urls(2), {"image_url": "https://example.com/a.png", "unknown": 1}]
    for path in ("/v1/batches", f"/v1/batches/{opened.json()['id']}/items"):
        refused = client.post(path, json={"items": bad}, headers=auth())
        assert refused.status_code == 429 and refused.json()["code"] == "too_many_items_in_flight", refused.text
    closed = client.post(f"/v1/batches/{opened.json()['id']}/items", json={"items": []}, headers=auth())
    assert closed.status_code == 202 and closed.json()["status"] == "running"


def test_another_keys_batch_and_items_answer_404(client: TestClient) -> None:
    batch = client.post("/v1/batches", json={"items": urls(2)}, headers=auth()).json()
    for path in (batch["url"], batch["results_url"], f"/v1/jobs/{item_job_id(batch['id'], 0)}"):
        response = client.get(path, headers=auth(KEY_B))
        assert response.status_code == 404, path
    assert client.post(f"{batch['url']}/cancel", headers=auth(KEY_B)).json()["code"] == "batch_not_found"
    assert client.get("/v1/batches/bat_nope", headers=auth()).json()["code"] == "batch_not_found"


def test_idempotency_key_replays_the_batch_and_refuses_another_body(
    client: TestClient, api_harness: ApiHarness
) -> None:
    headers = {**auth(), "Idempotency-Key": "batch-1"}
    first = client.post("/v1/batches", json={"items": urls(3)}, headers=headers)
    again = client.post("/v1/batches", json={"items": urls(3)}, headers=headers)
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    assert len(api_harness.queue.sent) == 1
    other = client.post("/v1/batches", json={"items": urls(4)}, headers=headers)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_conflict"


def test_an_open_batch_takes_appends_until_closed(client: TestClient) -> None:
    batch = client.post("/v1/batches", json={"items": urls(2), "more_items": True}, headers=auth()).json()
    assert batch["status"] == "open"
    more = client.post(f"{batch['url']}/items", json={"items": urls(3)}, headers=auth())
    assert more.status_code == 202 and more.json()["total"] == 5 and more.json()["status"] == "running"
    refused = client.post(f"{batch['url']}/items", json={"items": urls(1)}, headers=auth())
    assert refused.status_code == 409 and refused.json()["code"] == "batch_closed"
    job = client.get(f"/v1/jobs/{item_job_id(batch['id'], 4)}", headers=auth()).json()
    assert job["ref"] == "img-2"


def test_an_empty_append_closes_an_open_batch_and_nothing_else(client: TestClient, api_harness: ApiHarness) -> None:
    batch = client.post("/v1/batches", json={"items": urls(2), "more_items": True}, headers=auth()).json()
    sent = len(api_harness.queue.sent)
    closed = client.post(f"{batch['url']}/items", json={"items": []}, headers=auth())
    assert closed.status_code == 202, closed.text
    assert closed.json()["status"] == "running" and closed.json()["total"] == 2
    assert len(api_harness.queue.sent) == sent  # nothing new to caption
    again = client.post(f"{batch['url']}/items", json={"items": []}, headers=auth())
    assert again.status_code == 409 and again.json()["code"] == "batch_closed"


@pytest.mark.parametrize(
    ("key", "body", "status", "code"),
    [
        (KEY_A, {"items": [], "more_items": True}, 422, "invalid_request"),
        (KEY_A, {}, 422, "invalid_request"),
        (KEY_B, {"items": []}, 404, "batch_not_found"),
    ],
    ids=["empty-but-more-items", "no-items-field", "another-key"],
)
def test_an_empty_append_that_cannot_close_is_refused_and_the_batch_stays_open(
    client: TestClient, key: str, body: dict[str, object], status: int, code: str
) -> None:
    batch = client.post("/v1/batches", json={"items": urls(2), "more_items": True}, headers=auth()).json()
    refused = client.post(f"{batch['url']}/items", json=body, headers=auth(key))
    assert refused.status_code == status and refused.json()["code"] == code, refused.text
    assert client.get(batch["url"], headers=auth()).json()["status"] == "open"


def test_cancel_ends_every_item_not_yet_ended(client: TestClient, api_harness: ApiHarness) -> None:
    batch = client.post("/v1/batches", json={"items": urls(5)}, headers=auth()).json()

    async def finish_first() -> None:
        store = api_harness.store()
        first = item_job_id(batch["id"], 0)
        assert await store.transition(first, JobStatus.RUNNING)
        assert await store.transition(first, JobStatus.SUCCEEDED, caption="a cat")

    asyncio.run(finish_first())
    canceled = client.post(f"{batch['url']}/cancel", headers=auth()).json()
    assert canceled["status"] == "canceled" and canceled["counts"]["canceled"] == 4
    assert canceled["counts"]["succeeded"] == 1 and canceled["finished_at"] is not None
    again = client.post(f"{batch['url']}/cancel", headers=auth())
    assert again.status_code == 200 and again.json()["counts"] == canceled["counts"]
