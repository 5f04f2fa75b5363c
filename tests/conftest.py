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
        parts = Path(str(item.fspath)).relative_to(TESTS_DIR).parts
        if parts and parts[0] in _LAYER_MARKERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


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
