"""``GET /v1/webhooks/secret`` and its rotation: one secret per key, stable, rotated with a grace period."""

from __future__ import annotations

import asyncio
import base64

import pytest
from fastapi.testclient import TestClient

from api.http.auth import hash_key, owner_of
from shared.keys import Keys
from shared.settings import Settings
from shared.webhooks.secrets import WebhookSecrets
from tests.unit.api.conftest import ApiHarness, MakeApiSettings

KEY_A = "cap_key-a-0123456789abcdefghijklmnopqrstuvwxyz"
KEY_B = "cap_key-b-0123456789abcdefghijklmnopqrstuvwxyz"
GRACE_S = 600


@pytest.fixture
def api_settings(make_api_settings: MakeApiSettings) -> Settings:
    return make_api_settings(keys=[KEY_A, KEY_B], webhook_secret_grace_s=GRACE_S)


def secret_of(client: TestClient, key: str) -> str:
    response = client.get("/v1/webhooks/secret", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    value: str = response.json()["key"]
    return value


def signing_secrets(harness: ApiHarness, key: str) -> list[str]:
    secrets = WebhookSecrets(harness.redis(), Keys(harness.settings.key_prefix), GRACE_S)
    return asyncio.run(secrets.signing_secrets(owner_of(hash_key(key))))


def test_each_key_gets_its_own_stable_secret(client: TestClient) -> None:
    secret_a, secret_b = secret_of(client, KEY_A), secret_of(client, KEY_B)
    assert secret_a != secret_b
    assert secret_of(client, KEY_A) == secret_a
    assert secret_a.startswith("whsec_") and len(base64.b64decode(secret_a.removeprefix("whsec_"))) == 24


def test_the_secret_made_on_first_use_is_the_one_that_signs(client: TestClient, api_harness: ApiHarness) -> None:
    assert signing_secrets(api_harness, KEY_A) == [secret_of(client, KEY_A)]


def test_rotation_signs_with_both_during_the_grace_period(client: TestClient, api_harness: ApiHarness) -> None:
    old, other = secret_of(client, KEY_A), secret_of(client, KEY_B)
    response = client.post("/v1/webhooks/secret/rotate", headers={"Authorization": f"Bearer {KEY_A}"})
    assert response.status_code == 200, response.text
    new = response.json()["key"]
    assert new != old and response.json()["previous_valid_for_s"] == GRACE_S
    assert secret_of(client, KEY_A) == new
    assert signing_secrets(api_harness, KEY_A) == [new, old]
    # Another key's secret is untouched.
    assert secret_of(client, KEY_B) == other and signing_secrets(api_harness, KEY_B) == [other]


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/webhooks/secret"), ("POST", "/v1/webhooks/secret/rotate")])
@pytest.mark.parametrize("authorization", [None, "Bearer cap_not-a-key-0123456789abcdefghijklmnop"])
def test_no_secret_without_a_valid_key(client: TestClient, method: str, path: str, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert "whsec_" not in response.text
