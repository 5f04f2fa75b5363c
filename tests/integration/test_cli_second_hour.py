"""The CLI a newcomer meets in their second hour (#24), on a real stack at the default rate limit.

300 files named one by one all get captioned (the client keeps to the server's pace); a folder
with a corrupt image and two formats the API does not read captions the rest, names the failure
and reports the skipped; Ctrl-C prints what was received; ``batch results --wait`` streams to the end.
The stack's model is the ``null`` stand-in: what is tested is the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.client import CaptionizerClient
from scripts.stack import LocalStack
from shared.settings import Settings
from tests.integration.chaos import wait_until
from tests.integration.conftest import own_stack
from tests.integration.test_cli import CLI, cli_env, json_rows, run_cli, save_shape
from tests.servers import HostileServer, Tarpit
from worker.captioning.standins import STANDIN_CAPTION

pytestmark = pytest.mark.slow

_DEADLINE_S = 600
#: The API's own default, not the test stacks' usual "no limit": the pace a newcomer meets.
DEFAULT_RATE_LIMIT = Settings.model_fields["rate_limit_per_minute"].default


paced_stack = own_stack(
    "second-hour",
    {"CAPTIONIZER_KEY_PREFIX": "second-hour", "CAPTIONIZER_RATE_LIMIT_PER_MINUTE": str(DEFAULT_RATE_LIMIT)},
)


@contextlib.contextmanager
def cli_beside_tarpit(
    argv: list[str], stack: LocalStack, tarpit: Tarpit, *, ctrl_c: bool = False
) -> Iterator[subprocess.Popen[str]]:
    """The CLI running ``argv`` against ``stack``; on leaving, the tarpit is released and the CLI never outlives the test.

    With ``ctrl_c``, SIGINT gets its default action in the child, as in a terminal, even where the test
    run ignores it (a shell's background job). Only then: a ``preexec_fn`` in this threaded process can
    deadlock the child before it execs (subprocess's documentation).
    """
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if ctrl_c else None
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(stack), preexec_fn=preexec
    )
    try:
        yield process
    finally:
        tarpit.release()
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=60)


def test_300_files_named_one_by_one_are_all_captioned_at_the_default_rate_limit(
    paced_stack: LocalStack, tmp_path: Path
) -> None:
    files = []
    for index in range(300):
        # Each file different, so each is a job of its own (the CLI's idempotency keys hash the bytes).
        path = tmp_path / f"img{index:03d}.png"
        save_shape(path, "circle", "red")
        path.write_bytes(path.read_bytes() + index.to_bytes(2, "big"))
        files.append(str(path))

    result = subprocess.run(
        [str(CLI), "caption", *files, "--wait", "--json"],
        capture_output=True, text=True, timeout=_DEADLINE_S, env=cli_env(paced_stack), check=False,
    )  # fmt: skip

    rows = json_rows(result)
    assert result.returncode == 0, (result.stderr[-2000:], [r for r in rows if r["status"] != "succeeded"][:5])
    assert [row["input"] for row in rows] == files
    assert all(row["status"] == "succeeded" and row["caption"] == STANDIN_CAPTION for row in rows)
    assert "rate_limited" not in result.stdout + result.stderr


def test_a_folder_with_a_corrupt_image_and_two_unsupported_files(paced_stack: LocalStack, tmp_path: Path) -> None:
    folder = tmp_path / "site"
    good = [folder / name for name in ("a.png", "b.png", "c.png")]
    for path in good:
        save_shape(path, "square", "blue")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # a PNG signature, then nothing valid
    (folder / "scan.tiff").write_bytes(b"II*\x00" + b"\x00" * 64)
    (folder / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')

    result = run_cli(paced_stack, "caption", str(folder), "--wait", "--json")

    assert result.returncode == 1, result.stderr
    rows = {Path(str(row["input"])).name: row for row in json_rows(result)}
    assert sorted(rows) == ["a.png", "b.png", "broken.png", "c.png", "logo.svg", "scan.tiff"]
    for path in good:
        assert (rows[path.name]["status"], rows[path.name]["caption"]) == ("succeeded", STANDIN_CAPTION)
    broken: dict[str, Any] = rows["broken.png"]
    assert broken["status"] == "failed" and broken["error"]["code"] == "image_corrupt", broken
    for name in ("scan.tiff", "logo.svg"):
        skipped: dict[str, Any] = rows[name]
        assert (skipped["status"], skipped["error"]["code"]) == ("skipped", "unsupported_format")
    assert f"{folder / 'logo.svg'}: skipped: SVG is a vector drawing" in result.stderr
    assert f"{folder / 'scan.tiff'}: skipped: .tiff is not an image format the API reads" in result.stderr


def test_ctrl_c_prints_the_captions_received_and_lists_the_job_still_running(
    paced_stack: LocalStack, image_server: HostileServer, tmp_path: Path
) -> None:
    # One at a time: two images end, the third hangs on a tarpit, the fourth is never sent.
    first, second = (image_server.url(f"/image/shape.png?n={n}") for n in (1, 2))
    tarpit = image_server.tarpit("second-hour-interrupt")
    held = image_server.url("/tarpit/second-hour-interrupt")
    never = image_server.url("/image/shape.png?n=4")
    argv = [str(CLI), "caption", first, second, held, never, "--wait", "--concurrency", "1"]
    with cli_beside_tarpit(argv, paced_stack, tarpit, ctrl_c=True) as process:
        _wait_until(lambda: tarpit.open == 1 or process.poll() is not None, "the third image fetching")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=_DEADLINE_S)

    assert process.returncode == 130, stderr
    received = [line.split() for line in stdout.splitlines()[1:]]  # the table, without its header
    assert [row[0] for row in received] == [first, second]
    assert all(" ".join(row[3:]) == STANDIN_CAPTION for row in received), stdout
    assert "2 of 4 image(s) ended before the interruption" in stderr
    assert "1 job(s) were still running and go on without this command:" in stderr
    # Its id, or that the submit was on its way when Ctrl-C came (the worker may start before the 202 arrives).
    [running] = [line for line in stderr.splitlines() if line.endswith(f"  {held}")]
    assert running.startswith(("  job_", "  (submitted, no answer yet)")), stderr
    assert "1 image(s) were never sent" in stderr


def test_batch_results_wait_streams_until_the_batch_ends(paced_stack: LocalStack, image_server: HostileServer) -> None:
    tarpit = image_server.tarpit("second-hour-batch")
    items = [{"image_url": image_server.url("/tarpit/second-hour-batch"), "ref": "held"}]
    items += [{"image_url": image_server.url(f"/image/shape.png?b={n}"), "ref": f"img{n}"} for n in range(3)]
    # The earlier tests may have spent this key's submit bucket: like any client at the default rate
    # limit, the batch is created at the server's pace (Retry-After), by the CLI's own client.
    batch_id = asyncio.run(_create_batch(paced_stack, items))["id"]
    with cli_beside_tarpit([str(CLI), "batch", "results", batch_id, "--wait"], paced_stack, tarpit) as process:
        _wait_until(lambda: tarpit.open == 1, "the held item fetching")
        # The held item cannot end until released, so the command is surely still waiting for it.
        assert process.poll() is None
        tarpit.release()
        stdout, stderr = process.communicate(timeout=_DEADLINE_S)

    assert process.returncode == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    # Every item once, the held one (answered with an image once released) included.
    assert sorted(row["ref"] for row in rows) == ["held", "img0", "img1", "img2"]
    assert all(row["status"] == "succeeded" and row["caption"] == STANDIN_CAPTION for row in rows), rows


async def _create_batch(stack: LocalStack, items: list[dict[str, Any]]) -> dict[str, Any]:
    async with CaptionizerClient(stack.api_url) as client:
        return await client.call("POST", "/v1/batches", json={"items": items})


def _wait_until(predicate: Callable[[], bool], what: str) -> None:
    wait_until(predicate, timeout_s=_DEADLINE_S, what=what)
