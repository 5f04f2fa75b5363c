"""The app as a whole: no model stack in the API process, problem handlers, OpenAPI examples."""

from __future__ import annotations

import subprocess
import sys

from fastapi.testclient import TestClient

from api.problems import problem_body
from shared.errors import FetchFailed, InternalError, all_error_classes, error_for_code
from tests.conftest import REPO_ROOT


def test_importing_the_api_never_imports_torch_or_transformers() -> None:
    code = (
        "import api.app, api.main, sys; "
        "bad = [m for m in ('torch', 'transformers', 'worker', 'model') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_error_code_maps_back_to_its_class_status() -> None:
    for cls in all_error_classes():
        assert error_for_code(cls.code, "x").status == cls.status
    assert isinstance(error_for_code("no_such_code", "x"), InternalError)


def test_problem_bodies_carry_extras_like_the_upstream_status() -> None:
    body = problem_body(FetchFailed("the image server answered 404", upstream_status=404, job_id="job_1"))
    assert body == {
        "type": "urn:captionizer:problem:fetch_failed",
        "title": "Image fetch failed",
        "status": 502,
        "detail": "the image server answered 404",
        "code": "fetch_failed",
        "upstream_status": 404,
        "job_id": "job_1",
    }


def test_openapi_documents_both_bodies_examples_and_problems(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/v1/jobs"]["post"]
    content = post["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert content["application/json"]["examples"]
    assert "application/problem+json" in post["responses"]["400"]["content"]
    assert "/caption" in schema["paths"] and "/v1/jobs/{job_id}" in schema["paths"]
    assert client.get("/docs").status_code == 200
