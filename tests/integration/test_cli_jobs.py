"""The CLI's job commands against the real stack: status, cancel, --version, reruns that submit nothing
new, Ctrl-C that names the submitted jobs, usage errors, and formats that match the server's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from redis import Redis

from cli.batch import IMAGE_SUFFIXES
from scripts.stack import LocalStack
from tests.integration.test_cli import CLI, json_rows, run_cli, save_shape
from tests.servers import HostileServer
from tests.stack import needs_embedded_model

_DEADLINE_S = 120


def test_version_prints_the_package_version(stack: LocalStack, api: httpx.Client) -> None:
    result = run_cli(stack, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "captionizer 0.1.0"


@needs_embedded_model
def test_a_rerun_returns_the_same_jobs_instead_of_submitting_again(
    stack: LocalStack, api: httpx.Client, tmp_path: Path
) -> None:
    save_shape(tmp_path / "a.png", "circle", "blue")
    save_shape(tmp_path / "b.png", "square", "red")
    sample = f"{stack.api_url}/samples/red-circle.png"
    argv = ["caption", str(tmp_path / "a.png"), str(tmp_path / "b.png"), sample, "--wait", "--json"]

    first = run_cli(stack, *argv)
    again = run_cli(stack, *argv)

    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert [row["id"] for row in json_rows(first)] == [row["id"] for row in json_rows(again)]
    listed = api.get("/v1/jobs", params={"limit": 100}).json()["items"]
    assert sorted(job["id"] for job in listed) == sorted(str(row["id"]) for row in json_rows(first))
    # Other options are another request: a new job.
    other = run_cli(stack, *argv[:2], "--max-new-tokens", "12", "--json")
    assert json_rows(other)[0]["id"] != json_rows(first)[0]["id"]


@needs_embedded_model
def test_status_shows_a_jobs_caption_and_waits_for_it(stack: LocalStack, api: httpx.Client) -> None:
    submitted = run_cli(stack, "caption", f"{stack.api_url}/samples/green-square.png", "--json")
    (row,) = json_rows(submitted)

    result = run_cli(stack, "status", "--wait", str(row["id"]))

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{row['id']}  succeeded  a large green square on a white background\n"
    unknown = run_cli(stack, "status", "job_AAAAAAAAAAAAAAAAAAAAAA", "--json")
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout)["error"]["code"] == "job_not_found"


def test_ctrl_c_prints_the_submitted_jobs_which_status_and_cancel_then_find(
    stack: LocalStack, api: httpx.Client, image_server: HostileServer
) -> None:
    redis = Redis.from_url(stack.redis_url)
    read_bucket = stack.keys.rate_limit("read:anonymous")
    before = redis.hgetall(read_bucket)
    env = {name: value for name, value in os.environ.items() if not name.startswith("CAPTIONIZER_")}
    env |= {"CAPTIONIZER_API_URL": stack.api_url, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # The worker waits on this fetch until its timeout, so the job is still running when Ctrl-C comes.
    process = subprocess.Popen(
        [str(CLI), "caption", image_server.url("/slow-headers"), "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # As from a terminal: a test run started in the background (`pytest ... &`) ignores SIGINT,
        # and the CLI would inherit that, never see the Ctrl-C and wait for its job to fail.
        preexec_fn=_sigint_as_default,
    )
    try:
        job_id = _job_the_cli_follows(redis, stack, read_bucket, before)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        redis.close()

    # Both streams: a run that ended on its own (exit 1) says why on stdout, an interrupted one on stderr.
    assert process.returncode == 130, (stdout, stderr)
    assert "0 of 1 image(s) ended before the interruption" in stderr
    assert "1 job(s) were still running and go on without this command:" in stderr
    # Each still-running job with the image it captions (#24).
    assert f"  {job_id}  {image_server.url('/slow-headers')}\n" in stderr
    status = run_cli(stack, "status", job_id)
    assert status.stdout.split()[:2] in ([job_id, "queued"], [job_id, "running"])
    canceled = run_cli(stack, "cancel", job_id)
    assert canceled.returncode == 0 and canceled.stdout.split()[:2] == [job_id, "canceled"]
    again = run_cli(stack, "cancel", job_id)
    assert again.returncode == 1 and "job_not_cancelable" in again.stdout


def test_a_missing_path_is_a_usage_error(stack: LocalStack, api: httpx.Client, tmp_path: Path) -> None:
    save_shape(tmp_path / "here.png", "circle", "red")
    result = run_cli(stack, "caption", str(tmp_path / "here.png"), str(tmp_path / "gone.png"))
    assert result.returncode == 2
    assert "no such file or folder" in result.stderr
    assert api.get("/v1/jobs").json()["items"] == []  # nothing was submitted


def test_the_cli_offers_the_formats_the_server_accepts(stack: LocalStack, api: httpx.Client, tmp_path: Path) -> None:
    served = {suffix for fmt in api.get("/v1/limits").json()["image_formats"] for suffix in fmt["suffixes"]}
    assert served == IMAGE_SUFFIXES
    # A .tif in a folder is not offered to the server: it is reported as skipped, with the reason (#24).
    save_shape(tmp_path / "pics" / "a.png", "circle", "red")
    (tmp_path / "pics" / "scan.tif").write_bytes(b"II*\x00")
    result = run_cli(stack, "caption", str(tmp_path / "pics"), "--json")
    rows = json_rows(result)
    assert [row["input"] for row in rows] == [str(tmp_path / "pics" / "a.png"), str(tmp_path / "pics" / "scan.tif")]
    assert (rows[1]["id"], rows[1]["status"]) == (None, "skipped")
    assert "scan.tif: skipped: .tif is not an image format the API reads" in result.stderr
    assert result.returncode == 1


def _sigint_as_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _job_the_cli_follows(redis: Redis, stack: LocalStack, read_bucket: str, before: object) -> str:
    """The job the CLI submitted, once it has the 202 in hand.

    The CLI long-polls its job right after the 202, and that read spends a token of the
    read budget, so the bucket in Redis changes; nothing else reads during the test.
    """
    deadline = time.monotonic() + _DEADLINE_S
    while redis.hgetall(read_bucket) == before:
        if time.monotonic() > deadline:
            raise TimeoutError("the CLI never followed a job")
        time.sleep(0.05)
    (job_id,) = redis.zrange(stack.keys.owner_jobs("anonymous"), 0, -1)
    return str(job_id.decode())
