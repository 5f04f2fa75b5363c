"""``captionizer caption DIR`` as one batch on the real stack, then ``batch status|results ID`` picking it up again."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.stack import LocalStack
from tests.integration.test_cli import json_rows, run_cli, save_shape

_SHAPES = [("circle", "red"), ("square", "blue"), ("triangle", "green"), ("circle", "yellow")]
_FOLDER_IMAGES = 60


@pytest.fixture
def live(api: httpx.Client, stack: LocalStack) -> Iterator[LocalStack]:
    """The running stack; asking for ``api`` flushes job data after the test."""
    yield stack


def test_a_folder_goes_as_one_batch_and_resumes_by_id(live: LocalStack, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for index in range(_FOLDER_IMAGES):
        shape, colour = _SHAPES[index % len(_SHAPES)]
        save_shape(folder / f"{index:03d}.png", shape, colour)

    result = run_cli(live, "caption", str(folder), "--wait", "--json")

    assert result.returncode == 0, result.stderr
    rows = json_rows(result)
    assert len(rows) == _FOLDER_IMAGES
    assert [row["input"] for row in rows] == [str(folder / f"{i:03d}.png") for i in range(_FOLDER_IMAGES)]
    assert all(row["status"] == "succeeded" and row["caption"] for row in rows)
    match = re.search(r"batch (bat_[A-Za-z0-9_-]{22})", result.stderr)
    assert match, result.stderr
    batch_id = match.group(1)

    status = run_cli(live, "batch", "status", batch_id)
    assert status.returncode == 0, status.stderr
    batch = json.loads(status.stdout)
    assert batch["status"] == "completed" and batch["counts"]["succeeded"] == _FOLDER_IMAGES

    results = run_cli(live, "batch", "results", batch_id)
    assert results.returncode == 0, results.stderr
    captions = [json.loads(line)["caption"] for line in results.stdout.splitlines()]
    assert captions == [row["caption"] for row in rows]


def test_an_unknown_batch_id_is_a_clear_failure(live: LocalStack) -> None:
    result = run_cli(live, "batch", "status", "bat_AAAAAAAAAAAAAAAAAAAAAA")
    assert result.returncode == 1
    assert "batch_not_found" in result.stderr
