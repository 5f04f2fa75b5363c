"""Problem responses: every error becomes one RFC 9457 body with a stable code, its status and its headers."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from api.http.problems import (
    PROBLEM_MEDIA_TYPE,
    install_problem_handlers,
    invalid_request,
    problem_response,
    problem_responses,
)
from shared import errors


def _body(response: object) -> dict[str, object]:
    data: dict[str, object] = json.loads(bytes(response.body))  # type: ignore[attr-defined]
    return data


def test_a_problem_carries_type_title_status_detail_code_and_extras() -> None:
    response = problem_response(errors.JobNotFound("no job job_x", job_id="job_x"))
    assert response.status_code == 404 and response.media_type == PROBLEM_MEDIA_TYPE
    assert _body(response) == {
        "type": "urn:captionizer:problem:job_not_found",
        "title": "Job not found",
        "status": 404,
        "detail": "no job job_x",
        "code": "job_not_found",
        "job_id": "job_x",
    }


@pytest.mark.parametrize(("retry_after_s", "header"), [(0.2, "1"), (2.1, "3"), (10, "10")])
def test_retry_after_is_whole_seconds_and_at_least_one(retry_after_s: float, header: str) -> None:
    response = problem_response(errors.RateLimited(retry_after_s=retry_after_s))
    assert response.headers["retry-after"] == header


def test_capacity_errors_say_when_to_retry_and_others_do_not() -> None:
    assert problem_response(errors.QueueUnavailable()).headers["retry-after"] == "5"
    assert "retry-after" not in problem_response(errors.InvalidRequest()).headers
    assert "retry-after" not in problem_response(errors.WaitTimedOut(job_url="/v1/jobs/job_x")).headers


def test_a_401_names_the_bearer_scheme() -> None:
    assert problem_response(errors.Unauthorized()).headers["www-authenticate"] == 'Bearer realm="captionizer"'
    assert "www-authenticate" not in problem_response(errors.CrossSiteRequest()).headers


def test_validation_errors_are_listed_without_echoing_the_input() -> None:
    class Body(BaseModel):
        prompt: str

    secret = "a whole image, or a token"
    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"prompt": [secret]})
    refusal = invalid_request(caught.value.errors())
    assert refusal.status == 422 and refusal.message.startswith("prompt:")
    assert secret not in json.dumps(problem_response(refusal).body.decode())


def _app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("database password is hunter2")

    @app.get("/gone")
    async def gone() -> None:
        raise errors.UploadExpired("the upload expired", job_id="job_x")

    @app.get("/number/{value}")
    async def number(value: int) -> int:
        return value

    return app


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/gone", 410, "upload_expired"),
        ("GET", "/number/abc", 422, "invalid_request"),
        ("GET", "/nowhere", 404, "not_found"),
        ("DELETE", "/gone", 405, "method_not_allowed"),
        ("GET", "/boom", 500, "internal_error"),
    ],
)
def test_every_failure_of_an_app_is_a_problem_with_a_code(method: str, path: str, status: int, code: str) -> None:
    with TestClient(_app(), raise_server_exceptions=False) as client:
        response = client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert response.json()["code"] == code
    assert "hunter2" not in response.text


def test_openapi_responses_group_codes_by_status_with_one_example_each() -> None:
    responses = problem_responses(errors.QueueUnavailable, errors.QueueFull, errors.JobNotFound)
    assert set(responses) == {503, 404}
    examples = responses[503]["content"][PROBLEM_MEDIA_TYPE]["examples"]
    assert set(examples) == {"queue_unavailable", "queue_full"}
    assert responses[503]["description"] == "Queue unavailable; Queue full"
    assert examples["queue_full"]["value"]["status"] == 503
