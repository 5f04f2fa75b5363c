"""Fixtures for the model layer's tests: the embedded captioner and the shared git-base-textcaps files."""

from __future__ import annotations

from pathlib import Path

import pytest

from model import Captioner

#: Configuration, tokenizer and processor files of microsoft/git-base-textcaps, without weights
#: (../shared beside the repository root, on developer machines and in CI).
SHARED_TEXTCAPS_DIR = Path(__file__).resolve().parents[3] / ".." / "shared" / "git-base-textcaps"


@pytest.fixture(scope="session")
def embedded_captioner() -> Captioner:
    """The committed tiny checkpoint, loaded once for the whole session (on CPU, for exact results)."""
    return Captioner.load(device="cpu")


@pytest.fixture(scope="session")
def textcaps_files() -> Path:
    """The folder of git-base-textcaps' configuration files."""
    assert (SHARED_TEXTCAPS_DIR / "config.json").is_file(), f"missing {SHARED_TEXTCAPS_DIR}; clone beside ../shared"
    return SHARED_TEXTCAPS_DIR.resolve()
