"""cli.client: submitting, long-polling, problem responses as ApiError, Retry-After retries."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from cli.client import ApiError, CaptionizerClient, parse_retry_after
from tests.unit.cli.fake_api import FakeApi

T = TypeVar("T")


def run_with(api: FakeApi, scenario: Callable[[CaptionizerClient], Awaitable[T]], **kwargs: object) -> T:
    async def go() -> T:
        async with CaptionizerClient("http://api.test", transport=api.transport(), **kwargs) as client:  # type: ignore[arg-type]
            return await scenario(client)

    return asyncio.run(go())


def test_url_job_is_submitted_as_json_and_waited_for(fake_api: FakeApi) -> None:
    async def scenario(client: CaptionizerClient) -> dict[str, object]:
        job = await client.submit_url("http://img.test/red.png", prompt="a photo of", max_new_tokens=12)
        return await client.wait_for_job(job)

    job = run_with(fake_api, scenario)

    assert job["status"] == "succeeded"
    assert job["caption"] == "a caption of red.png"
    assert (job["prompt"], job["max_new_tokens"]) == ("a photo of", 12)
    poll = fake_api.requests[-1]
    assert poll.url.path == "/v1/jobs/job_1" and poll.url.params["wait"] == "30"


def test_file_is_uploaded_as_multipart_with_its_options(fake_api: FakeApi, tmp_path: Path) -> None:
    image = tmp_path / "blue.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nfake")

    job = run_with(fake_api, lambda client: client.submit_file(image, prompt="a", max_new_tokens=5))

    assert (job["source"], job["name"], job["prompt"], job["max_new_tokens"]) == ("upload", "blue.png", "a", 5)
    body = fake_api.requests[0].content
    assert b"Content-Type: image/png" in body and b"\x89PNG" in body


def test_unreadable_file_is_an_api_error_not_a_crash(fake_api: FakeApi, tmp_path: Path) -> None:
    with pytest.raises(ApiError) as caught:
        run_with(fake_api, lambda client: client.submit_file(tmp_path / "missing.png"))
    assert caught.value.code == "file_unreadable"
    assert "missing.png" in caught.value.detail
    assert fake_api.requests == []


def test_problem_response_becomes_api_error_with_its_code_and_detail(fake_api: FakeApi) -> None:
    with pytest.raises(ApiError) as caught:
        run_with(fake_api, lambda client: client.submit_url("http://blocked.test/a.png"))
    error = caught.value
    assert (error.status, error.code, error.detail) == (400, "url_not_allowed", "The URL's host is not allowed")


def test_non_json_error_keeps_the_status_as_its_code() -> None:
    error = ApiError.from_response(httpx.Response(502, text="Bad Gateway from the proxy"))
    assert (error.code, error.status, error.detail) == ("http_502", 502, "Bad Gateway from the proxy")


def test_rate_limited_request_is_retried_after_the_servers_delay(fake_api: FakeApi) -> None:
    fake_api.rate_limit_next = 2

    job = run_with(fake_api, lambda client: client.submit_url("http://img.test/red.png"))

    assert job["status"] == "queued"
    assert len(fake_api.requests) == 3


def test_rate_limited_answers_are_retried_however_many_while_the_server_says_when(fake_api: FakeApi) -> None:
    # Our own pace must never fail an image: the retry count bounds 503s, not 429s.
    fake_api.rate_limit_next = 10
    job = run_with(fake_api, lambda client: client.submit_url("http://img.test/red.png"), retries=2)
    assert job["status"] == "queued"
    assert len(fake_api.requests) == 11


def test_rate_limit_that_outlasts_the_patience_is_reported_at_once(fake_api: FakeApi) -> None:
    fake_api.rate_limit_next, fake_api.retry_after = 1, "30"
    with pytest.raises(ApiError) as caught:
        run_with(fake_api, lambda client: client.submit_url("http://img.test/red.png"), rate_limit_patience_s=10)
    assert (caught.value.code, caught.value.detail) == ("rate_limited", "Slow down")
    assert len(fake_api.requests) == 1


def test_api_key_is_sent_as_bearer_token(fake_api: FakeApi) -> None:
    fake_api.api_key = "sk-test"
    job = run_with(fake_api, lambda client: client.submit_url("http://img.test/a.png"), api_key="sk-test")
    assert job["id"] == "job_1"
    with pytest.raises(ApiError) as caught:
        run_with(fake_api, lambda client: client.submit_url("http://img.test/a.png"))
    assert caught.value.code == "unauthorized"


def test_cancel_posts_to_the_jobs_cancel_endpoint(fake_api: FakeApi) -> None:
    async def scenario(client: CaptionizerClient) -> dict[str, object]:
        job = await client.submit_url("http://img.test/red.png")
        return await client.cancel_job(str(job["id"]))

    assert run_with(fake_api, scenario)["status"] == "canceled"
    assert fake_api.requests[-1].url.path == "/v1/jobs/job_1/cancel"


def test_unreachable_api_is_reported_with_its_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def scenario() -> None:
        async with CaptionizerClient("http://api.test:9", transport=httpx.MockTransport(refuse)) as client:
            await client.submit_url("http://img.test/a.png")

    with pytest.raises(ApiError) as caught:
        asyncio.run(scenario())
    assert caught.value.code == "api_unreachable"
    assert "http://api.test:9" in caught.value.detail


def test_waiting_past_the_timeout_is_a_client_timeout() -> None:
    job = {"id": "job_1", "status": "running"}

    async def scenario() -> None:
        async with CaptionizerClient("http://api.test", transport=FakeApi().transport()) as client:
            await client.wait_for_job(job, timeout_s=0)

    with pytest.raises(ApiError) as caught:
        asyncio.run(scenario())
    assert caught.value.code == "client_timeout"


@pytest.mark.parametrize(
    ("header", "expected_s"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        (format_datetime(datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC), usegmt=True), 30.0),
        (format_datetime(datetime(2029, 1, 1, tzinfo=UTC), usegmt=True), 0.0),
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after_accepts_seconds_and_http_dates(header: str | None, expected_s: float | None) -> None:
    now_s = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert parse_retry_after(header, now_s=now_s) == expected_s


def test_no_cache_is_sent_as_cache_false_as_json_and_as_a_form_field(fake_api: FakeApi, tmp_path: Path) -> None:
    image = tmp_path / "blue.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nfake")

    async def scenario(client: CaptionizerClient) -> None:
        await client.submit_url("http://img.test/red.png", cache=False)
        await client.submit_file(image, cache=False)
        await client.submit_url("http://img.test/red.png")

    run_with(fake_api, scenario)

    as_json, as_form, default = (request.content for request in fake_api.requests)
    assert b'"cache":false' in as_json.replace(b" ", b"")
    assert b'name="cache"\r\n\r\nfalse\r\n' in as_form
    assert b"cache" not in default
