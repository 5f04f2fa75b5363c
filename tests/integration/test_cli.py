"""The ``captionizer`` console script against the real stack: uploads, URLs, folders, JSON lines, alt text.

Each test runs the installed script (``.venv/bin/captionizer``) as a subprocess, exactly as a user
would, with the API's URL in ``CAPTIONIZER_API_URL``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model.shapes import caption_for, draw_shape
from scripts.stack import LocalStack
from tests.servers import HostileServer
from tests.stack import needs_embedded_model

#: The console script pip installed next to this interpreter (``[project.scripts]``).
CLI = Path(sys.executable).with_name("captionizer")
_CLI_TIMEOUT_S = 180


@pytest.fixture
def live(api: httpx.Client, stack: LocalStack) -> Iterator[LocalStack]:
    """The running stack; asking for ``api`` flushes job data after the test."""
    yield stack


def cli_env(stack: LocalStack) -> dict[str, str]:
    """The environment ``captionizer`` runs in against ``stack``: its API's URL, this checkout's ``cli``."""
    assert CLI.is_file(), f"{CLI} is missing: `pip install -e .` installs the console script"
    env = {name: value for name, value in os.environ.items() if not name.startswith("CAPTIONIZER_")}
    env["CAPTIONIZER_API_URL"] = stack.api_url
    # The console script imports `cli` from wherever the shared venv was installed; test this checkout's.
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def run_cli(stack: LocalStack, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``captionizer ARGS`` against the stack; stdout and stderr are captured as text."""
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        timeout=_CLI_TIMEOUT_S,
        env=cli_env(stack),
        cwd=cwd,
        check=False,
    )


def save_shape(path: Path, shape: str, colour: str, size: str = "large", background: str = "white") -> str:
    """Draw a shape the embedded model knows into ``path``; returns its expected caption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_shape(shape, colour, size, background, image_size=160, rng=random.Random(7)).save(path)
    return caption_for(shape, colour, size, background)


def json_rows(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


@needs_embedded_model
def test_folder_files_and_urls_get_the_models_captions(
    live: LocalStack, image_server: HostileServer, tmp_path: Path
) -> None:
    expected = {
        str(tmp_path / "shapes" / "a-circle.png"): save_shape(tmp_path / "shapes" / "a-circle.png", "circle", "red"),
        str(tmp_path / "shapes" / "b-square.png"): save_shape(tmp_path / "shapes" / "b-square.png", "square", "blue"),
        image_server.url("/image/shape.png"): caption_for("circle", "red"),
    }

    result = run_cli(
        live, "caption", str(tmp_path / "shapes"), image_server.url("/image/shape.png"), "--wait", "--json"
    )

    assert result.returncode == 0, result.stderr
    assert {row["input"]: row["caption"] for row in json_rows(result)} == expected
    assert [row["source"] for row in json_rows(result)] == ["upload", "upload", "url"]


def test_a_failed_image_sets_exit_code_1_and_the_others_still_finish(
    live: LocalStack, image_server: HostileServer, tmp_path: Path
) -> None:
    save_shape(tmp_path / "circle.png", "circle", "green")
    missing_url = image_server.url("/status/404")

    result = run_cli(live, "caption", str(tmp_path / "circle.png"), missing_url, "--wait", "--json")

    assert result.returncode == 1, result.stderr
    rows = json_rows(result)
    assert [row["status"] for row in rows] == ["succeeded", "failed"]
    assert rows[1]["error"]["code"] == "fetch_failed"  # type: ignore[index]


def test_table_lists_queued_jobs_without_wait(live: LocalStack, tmp_path: Path) -> None:
    save_shape(tmp_path / "img" / "one.png", "triangle", "yellow")

    result = run_cli(live, "caption", "one.png", cwd=tmp_path / "img")

    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["IMAGE", "JOB", "STATUS", "CAPTION"]
    image, job_id, status = row.split()
    assert (image, status) == ("one.png", "queued") and job_id.startswith("job_")


def test_refused_url_is_reported_with_the_apis_detail(live: LocalStack) -> None:
    result = run_cli(live, "caption", "http://127.0.0.1:1/x.png", "--json")

    assert result.returncode == 1
    (row,) = json_rows(result)
    assert row["error"] == {"code": "url_not_allowed", "message": "port 1 is not allowed"}


def test_unreachable_api_is_a_clear_failure(tmp_path: Path) -> None:
    save_shape(tmp_path / "c.png", "circle", "red")
    env = {**os.environ, "CAPTIONIZER_API_URL": "http://127.0.0.1:9"}
    result = subprocess.run(
        [str(CLI), "caption", str(tmp_path / "c.png")], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "cannot reach the API at http://127.0.0.1:9" in result.stdout


@needs_embedded_model
def test_alt_text_fills_missing_alts_and_keeps_the_rest_of_the_page(
    live: LocalStack, image_server: HostileServer, tmp_path: Path
) -> None:
    square = save_shape(tmp_path / "site" / "img" / "square.png", "square", "blue")
    page = tmp_path / "site" / "index.html"
    original = (
        "<!doctype html>\r\n<html><body>\r\n"
        '  <img src="img/square.png" width=160>\r\n'
        f'  <img alt="" src="{image_server.url("/image/shape.png")}">\r\n'
        '  <img src="img/square.png" alt="Kept: the author wrote this">\r\n'
        "  <!-- <img src=commented.png> -->\r\n"
        "</body></html>\r\n"
    )
    page.write_text(original, newline="")

    result = run_cli(live, "alt-text", str(page), "-o", str(tmp_path / "out.html"))

    assert result.returncode == 0, result.stderr
    expected = original.replace(
        '<img src="img/square.png" width=160>', f'<img alt="{square}" src="img/square.png" width=160>'
    )
    expected = expected.replace('<img alt="" src', f'<img alt="{caption_for("circle", "red")}" src')
    assert (tmp_path / "out.html").read_bytes() == expected.encode()
    assert page.read_bytes() == original.encode()
    assert "filled 2 alt attribute(s), left 1 existing, 0 image(s) failed" in result.stderr
