"""The README's Quick start, copied and pasted: its curl commands, run against the real stack, give the captions it promises."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable
from typing import Any

import httpx

from scripts.stack import LocalStack
from tests.conftest import REPO_ROOT
from tests.stack import needs_embedded_model

README_API_URL = "http://127.0.0.1:8000"
_CURL_TIMEOUT_S = 120
FINAL = {"succeeded", "failed", "canceled", "expired"}


def quick_start_commands() -> list[str]:
    """The curl commands of the README's Quick start, continuation lines joined, end-of-line comments dropped."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    text = "\n".join(block for block in blocks if "curl" in block).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if line.startswith("curl "):
            # A comment starts at " # " outside quotes: shlex knows where the quotes are.
            words = shlex.split(line, comments=True)
            commands.append(shlex.join(words))
    return commands


def run_curl(command: str, stack: LocalStack, job_id: str | None) -> Any:
    command = command.replace(README_API_URL, stack.api_url)
    if job_id is not None:
        command = command.replace("job_…", job_id)
    result = subprocess.run(
        ["bash", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=_CURL_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, (command, result.stderr)
    return json.loads(result.stdout)


def until_final(read: Callable[[], dict[str, Any]], rounds: int = 8) -> dict[str, Any]:
    """``read()`` again (each a long-poll of up to 30 s) until the job has ended, at most ``rounds`` times."""
    for _ in range(rounds):
        job = read()
        if job["status"] in FINAL:
            return job
    raise AssertionError(f"job still {job['status']} after {rounds} long-polls")


def test_the_quick_start_commands_are_the_ones_this_test_runs() -> None:
    commands = quick_start_commands()
    assert len(commands) == 5
    assert all(README_API_URL in command for command in commands)
    assert "/samples/red-circle.png" in commands[0] and "job_…" in commands[1]


@needs_embedded_model
def test_the_quick_start_gives_the_captions_it_promises(stack: LocalStack, api: httpx.Client) -> None:
    submit, poll, upload, blog, listing = quick_start_commands()

    queued = run_curl(submit, stack, None)
    assert queued["status"] == "queued" and queued["id"].startswith("job_")
    done = until_final(lambda: run_curl(poll, stack, queued["id"]))
    assert done["status"] == "succeeded", done
    assert done["caption"] == "a large red circle on a white background"

    uploaded = run_curl(upload, stack, None)
    # Prefer: wait=30 answers once the job ends; on a saturated machine it may take longer, then poll on.
    uploaded = until_final(
        lambda: uploaded if uploaded["status"] in FINAL else api.get(uploaded["url"], params={"wait": 30}).json()
    )
    assert uploaded["status"] == "succeeded", uploaded
    assert uploaded["caption"] == "a large green square on a white background"

    assert run_curl(blog, stack, None) == "a large red circle on a white background"

    listed = run_curl(listing, stack, None)
    assert [job["id"] for job in listed["items"]][-2:] == [uploaded["id"], queued["id"]]
    assert len(listed["items"]) == 3  # GET /caption made a job too, the newest
