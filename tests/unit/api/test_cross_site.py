"""Anonymous mode refuses requests that another site's page makes a browser send (#13).

A multipart POST needs no CORS preflight, so without this any page a developer visits
while ``make run`` is up could submit jobs, and webhooks into their network. curl and the
CLI send neither ``Origin`` nor ``Sec-Fetch-Site``; the API's own page is same-origin.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import api.app
from api.http.auth import hash_key
from shared.settings import Settings
from tests.unit.api.conftest import ApiHarness

# TestClient's own origin.
SELF = "http://testserver"
KEY = "cap_cross-site-0123456789abcdefghijklmnopqrstuvwxyz"
WEBHOOK_INTO_THE_LAN = {"webhook_url": "http://192.168.1.1:8080/x"}


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 200, 10)).save(out, "PNG")
    return out.getvalue()


def _post_form(client: TestClient, headers: dict[str, str]) -> tuple[int, str]:
    response = client.post(
        "/v1/jobs", files={"file": ("a.png", _png(), "image/png")}, data=WEBHOOK_INTO_THE_LAN, headers=headers
    )
    return response.status_code, response.json().get("code", "")


@pytest.fixture
def lan_settings(api_settings: Settings) -> Settings:
    """``make run``'s posture: anonymous and private networks allowed, so the LAN webhook would be accepted."""
    return api_settings.model_copy(update={"allow_private_networks": True, "allowed_ports": [80, 443, 8080]})


@pytest.fixture
def lan_client(lan_settings: Settings, api_harness: ApiHarness) -> Iterator[TestClient]:
    with TestClient(api.app.create_app(lan_settings)) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://testserver.evil.example"},
        {"Origin": "http://testserver:3000"},
        {"Origin": "null"},
        {"Origin": "https://testserver"},
    ],
    ids=["other origin", "browser no-cors", "fetch metadata only", "same site", "other port", "opaque", "other scheme"],
)
def test_a_cross_site_multipart_post_is_refused_and_queues_nothing(
    lan_client: TestClient, api_harness: ApiHarness, headers: dict[str, str]
) -> None:
    assert _post_form(lan_client, headers) == (403, "cross_site_request")
    assert api_harness.queue.queued == []


@pytest.mark.parametrize(
    "headers",
    [{"Origin": SELF, "Sec-Fetch-Site": "same-origin"}, {"Origin": SELF}, {"Sec-Fetch-Site": "none"}, {}],
    ids=["the API's own page", "same origin, no fetch metadata", "typed by the user", "curl or the CLI"],
)
def test_same_origin_and_non_browser_requests_are_served(lan_client: TestClient, headers: dict[str, str]) -> None:
    assert _post_form(lan_client, headers)[0] == 202


def test_an_image_tag_on_another_site_cannot_submit_through_get_caption(lan_client: TestClient) -> None:
    # <img src="http://127.0.0.1:8000/caption?url=..."> sends no Origin, only Fetch Metadata.
    response = lan_client.get(
        "/caption", params={"url": "https://example.com/a.png"}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert (response.status_code, response.json()["code"]) == (403, "cross_site_request")


def test_an_origin_configured_for_cors_is_served(lan_settings: Settings, api_harness: ApiHarness) -> None:
    settings = lan_settings.model_copy(update={"cors_origins": ["https://app.example.com"]})
    with TestClient(api.app.create_app(settings)) as client:
        headers = {"Origin": "https://app.example.com", "Sec-Fetch-Site": "cross-site"}
        assert _post_form(client, headers)[0] == 202
        assert _post_form(client, {"Origin": "https://evil.example"}) == (403, "cross_site_request")


def test_a_request_with_a_key_is_not_judged_by_its_origin(lan_settings: Settings, api_harness: ApiHarness) -> None:
    # A key is not an ambient credential (no cookie): a page can only send one it already holds.
    settings = lan_settings.model_copy(update={"api_key_hashes": [hash_key(KEY)]})
    with TestClient(api.app.create_app(settings)) as client:
        headers = {"Origin": "https://evil.example", "Authorization": f"Bearer {KEY}"}
        assert _post_form(client, headers)[0] == 202
        assert _post_form(client, {"Origin": "https://evil.example"}) == (403, "cross_site_request")
