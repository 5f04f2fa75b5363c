"""Ctrl-C on ``captionizer caption DIR`` mid-batch, then ``batch status|results ID`` picking the batch up again.

A stack of its own whose caption worker has one pool thread, held by a job whose image hangs on a
tarpit: the folder's batch cannot move until the test releases the tarpit, so it is surely still
running when the CLI is interrupted, without any sleep. The worker's model is the ``null`` stand-in
(no compute, a fixed caption): what is tested is the client, not the captions.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from scripts.stack import LocalStack
from tests.integration.chaos import wait_until
from tests.integration.conftest import own_stack
from tests.integration.test_cli import CLI, cli_env, run_cli, save_shape
from tests.servers import HostileServer
from worker.captioning.standins import STANDIN_CAPTION

pytestmark = pytest.mark.slow

_IMAGES = 12
_DEADLINE_S = 120
# Long enough that the held job's fetch outlasts the whole test: the gate opens only when the tarpit does.
_HOLD_S = 600
_BATCH_LINE = re.compile(r"^batch (bat_[A-Za-z0-9_-]{22}): (\d+) images$")


# Redis, a one-thread caption worker with the null model, and the API; all stopped at the end.
gated_stack = own_stack(
    "interrupt",
    {
        "CAPTIONIZER_KEY_PREFIX": "interrupt",
        "CAPTIONIZER_WORKER_THREADS": "1",
        "CAPTIONIZER_FETCH_TIMEOUT_S": str(_HOLD_S),
        "CAPTIONIZER_JOB_TIME_LIMIT_S": str(_HOLD_S),
    },
)


@pytest.fixture
def api(gated_stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gated_stack.api_url, timeout=60) as client:
        yield client


def _lines_of(stream: IO[str], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))
    into.put(None)


def _wait_for_line(lines: queue.Queue[str | None], pattern: re.Pattern[str], seen: list[str]) -> re.Match[str]:
    """The first line matching ``pattern`` (every line read is kept in ``seen``); fails at EOF or the deadline."""
    while True:
        try:
            line = lines.get(timeout=_DEADLINE_S)
        except queue.Empty:
            raise AssertionError(f"no line like {pattern.pattern} within {_DEADLINE_S} s; got {seen}") from None
        if line is None:
            raise AssertionError(f"the CLI ended before printing {pattern.pattern}; it printed {seen}")
        seen.append(line)
        if match := pattern.match(line):
            return match


def _stop(process: subprocess.Popen[str], reader: threading.Thread | None) -> None:
    """Kill the CLI if it still runs, and close its pipes once the stderr reader has seen their end."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    if reader is not None:
        reader.join(timeout=30)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _batch(api: httpx.Client, batch_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/batches/{batch_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_ctrl_c_leaves_the_batch_running_and_batch_status_and_results_pick_it_up(
    gated_stack: LocalStack, api: httpx.Client, image_server: HostileServer, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    for index in range(_IMAGES):
        save_shape(folder / f"{index:02d}.png", "circle", "red")
    tarpit = image_server.tarpit("cli-interrupt")
    held = api.post("/v1/jobs", json={"image_url": image_server.url("/tarpit/cli-interrupt")})
    assert held.status_code == 202, held.text
    process: subprocess.Popen[str] | None = None
    reader: threading.Thread | None = None
    try:
        # The worker's only thread is now in the tarpit: nothing else runs until it is released.
        wait_until(lambda: tarpit.open == 1, timeout_s=_DEADLINE_S, what="the held job fetching")
        process = subprocess.Popen(
            [str(CLI), "caption", str(folder), "--wait", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(gated_stack),
            # As in a terminal, whatever ignored SIGINT in the test runner (a background job, nohup).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        assert process.stderr is not None
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_lines_of, args=(process.stderr, lines), daemon=True)
        reader.start()
        seen: list[str] = []
        batch_id, count = _wait_for_line(lines, _BATCH_LINE, seen).groups()
        assert int(count) == _IMAGES

        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        process.wait(timeout=_DEADLINE_S)
        assert process.stdout is not None
        stdout = process.stdout.read()  # stderr is the reader thread's alone
        while (line := lines.get(timeout=_DEADLINE_S)) is not None:
            seen.append(line)

        assert process.returncode == 130, seen
        assert stdout == "", "no results are printed for an interrupted batch"
        assert f"batch {batch_id} goes on without this command; pick it up again with:" in seen, seen
        assert f"  captionizer batch status {batch_id}" in seen and f"  captionizer batch results {batch_id}" in seen
        batch = _batch(api, batch_id)
        assert batch["status"] == "running" and batch["done"] == 0 and batch["total"] == _IMAGES, batch

        # Picked up while it still waits: the status says so (exit 1), the results list every item, none ended.
        status = run_cli(gated_stack, "batch", "status", batch_id)
        assert status.returncode == 1, status.stderr
        assert json.loads(status.stdout)["id"] == batch_id and json.loads(status.stdout)["status"] == "running"
        waiting = run_cli(gated_stack, "batch", "results", batch_id)
        assert waiting.returncode == 1, waiting.stderr
        assert [json.loads(line)["status"] for line in waiting.stdout.splitlines()] == ["queued"] * _IMAGES
    finally:
        tarpit.release()
        if process is not None:
            _stop(process, reader)

    wait_until(lambda: _batch(api, batch_id)["status"] == "completed", timeout_s=_DEADLINE_S, what="the batch's end")
    status = run_cli(gated_stack, "batch", "status", batch_id)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["succeeded"] == _IMAGES
    results = run_cli(gated_stack, "batch", "results", batch_id)
    assert results.returncode == 0, results.stderr
    rows = [json.loads(line) for line in results.stdout.splitlines()]
    assert [row["ref"] for row in rows] == [str(folder / f"{index:02d}.png") for index in range(_IMAGES)]
    assert all(row["status"] == "succeeded" and row["caption"] == STANDIN_CAPTION for row in rows)
