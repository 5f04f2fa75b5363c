"""cli.main: the commands end to end against the fake API: output formats, exit codes, the environment."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Streams, run
from tests.unit.cli.fake_api import FakeApi


def captionizer(api: FakeApi, *argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    streams = Streams(io.StringIO(), io.StringIO())
    code = run(list(argv), environ=environ, transport=api.transport(), streams=streams)
    return code, streams.out.getvalue(), streams.err.getvalue()


def test_caption_wait_prints_a_table_of_captions(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("red.png").write_bytes(b"png")
    code, out, err = captionizer(fake_api, "caption", "red.png", "http://img.test/blue.png", "--wait")
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[0].split() == ["IMAGE", "JOB", "STATUS", "CAPTION"]
    rows = [line.split(maxsplit=3) for line in lines[1:]]
    # Job ids follow the order the concurrent submissions reached the API; the rows follow the arguments.
    assert [(row[0], row[2], row[3]) for row in rows] == [
        ("red.png", "succeeded", "a caption of red.png"),
        ("http://img.test/blue.png", "succeeded", "a caption of blue.png"),
    ]
    assert {row[1] for row in rows} == {"job_1", "job_2"}
    assert err == ""  # no progress bar: stderr is not a terminal


def test_long_names_are_shortened_in_the_middle_of_the_table(fake_api: FakeApi) -> None:
    url = "http://img.test/" + "x" * 80 + "/end.png"
    _, out, _ = captionizer(fake_api, "caption", url)
    label = out.splitlines()[1].split()[0]
    assert len(label) == 59 and label.startswith("http://img.test/xx") and label.endswith("xx/end.png") and "…" in label


def test_caption_json_prints_one_line_per_input_in_order(fake_api: FakeApi) -> None:
    urls = [f"http://img.test/{name}.png" for name in ("a", "broken", "c")]
    code, out, _ = captionizer(fake_api, "caption", *urls, "--wait", "--json", "--prompt", "a photo of")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == EXIT_FAILED
    assert [row["input"] for row in rows] == urls
    assert [row["status"] for row in rows] == ["succeeded", "failed", "succeeded"]
    assert rows[1]["error"] == {"code": "fetch_failed", "message": "The image server answered 404"}
    assert {row["prompt"] for row in rows} == {"a photo of"}


def test_caption_without_wait_lists_the_queued_jobs(fake_api: FakeApi) -> None:
    code, out, _ = captionizer(fake_api, "caption", "http://img.test/a.png")
    assert code == EXIT_OK
    assert out.splitlines()[1].split() == ["http://img.test/a.png", "job_1", "queued"]


def test_refused_inputs_fail_on_their_own_rows(fake_api: FakeApi) -> None:
    code, out, _ = captionizer(fake_api, "caption", "http://blocked.test/a.png", "http://img.test/ok.png")
    rows = out.splitlines()[1:]
    assert code == EXIT_FAILED
    assert rows[0].split()[:3] == ["http://blocked.test/a.png", "-", "error"]
    assert rows[0].endswith("The URL's host is not allowed (url_not_allowed)")
    assert rows[1].split()[2] == "queued"


def test_a_missing_path_is_a_usage_error_and_nothing_is_submitted(fake_api: FakeApi, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.png")
    code, out, err = captionizer(fake_api, "caption", "http://img.test/ok.png", missing)
    assert code == EXIT_USAGE
    assert out == "" and f"no such file or folder: {missing}" in err
    assert fake_api.requests == []


def test_api_url_and_key_come_from_the_environment(fake_api: FakeApi) -> None:
    fake_api.api_key = "sk-env"
    environ = {"CAPTIONIZER_API_URL": "http://env-api.test:9000", "CAPTIONIZER_API_KEY": "sk-env"}
    code, _, _ = captionizer(fake_api, "caption", "http://img.test/a.png", environ=environ)
    assert code == EXIT_OK
    assert str(fake_api.requests[0].url) == "http://env-api.test:9000/v1/jobs"
    assert fake_api.requests[0].headers["Authorization"] == "Bearer sk-env"


def test_api_flag_beats_the_environment(fake_api: FakeApi) -> None:
    environ = {"CAPTIONIZER_API_URL": "http://env-api.test"}
    captionizer(fake_api, "caption", "http://img.test/a.png", "--api", "http://flag-api.test/", environ=environ)
    assert fake_api.requests[0].url.host == "flag-api.test"


def test_missing_key_is_reported_as_unauthorized(fake_api: FakeApi) -> None:
    fake_api.api_key = "sk-needed"
    code, out, _ = captionizer(fake_api, "caption", "http://img.test/a.png", "--json")
    assert code == EXIT_FAILED
    assert json.loads(out)["error"]["code"] == "unauthorized"


def test_empty_folder_is_a_usage_error(fake_api: FakeApi, tmp_path: Path) -> None:
    code, _, err = captionizer(fake_api, "caption", str(tmp_path))
    assert code == EXIT_USAGE
    assert "no image files" in err


@pytest.mark.parametrize(
    "argv",
    [[], ["caption"], ["caption", "a.png", "--concurrency", "0"], ["frobnicate"], ["alt-text"]],
)
def test_bad_arguments_exit_with_usage_code(fake_api: FakeApi, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        captionizer(fake_api, *argv)
    assert caught.value.code == EXIT_USAGE


PAGE = """<html>\r
<img src="red.png">\r
<img src="http://img.test/blue.png" alt="">\r
<img src="red.png" alt="">\r
<img src="logo.png" alt="Our logo">\r
</html>\r
"""


def test_alt_text_fills_missing_alts_in_place_and_keeps_the_rest(fake_api: FakeApi, tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    page.write_bytes(PAGE.encode())
    (tmp_path / "red.png").write_bytes(b"png")

    code, out, err = captionizer(fake_api, "alt-text", str(page))

    assert code == EXIT_OK
    assert page.read_bytes().decode() == (
        # Local images are read by alt-text (bounded, inside the page's folder) and uploaded as image.png.
        PAGE.replace('<img src="red.png">', '<img alt="a caption of image.png" src="red.png">')
        .replace('blue.png" alt=""', 'blue.png" alt="a caption of blue.png"')
        .replace('red.png" alt=""', 'red.png" alt="a caption of image.png"')
    )
    assert len(fake_api.jobs) == 2  # red.png is captioned once for its two tags
    assert out == ""
    assert f"{page}: filled 3 alt attribute(s), left 1 existing, 0 image(s) failed" in err


def test_alt_text_keep_empty_and_output_to_stdout(fake_api: FakeApi, tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    page.write_bytes(PAGE.encode())
    (tmp_path / "red.png").write_bytes(b"png")

    code, out, _ = captionizer(fake_api, "alt-text", str(page), "--keep-empty", "-o", "-")

    assert code == EXIT_OK
    assert out == PAGE.replace('<img src="red.png">', '<img alt="a caption of image.png" src="red.png">')
    assert page.read_bytes() == PAGE.encode()


def test_alt_text_reports_failures_and_leaves_those_tags_alone(fake_api: FakeApi, tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    page.write_text('<img src="gone.png"><img src="http://img.test/broken.png"><img src="/abs.png">')
    out_file = tmp_path / "out.html"

    code, _, err = captionizer(fake_api, "alt-text", str(page), "-o", str(out_file))

    assert code == EXIT_FAILED
    assert out_file.read_text() == page.read_text()
    assert "filled 0 alt attribute(s), left 0 existing, 3 image(s) failed" in err
    assert "/abs.png: a root-relative src needs --base-url" in err
    assert "http://img.test/broken.png: The image server answered 404 (fetch_failed)" in err
    assert "gone.png: cannot read" in err


def test_alt_text_on_a_missing_page_is_a_usage_error(fake_api: FakeApi, tmp_path: Path) -> None:
    code, _, err = captionizer(fake_api, "alt-text", str(tmp_path / "nope.html"))
    assert code == EXIT_USAGE
    assert "cannot read" in err


def test_cli_imports_nothing_of_the_service() -> None:
    # The client ships with httpx alone: no pydantic, Redis, FastAPI or torch behind its back.
    code = (
        "import sys, cli.main; "
        "loaded = {m.split('.')[0] for m in sys.modules}; "
        "print(sorted(loaded & {'api', 'shared', 'worker', 'model', 'pydantic', 'redis', 'fastapi', 'torch'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


def test_captions_of_the_demonstration_model_come_with_the_way_to_a_real_one(fake_api: FakeApi) -> None:
    fake_api.limits = {"demonstration_model": True, "model_hint": "The embedded demonstration model is serving."}
    code, out, err = captionizer(fake_api, "caption", "http://img.test/blue.png", "--wait")
    assert code == 0 and "a caption of blue.png" in out
    assert "note: The embedded demonstration model is serving." in err
    fake_api.limits = {"demonstration_model": False, "model_hint": None}
    _, _, err = captionizer(fake_api, "caption", "http://img.test/blue.png", "--wait")
    assert "note:" not in err


def test_batch_help_lists_only_the_options_that_apply(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run(["batch", "--help"], environ={})
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "--api" in text and "--wait" in text
    for option in ("--prompt", "--max-new-tokens", "--concurrency", "--timeout", "--no-progress"):
        assert option not in text, option
