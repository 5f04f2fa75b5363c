"""The app as a whole: no model stack in the API process, problem handlers, OpenAPI examples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from api.http.problems import problem_body
from shared.error_codes import all_error_classes, error_for_code
from shared.errors import FetchFailed, InternalError
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


def test_importing_the_entry_point_builds_nothing_until_uvicorn_calls_the_factory(tmp_path: Path) -> None:
    # A broken setting fails only when the factory runs: importing api.main reads no setting at all.
    code = (
        "import api.main\n"
        "try:\n"
        "    api.main.create_app_from_env()\n"
        "except FileNotFoundError:\n"
        "    print('factory read the settings')\n"
    )
    env = {**os.environ, "CAPTIONIZER_API_KEY_HASHES_FILE": str(tmp_path / "missing")}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "factory read the settings"


def test_only_api_deps_reads_the_apps_state() -> None:
    readers = [
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "api").rglob("*.py")
        if "app.state." in path.read_text(encoding="utf-8")
    ]
    # api/app.py writes the one Services object; api/deps.py is its one reader.
    assert sorted(readers) == ["api/app.py", "api/deps.py"]
