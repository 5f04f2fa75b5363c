"""The SSRF guard at submit time, through the API, for both URL fields a job carries.

The address rules themselves are tabled in ``tests/unit/shared/test_urls.py``; here each platform address
and IPv6 embedding is sent as an ``image_url`` and as a ``webhook_url`` and must be refused before a job exists.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.unit.api.conftest import ApiHarness

GOOD_IMAGE = "https://images.example.com/cat.png"

PLATFORM_HOSTS = [
    "168.63.129.16",  # Azure WireServer
    "169.254.169.254",  # Azure IMDS
    "[64:ff9b::a83f:8110]",  # NAT64 around the WireServer
    "[2002:a83f:8110::1]",  # 6to4 around the WireServer
    "[2001:0:4136:e378:8000:63bf:57c0:7eef]",  # Teredo, client 168.63.129.16
    "[2001:4860:1::5efe:a9fe:a9fe]",  # ISATAP around IMDS
]


@pytest.mark.parametrize("field", ["image_url", "webhook_url"])
@pytest.mark.parametrize("host", PLATFORM_HOSTS)
def test_platform_addresses_are_refused_in_either_url_field(
    client: TestClient, api_harness: ApiHarness, field: str, host: str
) -> None:
    body = {"image_url": GOOD_IMAGE, field: f"http://{host}/hook"}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "url_not_allowed"
    assert api_harness.queue.queued == []
