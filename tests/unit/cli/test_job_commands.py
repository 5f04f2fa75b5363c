"""status, cancel, --version, idempotency keys per input, accepted formats, and what Ctrl-C prints."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cli.batch import IMAGE_SUFFIXES
from cli.client import CaptionizerClient, idempotency_key_for
from cli.job_commands import report_interrupted
from cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Streams, run
from shared.intake.uploads import IMAGE_FILE_SUFFIXES
from tests.unit.cli.fake_api import FakeApi


def captionizer(api: FakeApi, *argv: str) -> tuple[int, str, str]:
    streams = Streams(io.StringIO(), io.StringIO())
    code = run(list(argv), transport=api.transport(), streams=streams)
    return code, streams.out.getvalue(), streams.err.getvalue()


def test_status_prints_each_job_and_fails_for_unknown_ones(fake_api: FakeApi) -> None:
    captionizer(fake_api, "caption", "http://img.test/a.png", "http://img.test/broken.png", "--wait")
    code, out, _ = captionizer(fake_api, "status", "job_1", "job_2", "job_404")
    lines = out.splitlines()
    assert code == EXIT_FAILED
    # The fake API answers a plain read as "running"; the real stack's answers are checked in test_cli.py.
    assert lines[0] == "job_1  running  a caption of a.png"
    assert lines[2] == "job_404  error  No such job (job_not_found)"


def test_status_wait_follows_jobs_to_their_end(fake_api: FakeApi) -> None:
    captionizer(fake_api, "caption", "http://img.test/a.png")
    code, out, _ = captionizer(fake_api, "status", "--wait", "--json", "job_1")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert code == EXIT_OK
    assert row["status"] == "succeeded" and row["caption"] == "a caption of a.png"
    assert fake_api.requests[-1].url.params["wait"] == "30"


def test_status_of_a_failed_job_exits_1(fake_api: FakeApi) -> None:
    captionizer(fake_api, "caption", "http://img.test/broken.png", "--wait")
    code, out, _ = captionizer(fake_api, "status", "--wait", "job_1")
    assert code == EXIT_FAILED and out == "job_1  failed  The image server answered 404 (fetch_failed)\n"


def test_cancel_cancels_and_reports(fake_api: FakeApi) -> None:
    captionizer(fake_api, "caption", "http://img.test/a.png")
    code, out, _ = captionizer(fake_api, "cancel", "job_1")
    assert code == EXIT_OK
    assert out == "job_1  canceled\n"
    assert fake_api.jobs["job_1"]["status"] == "canceled"
    assert [r.url.path for r in fake_api.requests][-1] == "/v1/jobs/job_1/cancel"


def test_cancel_of_an_unknown_job_exits_1(fake_api: FakeApi) -> None:
    code, out, _ = captionizer(fake_api, "cancel", "job_9")
    assert code == EXIT_FAILED and "job_not_found" in out


@pytest.mark.parametrize("argv", [["status"], ["cancel"], ["status", "--timeout", "soon", "job_1"], ["frobnicate"]])
def test_bad_arguments_are_usage_errors(fake_api: FakeApi, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        captionizer(fake_api, *argv)
    assert exit_info.value.code == EXIT_USAGE


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str], fake_api: FakeApi) -> None:
    with pytest.raises(SystemExit) as exit_info:
        captionizer(fake_api, "--version")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == "captionizer 0.1.0"


def test_each_input_carries_an_idempotency_key_derived_from_its_content(fake_api: FakeApi, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"same bytes")
    (tmp_path / "b.png").write_bytes(b"same bytes")
    (tmp_path / "c.png").write_bytes(b"other bytes")
    argv = [
        "caption",
        str(tmp_path / "a.png"),
        str(tmp_path / "b.png"),
        str(tmp_path / "c.png"),
        "http://img.test/x.png",
    ]
    captionizer(fake_api, *argv)
    first = {r.headers["Idempotency-Key"] for r in fake_api.requests}
    captionizer(fake_api, *argv)
    again = {r.headers["Idempotency-Key"] for r in fake_api.requests[4:]}
    assert first == again and len(first) == 3  # a.png and b.png hold the same image: one job
    assert all(key.startswith("cli-sha256-") and len(key) <= 255 for key in first)
    captionizer(fake_api, *argv, "--prompt", "a photo of")
    assert not {r.headers["Idempotency-Key"] for r in fake_api.requests[8:]} & first  # other options, other keys


def test_idempotency_keys_differ_by_content_and_options() -> None:
    assert idempotency_key_for(b"x", {}) == idempotency_key_for(b"x", {})
    assert idempotency_key_for(b"x", {}) != idempotency_key_for(b"y", {})
    assert idempotency_key_for(b"x", {"max_new_tokens": 5}) != idempotency_key_for(b"x", {"max_new_tokens": 6})
    assert idempotency_key_for(b"x", {"prompt": "a", "max_new_tokens": 5}) == idempotency_key_for(
        b"x", {"max_new_tokens": 5, "prompt": "a"}
    )


def test_folder_suffixes_are_the_servers_accepted_formats() -> None:
    # The CLI may not import shared/ (import-linter); its copy is checked against the server's list here,
    # and against a live server's GET /v1/limits in tests/integration/test_cli.py.
    assert {suffix for suffixes in IMAGE_FILE_SUFFIXES.values() for suffix in suffixes} == IMAGE_SUFFIXES
    assert ".tif" not in IMAGE_SUFFIXES


def test_ctrl_c_report_lists_the_submitted_jobs() -> None:
    client = CaptionizerClient("http://api.test")
    err = io.StringIO()
    report_interrupted(client, err)
    assert "no job was submitted" in err.getvalue()
    client.submitted.extend(["job_a", "job_b"])
    err = io.StringIO()
    report_interrupted(client, err)
    assert err.getvalue().splitlines()[1:5] == [
        "interrupted",
        "2 job(s) were submitted and go on without this command:",
        "  job_a",
        "  job_b",
    ]


def test_ctrl_c_report_names_the_batch_and_the_commands_that_pick_it_up() -> None:
    client = CaptionizerClient("http://api.test")
    client.submitted_batches.append("bat_AAAAAAAAAAAAAAAAAAAAAA")
    err = io.StringIO()
    report_interrupted(client, err)
    assert err.getvalue().splitlines()[1:] == [
        "interrupted",
        "batch bat_AAAAAAAAAAAAAAAAAAAAAA goes on without this command; pick it up again with:",
        "  captionizer batch status bat_AAAAAAAAAAAAAAAAAAAAAA",
        "  captionizer batch results bat_AAAAAAAAAAAAAAAAAAAAAA",
    ]
