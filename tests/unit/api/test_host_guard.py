"""Anonymous mode answers only the host names it serves: a DNS rebinding page is refused (#24).

After a rebinding, the browser sends the page's own ``Origin`` and ``Sec-Fetch-Site: same-origin``
to the local API; only ``Host`` still names the attacker's domain.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

import api.app
from api.http.auth import hash_key
from api.http.host_guard import host_name
from shared.settings import Settings
from tests.unit.api.conftest import ApiHarness

KEY = "cap_host-guard-0123456789abcdefghijklmnopqrstuvwxyz"
REBOUND = "rebind.evil.example:8101"
#: What a browser sends after the rebinding: the attacker's page is, to it, same-origin.
REBINDING_HEADERS = {
    "Host": REBOUND,
    "Origin": f"http://{REBOUND}",
    "Sec-Fetch-Site": "same-origin",
}
JOB_WITH_LAN_WEBHOOK = {"image_url": "http://127.0.0.1:9000/a.png", "webhook_url": "http://127.0.0.1:9000/hook"}


@pytest.fixture
def local_settings(api_settings: Settings) -> Settings:
    """``make run``'s posture: anonymous, private networks and port 9000 allowed."""
    return api_settings.model_copy(update={"allow_private_networks": True, "allowed_ports": [80, 443, 9000]})


@pytest.fixture
def client(local_settings: Settings, api_harness: ApiHarness) -> Iterator[TestClient]:
    with TestClient(api.app.create_app(local_settings)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("LOCALHOST", "localhost"),
        ("[::1]:8000", "[::1]"),
        ("[::1]", "[::1]"),
        ("api:8000", "api"),
        ("evil.example", "evil.example"),
    ],
)
def test_host_name_drops_the_port_and_case(header: str, expected: str) -> None:
    assert host_name(header) == expected


def test_a_rebinding_page_cannot_submit_a_job(client: TestClient, api_harness: ApiHarness) -> None:
    response = client.post("/v1/jobs", json=JOB_WITH_LAN_WEBHOOK, headers=REBINDING_HEADERS)
    assert (response.status_code, response.json()["code"]) == (421, "host_not_allowed")
    assert response.headers["content-type"] == "application/problem+json"
    # Nothing was queued: the refusal came before any route.
    assert api_harness.queue.queued == []


def test_a_rebinding_page_never_sees_the_webhook_secret(client: TestClient) -> None:
    response = client.get("/v1/webhooks/secret", headers=REBINDING_HEADERS)
    assert response.status_code == 421
    assert "whsec_" not in response.text


@pytest.mark.parametrize("path", ["/", "/v1/limits", "/caption?url=http://127.0.0.1:9000/a.png", "/docs"])
def test_every_route_refuses_a_foreign_host(client: TestClient, path: str) -> None:
    assert client.get(path, headers={"Host": "evil.example"}).status_code == 421


def test_a_key_does_not_make_a_foreign_host_acceptable(local_settings: Settings, api_harness: ApiHarness) -> None:
    settings = local_settings.model_copy(update={"api_key_hashes": [hash_key(KEY)]})
    with TestClient(api.app.create_app(settings)) as keyed:
        headers = {"Host": "evil.example", "Authorization": f"Bearer {KEY}"}
        assert keyed.get("/v1/webhooks/secret", headers=headers).status_code == 421


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"])
def test_the_loopback_names_are_served(client: TestClient, host: str) -> None:
    response = client.get("/v1/webhooks/secret", headers={"Host": host})
    assert response.status_code == 200
    assert response.json()["key"].startswith("whsec_")


def test_configured_names_are_added(local_settings: Settings, api_harness: ApiHarness) -> None:
    settings = local_settings.model_copy(update={"anonymous_hosts": ["api", "Captioner.LAN"]})
    with TestClient(api.app.create_app(settings)) as named:
        assert named.get("/v1/limits", headers={"Host": "api:8000"}).status_code == 200
        assert named.get("/v1/limits", headers={"Host": "captioner.lan"}).status_code == 200
        assert named.get("/v1/limits", headers={"Host": "evil.example"}).status_code == 421


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_answer_any_name(client: TestClient, path: str) -> None:
    assert client.get(path, headers={"Host": "10.1.2.3:8000"}).status_code in (200, 503)


def test_with_keys_only_there_is_no_host_guard(local_settings: Settings, api_harness: ApiHarness) -> None:
    # Behind a load balancer any name may arrive; without anonymous access a page holds no credential.
    settings = local_settings.model_copy(update={"allow_anonymous": False, "api_key_hashes": [hash_key(KEY)]})
    with TestClient(api.app.create_app(settings)) as keyed:
        headers = {"Host": "captions.example.com", "Authorization": f"Bearer {KEY}"}
        assert keyed.get("/v1/webhooks/secret", headers=headers).status_code == 200
