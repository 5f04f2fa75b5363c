"""Fixtures for the model layer's tests: the embedded captioner and the files of a git-base stand-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from model import Captioner
from model.standin import build_standin


@pytest.fixture(scope="session")
def embedded_captioner() -> Captioner:
    """The committed tiny checkpoint, loaded once for the whole session (on CPU, for exact results)."""
    return Captioner.load(device="cpu")


@pytest.fixture(scope="session")
def standin_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """git-base's configuration, processor and tokenizer files as the Hub lays them out, built once (no weights)."""
    return build_standin(tmp_path_factory.mktemp("git-base-standin"), with_weights=False)
