"""Fair bulk order on the real stack: a key's small batch does not wait for another key's earlier, larger one.

A stack of its own: a simulated accelerator that holds each model batch 300 ms (``sleep:300``), chunks of 4
items, one chunk in hand at a time, and a bulk queue fed one message deep. Tenant A posts 40 items (10
chunks), then tenant B posts 4 (one chunk). Round-robin, B's chunk runs after at most the chunk A has in
hand, the one queued and one turn: when B's batch ends, A's has at least 3 chunks to go. One FIFO for all
(before issue #23) ended all of A's batch first.

Then A's batch hangs at a tarpit (a host that never answers; the fetch timeout is longer than the test) and
fills the worker's room for bulk images, and B's small batch still ends while A's tarpit is holding: the
feeder lets A have only ``bulk_chunks_per_key`` chunks out, so the worker has a free hand for B's message,
and B, below its fair share of the room, enters beside A's hanging chunk.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from scripts.stack import LocalStack
from tests.integration.chaos import wait_until
from tests.integration.conftest import own_stack
from tests.servers import HostileServer
from tests.stack import TENANT_A_KEY, TENANT_B_KEY

pytestmark = pytest.mark.slow

_CHUNK = 4
_A_ITEMS = 40
_DEADLINE_S = 120


fair_stack = own_stack(
    "fair-bulk",
    {
        "CAPTIONIZER_KEY_PREFIX": "fairbulk",
        "CAPTIONIZER_MODEL": "sleep:300",
        "CAPTIONIZER_BATCH_CHUNK_ITEMS": str(_CHUNK),
        "CAPTIONIZER_BULK_ITEMS_IN_HAND": str(_CHUNK),
        "CAPTIONIZER_MAX_BATCH_SIZE": str(_CHUNK),
        "CAPTIONIZER_BULK_QUEUE_DEPTH": "1",
        # Below the 4 chunks this worker holds (worker.broker.bulk_flow): room for another key's.
        "CAPTIONIZER_BULK_CHUNKS_PER_KEY": "2",
        # A tarpit's requests hang until the test releases them, not until a timeout.
        "CAPTIONIZER_FETCH_TIMEOUT_S": "100",
    },
)


def _post(api: httpx.Client, key: str, items: int, url: str) -> str:
    body = {"items": [{"image_url": url} for _ in range(items)], "max_new_tokens": 5}
    response = api.post("/v1/batches", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 202, response.text
    batch_id: str = response.json()["id"]
    return batch_id


def _batch(api: httpx.Client, key: str, batch_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_small_batch_of_another_key_ends_while_a_larger_earlier_one_still_runs(
    fair_stack: LocalStack, image_server: HostileServer
) -> None:
    url = image_server.url("/image/shape.png")
    with httpx.Client(base_url=fair_stack.api_url, timeout=60) as api:
        a_batch = _post(api, TENANT_A_KEY, _A_ITEMS, url)
        b_batch = _post(api, TENANT_B_KEY, _CHUNK, url)
        wait_until(
            lambda: _batch(api, TENANT_B_KEY, b_batch)["status"] == "completed", timeout_s=_DEADLINE_S, what="B's batch"
        )
        a_then = _batch(api, TENANT_A_KEY, a_batch)
        b_then = _batch(api, TENANT_B_KEY, b_batch)
        assert b_then["counts"]["succeeded"] == _CHUNK
        # Read after B's ended: A's progress only grows, so A had at least this much to go when B ended.
        assert a_then["status"] == "running", a_then
        assert a_then["done"] <= _A_ITEMS - 3 * _CHUNK, a_then
        wait_until(
            lambda: _batch(api, TENANT_A_KEY, a_batch)["status"] == "completed", timeout_s=_DEADLINE_S, what="A's batch"
        )
        assert _batch(api, TENANT_A_KEY, a_batch)["counts"]["succeeded"] == _A_ITEMS


def test_a_small_batch_ends_while_another_keys_chunks_hang_at_a_host_that_never_answers(
    fair_stack: LocalStack, image_server: HostileServer
) -> None:
    run = uuid.uuid4().hex
    tarpit = image_server.tarpit(run)
    with httpx.Client(base_url=fair_stack.api_url, timeout=60) as api:
        try:
            a_batch = _post(api, TENANT_A_KEY, _A_ITEMS, image_server.url(f"/tarpit/{run}"))
            # A's first chunk fills the room (4 images in hand) and hangs; its next waits, held by the worker.
            wait_until(
                lambda: tarpit.open == _CHUNK, timeout_s=_DEADLINE_S, what=lambda: f"{tarpit.open} at the tarpit"
            )
            b_batch = _post(api, TENANT_B_KEY, _CHUNK, image_server.url("/image/shape.png"))
            wait_until(
                lambda: _batch(api, TENANT_B_KEY, b_batch)["status"] == "completed",
                timeout_s=_DEADLINE_S,
                what=lambda: f"B's batch; tarpit open {tarpit.open}",
            )
            assert _batch(api, TENANT_B_KEY, b_batch)["counts"]["succeeded"] == _CHUNK
            # Still hanging when B's batch had ended: nothing of A's ended, nothing else of A's entered.
            assert (tarpit.open, tarpit.max_open) == (_CHUNK, _CHUNK)
            a_then = _batch(api, TENANT_A_KEY, a_batch)
            assert (a_then["status"], a_then["done"]) == ("running", 0), a_then
        finally:
            tarpit.release()
        wait_until(
            lambda: _batch(api, TENANT_A_KEY, a_batch)["status"] == "completed", timeout_s=_DEADLINE_S, what="A's batch"
        )
        assert _batch(api, TENANT_A_KEY, a_batch)["counts"]["succeeded"] == _A_ITEMS
