"""model.fetch: argument handling, the checkpoint layout check, and a download (with the Hub replaced)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from model import EMBEDDED_MODEL_DIR, fetch
from model.fetch import CheckpointLayoutError, check_checkpoint_folder


def _copy_files(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        shutil.copyfile(path, target / path.name)


def _write_tiny_weights(folder: Path) -> None:
    save_file({"output.bias": torch.zeros(2)}, str(folder / "model.safetensors"))


@pytest.fixture
def checkpoint(standin_files: Path, tmp_path: Path) -> Path:
    """A folder with git-base's configuration and tokenizer files and a (tiny, fake) weights file."""
    folder = tmp_path / "git-base-textcaps"
    _copy_files(standin_files, folder)
    _write_tiny_weights(folder)
    return folder


@pytest.fixture
def fake_hub(standin_files: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace the Hub download with a copy of the stand-in's files; returns the calls it received."""
    calls: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        _copy_files(standin_files, Path(kwargs["local_dir"]))
        _write_tiny_weights(Path(kwargs["local_dir"]))
        return str(kwargs["local_dir"])

    monkeypatch.setattr(fetch, "snapshot_download", snapshot_download)
    return calls


def test_complete_checkpoint_passes_the_layout_check(checkpoint: Path) -> None:
    check_checkpoint_folder(checkpoint)


def test_sharded_checkpoint_passes_the_layout_check(checkpoint: Path) -> None:
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00001.safetensors")
    index = {"weight_map": {"output.bias": "model-00001-of-00001.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    check_checkpoint_folder(checkpoint)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("config.json", "config.json is missing"),
        ("model.safetensors", "no model.safetensors"),
        ("preprocessor_config.json", "no image processor"),
        ("tokenizer_config.json", "tokenizer_config.json is missing"),
    ],
)
def test_missing_file_fails_the_layout_check(checkpoint: Path, remove: str, message: str) -> None:
    (checkpoint / remove).unlink()
    with pytest.raises(CheckpointLayoutError, match=message):
        check_checkpoint_folder(checkpoint)


def test_checkpoint_saved_by_transformers_5_passes_the_layout_check(tmp_path: Path) -> None:
    shutil.copytree(EMBEDDED_MODEL_DIR, tmp_path, dirs_exist_ok=True, copy_function=shutil.copyfile)
    assert not (tmp_path / "preprocessor_config.json").exists()
    check_checkpoint_folder(tmp_path)


def test_missing_tokenizer_fails_the_layout_check(checkpoint: Path) -> None:
    (checkpoint / "tokenizer.json").unlink()
    (checkpoint / "vocab.txt").unlink(missing_ok=True)
    with pytest.raises(CheckpointLayoutError, match="no tokenizer"):
        check_checkpoint_folder(checkpoint)


def test_missing_shard_fails_the_layout_check(checkpoint: Path) -> None:
    index = {"weight_map": {"output.bias": "model-00001-of-00002.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointLayoutError, match=re.escape("model-00001-of-00002.safetensors")):
        check_checkpoint_folder(checkpoint)


def test_other_model_type_fails_the_layout_check(checkpoint: Path) -> None:
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "blip"}))
    with pytest.raises(CheckpointLayoutError, match="'blip'"):
        check_checkpoint_folder(checkpoint)


def test_unreadable_config_and_absent_folder_fail_the_layout_check(checkpoint: Path, tmp_path: Path) -> None:
    (checkpoint / "config.json").write_text("{not json")
    with pytest.raises(CheckpointLayoutError, match="unreadable"):
        check_checkpoint_folder(checkpoint)
    with pytest.raises(CheckpointLayoutError, match="not a folder"):
        check_checkpoint_folder(tmp_path / "absent")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(CheckpointLayoutError) as raised:
        check_checkpoint_folder(tmp_path)
    message = str(raised.value)
    for problem in (
        "config.json is missing",
        "no model.safetensors",
        "no tokenizer",
        "tokenizer_config.json",
        "preprocessor",
    ):
        assert problem in message


def test_download_fetches_only_loading_files_and_checks_them(fake_hub: list[dict[str, Any]], tmp_path: Path) -> None:
    target = tmp_path / "models" / "coco"
    assert fetch.main(["microsoft/git-base-coco", str(target)]) == 0
    [call] = fake_hub
    assert call["repo_id"] == "microsoft/git-base-coco"
    assert "*.safetensors" in call["allow_patterns"] and "*.bin" not in call["allow_patterns"]
    check_checkpoint_folder(target)


def test_unknown_hub_id_exits_2_listing_known_ones(
    fake_hub: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        fetch.main(["someone/llama", str(tmp_path / "out")])
    assert raised.value.code == 2
    assert "microsoft/git-base-textcaps" in capsys.readouterr().err
    assert fake_hub == []


def test_any_accepts_an_unknown_hub_id(fake_hub: list[dict[str, Any]], tmp_path: Path) -> None:
    assert fetch.main(["someone/git-finetune", str(tmp_path / "out"), "--any", "--revision", "v1"]) == 0
    assert (fake_hub[0]["repo_id"], fake_hub[0]["revision"]) == ("someone/git-finetune", "v1")


def test_non_empty_folder_is_refused_without_force(
    fake_hub: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as raised:
        fetch.main(["microsoft/git-base", str(tmp_path)])
    assert raised.value.code == 2 and "--force" in capsys.readouterr().err
    assert fetch.main(["microsoft/git-base", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("argv", [[], ["microsoft/git-base"], ["microsoft/git-base", "out", "--check-only", "out"]])
def test_incomplete_or_mixed_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        fetch.main(argv)
    assert raised.value.code == 2


def test_check_only_reports_the_folder_state(checkpoint: Path) -> None:
    assert fetch.main(["--check-only", str(checkpoint)]) == 0
    (checkpoint / "config.json").unlink()
    assert fetch.main(["--check-only", str(checkpoint)]) == 1


def test_failed_download_exits_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(repo_id: str, **kwargs: Any) -> str:
        raise OSError("offline")

    monkeypatch.setattr(fetch, "snapshot_download", offline)
    assert fetch.main(["microsoft/git-base", str(tmp_path / "out")]) == 1
