"""Batches between tenants on the real stack: another key's batch, results, items and cancel all answer 404.

Tenant A's batch is held running (one item on a tarpit) while tenant B and an anonymous caller try every
route on it; docs/batches.md promises ``batch_not_found`` / ``job_not_found``, never 403, and answers that
say no more than an id that never existed. A's batch then completes untouched, and the same holds once
its results are compacted (another read path).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from redis import Redis

from scripts.stack import LocalStack
from shared.batches.model import item_job_id
from tests.integration.chaos import wait_until
from tests.servers import HostileServer
from tests.stack import TENANT_A_KEY, TENANT_B_KEY

_DEADLINE_S = 120
_NDJSON = {"Accept": "application/x-ndjson"}
#: A batch id of the right form that no one ever created.
_NEVER_CREATED = "bat_AAAAAAAAAAAAAAAAAAAAAA"


def _as(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


#: Callers other than tenant A: tenant B and the stack's anonymous caller.
_STRANGERS = pytest.mark.parametrize("stranger", [TENANT_B_KEY, None], ids=["tenant-b", "anonymous"])


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status, body
    return body


def _batch_routes_answer_not_found(api: httpx.Client, stranger: str | None, batch_id: str) -> None:
    """Every batch route, for a batch the caller does not own, answers as for one that never existed."""
    headers = _as(stranger)
    body = {"items": [{"image_url": "https://example.com/a.png"}]}
    seen: dict[str, list[dict[str, Any]]] = {}
    for target in (batch_id, _NEVER_CREATED):
        answers = [
            api.get(f"/v1/batches/{target}", headers=headers),
            api.get(f"/v1/batches/{target}/results", headers=headers),
            api.get(f"/v1/batches/{target}/results", params={"limit": "1000"}, headers=headers),
            api.get(f"/v1/batches/{target}/results", headers={**headers, **_NDJSON}),
            api.post(f"/v1/batches/{target}/cancel", headers=headers),
            api.post(f"/v1/batches/{target}/items", json=body, headers=headers),
        ]
        problems = [_problem(answer, 404, "batch_not_found") for answer in answers]
        seen[target] = [json.loads(json.dumps(p).replace(target, "ID")) for p in problems]
    # Nothing but the id itself differs from the answers about an id no one ever created.
    assert seen[batch_id] == seen[_NEVER_CREATED]


def _items_answer_not_found(api: httpx.Client, stranger: str | None, job_ids: list[str]) -> None:
    headers = _as(stranger)
    for job_id in job_ids:
        _problem(api.get(f"/v1/jobs/{job_id}", headers=headers), 404, "job_not_found")
        _problem(api.get(f"/v1/jobs/{job_id}", params={"wait": "1"}, headers=headers), 404, "job_not_found")
        _problem(api.post(f"/v1/jobs/{job_id}/cancel", headers=headers), 404, "job_not_found")
    listed = _listed_ids(api, stranger)
    assert listed and not listed & set(job_ids), "the stranger's own job is listed, none of A's items"


def _listed_ids(api: httpx.Client, key: str | None) -> set[str]:
    ids: set[str] = set()
    cursor: str | None = None
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/jobs", params=params, headers=_as(key))
        assert page.status_code == 200, page.text
        ids |= {job["id"] for job in page.json()["items"]}
        cursor = page.json().get("next_cursor")
        if not cursor:
            return ids


def _batch_of(api: httpx.Client, batch_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/batches/{batch_id}", headers=_as(TENANT_A_KEY))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@_STRANGERS
def test_another_key_finds_nothing_of_a_batch_and_cannot_touch_it(
    stranger: str | None, api: httpx.Client, image_server: HostileServer, redis: Redis, stack: LocalStack
) -> None:
    tarpit = image_server.tarpit(f"tenants-{stranger is None}")
    items = [{"image_url": image_server.url("/image/shape.png"), "ref": f"a-{i}"} for i in range(4)]
    items.append({"image_url": image_server.url(f"/tarpit/tenants-{stranger is None}"), "ref": "held"})
    body = {"items": items, "max_new_tokens": 8}
    idempotency = {"Idempotency-Key": f"tenant-isolation-{stranger is None}"}
    created = api.post("/v1/batches", json=body, headers={**_as(TENANT_A_KEY), **idempotency})
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    job_ids = [item_job_id(batch_id, index) for index in range(len(items))]
    own_job = api.post("/v1/jobs", json={"image_url": image_server.url("/image/shape.png")}, headers=_as(stranger))
    assert own_job.status_code == 202, own_job.text
    try:
        wait_until(lambda: tarpit.open >= 1, timeout_s=_DEADLINE_S, what="A's held item fetching")
        _batch_routes_answer_not_found(api, stranger, batch_id)
        _items_answer_not_found(api, stranger, job_ids)
        # The same Idempotency-Key and body from another key is that key's own, new batch.
        again = api.post("/v1/batches", json=body, headers={**_as(stranger), **idempotency})
        assert again.status_code == 202 and again.json()["id"] != batch_id, again.text
        # Its own to cancel; it leaves no work behind for the tests after this one.
        assert api.post(f"/v1/batches/{again.json()['id']}/cancel", headers=_as(stranger)).status_code == 200
        # None of it changed A's batch: still running, nothing canceled.
        running = _batch_of(api, batch_id)
        assert running["status"] == "running" and running["counts"]["canceled"] == 0, running
    finally:
        tarpit.release()
    wait_until(lambda: _batch_of(api, batch_id)["status"] == "completed", timeout_s=_DEADLINE_S, what="A's batch")
    done = _batch_of(api, batch_id)
    assert done["counts"]["succeeded"] == len(items) and done["done"] == len(items), done
    # Compacted: item records leave Redis and every read goes through the compact copy; still hidden.
    wait_until(lambda: redis.exists(stack.keys.job(job_ids[0])) == 0, timeout_s=_DEADLINE_S, what="compaction")
    _batch_routes_answer_not_found(api, stranger, batch_id)
    _items_answer_not_found(api, stranger, job_ids)
    # A still reads all of it, in JSON pages and as NDJSON, exactly as before the strangers came.
    page = api.get(f"/v1/batches/{batch_id}/results", headers=_as(TENANT_A_KEY)).json()
    assert [row["ref"] for row in page["items"]] == [item["ref"] for item in items]
    assert all(row["status"] == "succeeded" and row["caption"] for row in page["items"])
    streamed = api.get(f"/v1/batches/{batch_id}/results", headers={**_as(TENANT_A_KEY), **_NDJSON})
    assert [json.loads(line) for line in streamed.text.splitlines()] == page["items"]
    item = api.get(f"/v1/jobs/{job_ids[-1]}", headers=_as(TENANT_A_KEY)).json()
    assert item["status"] == "succeeded" and item["ref"] == "held" and item["batch_id"] == batch_id
