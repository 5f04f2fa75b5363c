"""checkpoint_revision: what names the weights in the caption cache's key (model/checkpoints.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from model.captioner import EMBEDDED_MODEL_DIR
from model.checkpoints import checkpoint_revision


def _no_model() -> Any:
    return SimpleNamespace(config=SimpleNamespace())


def test_a_folders_revision_is_stable_and_changes_with_any_file(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(EMBEDDED_MODEL_DIR, folder)
    first = checkpoint_revision(str(folder), _no_model())
    assert first.startswith("sha256:") and first == checkpoint_revision(str(folder), _no_model())
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert checkpoint_revision(str(folder), _no_model()) != first


def test_a_generation_config_change_is_a_new_revision(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(EMBEDDED_MODEL_DIR, folder)
    first = checkpoint_revision(str(folder), _no_model())
    (folder / "generation_config.json").write_text('{"min_new_tokens": 3}')
    assert checkpoint_revision(str(folder), _no_model()) != first


def test_a_hub_id_is_named_by_its_commit() -> None:
    model = SimpleNamespace(config=SimpleNamespace(_commit_hash="abc123"))
    assert checkpoint_revision("microsoft/git-base", model) == "hub:abc123"  # type: ignore[arg-type]
    assert checkpoint_revision("microsoft/git-base", _no_model()) == "unknown"
