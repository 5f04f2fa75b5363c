"""The decode CPU budget on a real stack: a scan bomb that passes the structural check is stopped at its budget.

A stack of its own (the null model) with the scan ceiling lifted, so the bomb reaches the decoder, and a
1 s budget. The bomb's job fails ``image_too_complex``; the decoding child that burned the budget is gone
(no process in the worker's session has used a second of CPU besides the worker itself); the next job,
another tenant's, is captioned. With the default ceiling the same bomb never reaches the decoder
(``test_intake_e2e.py``, ``/image/scan-bomb.jpg``).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from scripts.processes import session_cpu_s
from scripts.stack import LocalStack
from tests.integration.conftest import own_stack
from tests.servers import HostileServer, scan_bomb_jpeg
from tests.stack import TENANT_A_KEY, TENANT_B_KEY

pytestmark = pytest.mark.slow

# Minutes of CPU to decode in full; a few hundred kB to upload.
_BOMB = scan_bomb_jpeg(scans=40_000, side_px=2048)
_WAIT_S = 60


budget_stack = own_stack(
    "decode-budget",
    {
        "CAPTIONIZER_KEY_PREFIX": "decodebudget",
        "CAPTIONIZER_MAX_JPEG_SCANS": "1000000",
        "CAPTIONIZER_DECODE_CPU_BUDGET_S": "1",
        "CAPTIONIZER_PREPARE_THREADS": "1",
    },
)


def _ended(api: httpx.Client, job: dict[str, Any], key: str) -> dict[str, Any]:
    for _ in range(5):  # a few long-polls: the deadline is the test timeout
        job = api.get(job["url"], params={"wait": _WAIT_S}, headers={"Authorization": f"Bearer {key}"}).json()
        if job["status"] in ("succeeded", "failed", "canceled", "expired"):
            return job
    raise AssertionError(f"job did not end: {job}")


def test_a_scan_bomb_past_the_cpu_budget_fails_and_its_decoder_is_gone(
    budget_stack: LocalStack, image_server: HostileServer
) -> None:
    assert budget_stack.worker is not None and budget_stack.worker.pid is not None
    worker_pid = budget_stack.worker.pid
    with httpx.Client(base_url=budget_stack.api_url, timeout=90) as api:
        created = api.post(
            "/v1/jobs",
            files={"file": ("bomb.jpg", _BOMB, "image/jpeg")},
            headers={"Authorization": f"Bearer {TENANT_A_KEY}"},
        )
        assert created.status_code == 202, created.text
        failed = _ended(api, created.json(), TENANT_A_KEY)
        assert (failed["status"], failed["error"]["code"]) == ("failed", "image_too_complex"), failed
        assert "more than 1 s of CPU" in failed["error"]["message"]

        # The child that decoded the bomb was killed by its budget: nothing in the worker's session but the
        # worker itself has used as much as a second of CPU (the bomb alone would take minutes).
        spent = session_cpu_s(worker_pid)
        assert {pid for pid, cpu_s in spent.items() if cpu_s >= 1.0} <= {worker_pid}, spent

        created = api.post(
            "/v1/jobs",
            json={"image_url": image_server.url("/image/shape.png")},
            headers={"Authorization": f"Bearer {TENANT_B_KEY}"},
        )
        assert created.status_code == 202, created.text
        assert _ended(api, created.json(), TENANT_B_KEY)["status"] == "succeeded"
