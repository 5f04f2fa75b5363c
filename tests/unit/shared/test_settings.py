"""Settings: one object, from CAPTIONIZER_* variables, refusing unsafe values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import Settings


def test_defaults_work_on_a_laptop() -> None:
    settings = Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.model == "embedded"
    assert settings.allow_anonymous is False
    assert settings.allow_private_networks is False
    assert settings.allowed_ports == [80, 443]


def test_environment_is_read_with_prefix_and_csv_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPTIONIZER_REDIS_URL", "rediss://:pw@cache.example:6380/0")
    monkeypatch.setenv("CAPTIONIZER_ALLOWED_PORTS", "80, 443,8080")
    monkeypatch.setenv("CAPTIONIZER_WEBHOOK_SECRETS", "whsec_a,whsec_b")
    monkeypatch.setenv("CAPTIONIZER_MAX_BATCH_SIZE", "4")
    settings = Settings()
    assert settings.redis_url.startswith("rediss://")
    assert settings.allowed_ports == [80, 443, 8080]
    assert settings.webhook_secrets == ["whsec_a", "whsec_b"]
    assert settings.batch_size_for(on_gpu=True) == 4


def test_batch_size_defaults_by_device() -> None:
    assert Settings().batch_size_for(on_gpu=True) == 16
    assert Settings().batch_size_for(on_gpu=False) == 8


@pytest.mark.parametrize(
    "field, value",
    [
        ("redis_url", "http://127.0.0.1:6379"),
        ("webhook_secrets", "plain-secret"),
        ("api_key_hashes", "my-secret-key"),
        ("max_batch_size", "0"),
        ("device", "tpu"),
    ],
)
def test_unsafe_or_malformed_values_are_refused(field: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"CAPTIONIZER_{field.upper()}", value)
    with pytest.raises(ValidationError):
        Settings()


def test_inconsistent_limits_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(default_max_new_tokens=50, max_new_tokens_limit=20)


def test_every_field_is_described() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert missing == []
