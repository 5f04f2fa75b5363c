"""The per-key fetch share on a real stack: a tenant's batch on a tarpit host cannot hold another tenant's fetch.

A stack of its own (the null model), whose share (4 downloads per key) is under the 8 connections a
worker gives one host: tenant A's items hang on a tarpit, tenant B fetches from that very host. Without
the share A would hold all 8 and B's request would queue behind them (checked by hand with
``CAPTIONIZER_MAX_FETCHES_PER_KEY=0``: B's job then waits until the tarpit is released).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from scripts.stack import LocalStack
from shared.batches.model import item_job_id
from tests.integration.chaos import Chaos, wait_until
from tests.integration.conftest import own_stack
from tests.servers import HostileServer
from tests.stack import TENANT_A_KEY, TENANT_B_KEY

pytestmark = pytest.mark.slow

_FETCHES_PER_KEY = 4
# What one host may take of a worker's connections (worker/egress.py).
_PER_HOST = 8
_DEADLINE_S = 120
_HOLD_S = 600


share_stack = own_stack(
    "fetch-share",
    {
        "CAPTIONIZER_KEY_PREFIX": "fetchshare",
        "CAPTIONIZER_MAX_FETCHES_PER_KEY": str(_FETCHES_PER_KEY),
        # The hanging fetches outlast the test however slow the machine: only the tarpit's release ends them.
        "CAPTIONIZER_FETCH_TIMEOUT_S": str(_HOLD_S),
        "CAPTIONIZER_JOB_TIME_LIMIT_S": str(_HOLD_S),
    },
)


@pytest.fixture
def chaos(share_stack: LocalStack) -> Iterator[Chaos]:
    """Job reads straight from Redis, and an API client."""
    with httpx.Client(base_url=share_stack.api_url, timeout=60) as client:
        handle = Chaos(share_stack, client)
        try:
            yield handle
        finally:
            handle.close()


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _batch(api: httpx.Client, batch_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/batches/{batch_id}", headers=_as(TENANT_A_KEY))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_key_s_batch_on_a_tarpit_host_holds_only_its_fetch_share_and_another_key_fetches_from_that_host(
    chaos: Chaos, image_server: HostileServer
) -> None:
    api = chaos.api
    tarpit = image_server.tarpit("fetch-share")
    # Tenant A's batch: more items than the host's connections, all on a host that never answers.
    items = [{"image_url": image_server.url("/tarpit/fetch-share")} for _ in range(_PER_HOST + _FETCHES_PER_KEY)]
    created = api.post("/v1/batches", json={"items": items}, headers=_as(TENANT_A_KEY))
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    a_jobs = [item_job_id(batch_id, index) for index in range(len(items))]
    try:
        wait_until(lambda: chaos.count_in(a_jobs, "running") == len(a_jobs), timeout_s=_DEADLINE_S, what="A running")
        wait_until(
            lambda: tarpit.open == _FETCHES_PER_KEY,
            timeout_s=_DEADLINE_S,
            what=lambda: f"{_FETCHES_PER_KEY} requests hanging, not {tarpit.open}",
        )
        # Tenant B fetches from the very same host: A's share leaves room under the host's fence.
        other = api.post(
            "/v1/jobs", json={"image_url": image_server.url("/image/shape.png")}, headers=_as(TENANT_B_KEY)
        )
        assert other.status_code == 202, other.text
        b_job = other.json()["id"]
        wait_until(lambda: chaos.count_in([b_job], "succeeded") == 1, timeout_s=_DEADLINE_S, what="B's job")
        assert chaos.count_in(a_jobs, "running") == len(a_jobs)
        assert tarpit.max_open == _FETCHES_PER_KEY
    finally:
        tarpit.release()
    # Read through the batch: once it ends, its item records are compacted away.
    wait_until(lambda: _batch(api, batch_id)["status"] == "completed", timeout_s=_DEADLINE_S, what="A's batch")
    assert _batch(api, batch_id)["counts"]["succeeded"] == len(items)


# --- a fetch waiting for a busy host's connection holds no share ----------------------------------------

# Over the 8 connections a worker gives one host, so jobs queue for the host before the key's share runs out.
_WIDE_SHARE = 12
_ON_TARPIT = 20


wide_share_stack = own_stack(
    "host-share",
    {
        "CAPTIONIZER_KEY_PREFIX": "hostshare",
        "CAPTIONIZER_MAX_FETCHES_PER_KEY": str(_WIDE_SHARE),
        "CAPTIONIZER_FETCH_TIMEOUT_S": str(_HOLD_S),
        "CAPTIONIZER_JOB_TIME_LIMIT_S": str(_HOLD_S),
        "CAPTIONIZER_WORKER_THREADS": "64",
    },
)


def test_jobs_waiting_for_a_tarpit_host_s_connections_leave_the_key_s_share_to_its_image_on_another_host(
    wide_share_stack: LocalStack, image_server: HostileServer
) -> None:
    tarpit = image_server.tarpit("host-share")
    with httpx.Client(base_url=wide_share_stack.api_url, timeout=60) as api:
        chaos = Chaos(wide_share_stack, api)
        try:
            # 20 of tenant A's jobs on a host that never answers: 8 hold its connections, 12 wait for one.
            a_jobs = []
            for _ in range(_ON_TARPIT):
                created = api.post(
                    "/v1/jobs", json={"image_url": image_server.url("/tarpit/host-share")}, headers=_as(TENANT_A_KEY)
                )
                assert created.status_code == 202, created.text
                a_jobs.append(created.json()["id"])
            wait_until(lambda: chaos.count_in(a_jobs, "running") == _ON_TARPIT, timeout_s=_DEADLINE_S, what="A running")
            wait_until(
                lambda: tarpit.open == _PER_HOST, timeout_s=_DEADLINE_S, what=lambda: f"{tarpit.open} hanging, not 8"
            )
            # The same key's image on another origin (localhost, not 127.0.0.1): the 12 waiting for the
            # tarpit's connections hold none of the key's 12 shares, so it is fetched at once.
            other_host = image_server.url("/image/shape.png", host="localhost")
            created = api.post("/v1/jobs", json={"image_url": other_host}, headers=_as(TENANT_A_KEY))
            assert created.status_code == 202, created.text
            good = created.json()["id"]
            wait_until(lambda: chaos.count_in([good], "succeeded") == 1, timeout_s=_DEADLINE_S, what="the good job")
            assert chaos.count_in(a_jobs, "running") == _ON_TARPIT
            assert tarpit.max_open == _PER_HOST
        finally:
            tarpit.release()
            chaos.close()
