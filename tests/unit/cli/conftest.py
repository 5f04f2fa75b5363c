"""Fixtures of the CLI's unit tests: a fresh fake API per test."""

from __future__ import annotations

import pytest

from tests.unit.cli.fake_api import FakeApi


@pytest.fixture
def fake_api() -> FakeApi:
    return FakeApi()
