"""Batches on the real stack (redis-server, Celery workers, uvicorn): lifecycle, results, cancel, limits, webhook.

Every wait is on the batch's own state, with a deadline; nothing waits on a sleep.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from redis import Redis

from scripts.stack import LocalStack
from shared.batches.model import item_job_id
from shared.batches.results import RESULTS_CHUNK_ITEMS
from tests.integration.chaos import wait_until
from tests.integration.webhook_receiver import WebhookReceiver
from tests.servers import HostileServer

_DEADLINE_S = 120


def batch_of(api: httpx.Client, batch_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/batches/{batch_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for_status(api: httpx.Client, batch_id: str, *statuses: str) -> dict[str, Any]:
    wait_until(
        lambda: batch_of(api, batch_id)["status"] in statuses,
        timeout_s=_DEADLINE_S,
        what=lambda: f"batch {statuses}, now {batch_of(api, batch_id)}",
    )
    return batch_of(api, batch_id)


def all_pages(api: httpx.Client, results_url: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        page = api.get(results_url, params=params).json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def test_a_batch_runs_to_the_end_with_counts_pages_ndjson_and_compacted_results(
    api: httpx.Client, image_server: HostileServer, redis: Redis, stack: LocalStack
) -> None:
    with httpx.Client() as plain:
        inline = base64.b64encode(plain.get(image_server.url("/image/shape.png")).content).decode()
    items: list[dict[str, str]] = [
        {"image_url": image_server.url("/image/shape.png"), "ref": f"url-{i}"} for i in range(10)
    ]
    items += [
        {"image_url": image_server.url("/status/404"), "ref": "missing"},
        {"image_base64": inline, "ref": "inline"},
    ]

    response = api.post("/v1/batches", json={"items": items, "max_new_tokens": 12})

    assert response.status_code == 202, response.text
    batch = wait_for_status(api, response.json()["id"], "completed")
    assert batch["counts"]["succeeded"] == 11 and batch["counts"]["failed"] == 1
    assert batch["done"] == 12 and batch["progress"] == 1.0
    assert batch["started_at"] is not None and batch["finished_at"] >= batch["started_at"]
    paged = all_pages(api, batch["results_url"], limit=5)
    assert [item["ref"] for item in paged] == [item["ref"] for item in items]
    assert [item["index"] for item in paged] == list(range(12))
    missing = paged[10]
    assert missing["status"] == "failed" and missing["error"]["code"] == "fetch_failed"
    assert all(item["caption"] for i, item in enumerate(paged) if i != 10)
    streamed = api.get(batch["results_url"], headers={"Accept": "application/x-ndjson"})
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in streamed.text.splitlines()] == paged
    # The API compacts the results once the batch has ended; items stay readable as jobs.
    first_record = stack.keys.job(item_job_id(batch["id"], 0))
    wait_until(lambda: redis.exists(first_record) == 0, timeout_s=_DEADLINE_S, what="item records compacted")
    assert all_pages(api, batch["results_url"], limit=1000) == paged
    job = api.get(f"/v1/jobs/{item_job_id(batch['id'], 11)}").json()
    assert job["status"] == "succeeded" and job["ref"] == "inline" and job["caption"] == paged[11]["caption"]


def test_a_running_batch_compacts_each_results_chunk_as_its_last_item_ends(
    api: httpx.Client, image_server: HostileServer, redis: Redis, stack: LocalStack
) -> None:
    tarpit = image_server.tarpit("batch-compact")
    items = [{"image_url": image_server.url("/image/shape.png"), "ref": f"r{i}"} for i in range(RESULTS_CHUNK_ITEMS)]
    items.append({"image_url": image_server.url("/tarpit/batch-compact"), "ref": "held"})
    batch_id = api.post("/v1/batches", json={"items": items, "max_new_tokens": 8}).json()["id"]
    try:
        # Results chunk 0 ends while item 500 hangs: its records go, the batch still runs.
        first_record = stack.keys.job(item_job_id(batch_id, 0))
        wait_until(lambda: redis.exists(first_record) == 0, timeout_s=_DEADLINE_S, what="chunk 0 compacted")
        running = batch_of(api, batch_id)
        assert running["status"] == "running" and running["counts"]["succeeded"] == RESULTS_CHUNK_ITEMS
        paged = all_pages(api, running["results_url"], limit=300)
        assert [item["ref"] for item in paged] == [item["ref"] for item in items]
        assert all(item["caption"] for item in paged[:-1]) and paged[-1]["status"] in ("queued", "running")
        streamed = api.get(running["results_url"], headers={"Accept": "application/x-ndjson"})
        assert [json.loads(line) for line in streamed.text.splitlines()] == paged
        job = api.get(f"/v1/jobs/{item_job_id(batch_id, 7)}").json()
        assert job["status"] == "succeeded" and job["ref"] == "r7" and job["caption"] == paged[7]["caption"]
    finally:
        tarpit.release()
    ended = wait_for_status(api, batch_id, "completed")
    assert ended["counts"]["succeeded"] == RESULTS_CHUNK_ITEMS + 1 and ended["done"] == RESULTS_CHUNK_ITEMS + 1


def test_cancel_ends_every_waiting_item_once_and_the_worker_goes_on(
    api: httpx.Client, image_server: HostileServer
) -> None:
    tarpit = image_server.tarpit("batch-cancel")
    items = [{"image_url": image_server.url("/tarpit/batch-cancel")} for _ in range(40)]
    batch_id = api.post("/v1/batches", json={"items": items}).json()["id"]
    try:
        wait_until(lambda: tarpit.open >= 1, timeout_s=_DEADLINE_S, what="an item fetching from the tarpit")
        canceled = api.post(f"/v1/batches/{batch_id}/cancel").json()
    finally:
        tarpit.release()
    assert canceled["status"] == "canceled" and canceled["counts"]["canceled"] == 40 and canceled["done"] == 40
    # The worker still serves: a fresh batch completes.
    fresh = api.post("/v1/batches", json={"items": [{"image_url": image_server.url("/image/shape.png")}]})
    assert wait_for_status(api, fresh.json()["id"], "completed")["counts"]["succeeded"] == 1
    # Items running when canceled stay canceled: their late captions were dropped.
    assert batch_of(api, batch_id)["counts"]["canceled"] == 40


def test_an_upload_stopped_part_way_is_closed_by_an_empty_append_and_then_completes(
    api: httpx.Client, image_server: HostileServer
) -> None:
    items = [{"image_url": image_server.url("/image/shape.png")} for _ in range(3)]
    batch_id = api.post("/v1/batches", json={"items": items, "more_items": True}).json()["id"]
    wait_until(lambda: batch_of(api, batch_id)["done"] == 3, timeout_s=_DEADLINE_S, what="the 3 items ending")
    # Every item has ended, but the client might still append: without a close it would stay so until it expired.
    assert batch_of(api, batch_id)["status"] == "open"
    closed = api.post(f"/v1/batches/{batch_id}/items", json={"items": []})
    assert closed.status_code == 202, closed.text
    ended = wait_for_status(api, batch_id, "completed")
    assert ended["total"] == 3 and ended["counts"]["succeeded"] == 3
    again = api.post(f"/v1/batches/{batch_id}/items", json={"items": []})
    assert again.status_code == 409 and again.json()["code"] == "batch_closed"


def test_limits_answer_with_exact_codes_on_the_real_api(api: httpx.Client, image_server: HostileServer) -> None:
    url = image_server.url("/image/shape.png")
    too_many = api.post("/v1/batches", json={"items": [{"image_url": url}] * 10_001})
    assert too_many.status_code == 422 and too_many.json()["code"] == "invalid_request"
    empty = api.post("/v1/batches", json={"items": []})
    assert empty.status_code == 422 and empty.json()["code"] == "invalid_request"
    huge = api.post("/v1/batches", json={"items": [{"image_base64": "A" * (16 * 1024 * 1024)}]})
    assert huge.status_code == 413 and huge.json()["code"] == "upload_too_large"
    assert api.get("/v1/batches/bat_AAAAAAAAAAAAAAAAAAAAAA").json()["code"] == "batch_not_found"


def test_idempotent_resubmission_and_the_batch_webhook(
    api: httpx.Client, image_server: HostileServer, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.reset()
    body = {"items": [{"image_url": image_server.url("/image/shape.png")}] * 3, "webhook_url": webhook_receiver.url}
    first = api.post("/v1/batches", json=body, headers={"Idempotency-Key": "integration-batch"})
    again = api.post("/v1/batches", json=body, headers={"Idempotency-Key": "integration-batch"})
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    batch_id = first.json()["id"]
    wait_for_status(api, batch_id, "completed")

    def batch_events() -> list[dict[str, Any]]:
        return [r.payload for r in webhook_receiver.received if r.payload and r.payload["type"].startswith("batch.")]

    webhook_receiver.wait_for(lambda: len(batch_events()) >= 1, deadline_s=_DEADLINE_S)
    event = batch_events()[0]
    assert event["type"] == "batch.completed" and event["data"]["id"] == batch_id
    assert event["data"]["counts"]["succeeded"] == 3 and event["data"]["total"] == 3
