"""Fixtures for every layer: a clean environment, explicit settings, markers from paths."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import Settings

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

# Layers are named by folder; a test's marker comes from where it lives.
_LAYER_MARKERS = ("unit", "integration", "browser", "infra")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        layer = _layer_of(item)
        if layer:
            item.add_marker(getattr(pytest.mark, layer))
    # Browser tests run last, however paths are given: Playwright's sync API keeps an event
    # loop running in the main thread until the session ends, breaking later asyncio.run().
    items.sort(key=lambda item: _layer_of(item) == "browser")


def _layer_of(item: pytest.Item) -> str | None:
    parts = Path(str(item.fspath)).relative_to(TESTS_DIR).parts
    return parts[0] if parts and parts[0] in _LAYER_MARKERS else None


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Strip CAPTIONIZER_* so only the settings a test builds apply (httpx's clean_environ)."""
    for name in list(os.environ):
        if name.startswith("CAPTIONIZER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture
def settings() -> Settings:
    """Settings for a test: anonymous access, private networks allowed, no real secrets."""
    return Settings(allow_anonymous=True, allow_private_networks=True, key_prefix="captionizer-test")
