"""The API's published contract: a valid OpenAPI document with stable operationIds, every error code,
described headers and the documented wait bound; GET /v1/limits; the sample images it serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate
from PIL import Image, ImageChops

from api.http.problems import PROBLEM_CODES
from api.routes.pages import SAMPLES_DIR
from scripts.samples import SAMPLES, draw_sample
from shared.error_codes import all_error_classes
from shared.intake.uploads import IMAGE_FILE_SUFFIXES, IMAGE_MEDIA_TYPES
from shared.settings import Settings
from tests.conftest import REPO_ROOT
from tests.unit.api.conftest import ApiHarness

OPERATION_IDS = {
    ("post", "/v1/jobs"): "createJob",
    ("get", "/v1/jobs"): "listJobs",
    ("get", "/v1/jobs/{job_id}"): "getJob",
    ("post", "/v1/jobs/{job_id}/cancel"): "cancelJob",
    ("get", "/v1/limits"): "getLimits",
    ("get", "/caption"): "getCaption",
    ("get", "/healthz"): "getHealth",
    ("get", "/readyz"): "getReadiness",
    ("get", "/metrics"): "getMetrics",
}


def test_the_openapi_document_is_valid(client: TestClient) -> None:
    validate(client.get("/openapi.json").json())


def test_operation_ids_are_stable_names(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    found = {(method, path): op["operationId"] for path, ops in paths.items() for method, op in ops.items()}
    assert {key: found.get(key) for key in OPERATION_IDS} == OPERATION_IDS
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)*", op_id) for op_id in found.values()), found


def test_every_error_code_is_in_the_problem_schemas_enum(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    problem = paths["/v1/jobs"]["post"]["responses"]["422"]["content"]["application/problem+json"]["schema"]
    enum = set(problem["properties"]["code"]["enum"])
    assert {cls.code for cls in all_error_classes()} <= enum
    assert enum == set(PROBLEM_CODES)
    # docs/pipeline.md's error table names exactly the codes the spec does (one list, two readers).
    table = (REPO_ROOT / "docs" / "pipeline.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)? \|", table, re.MULTILINE))
    documented_codes = {code for pair in documented for code in pair if code}
    assert documented_codes == enum


def test_response_headers_are_described(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    created = paths["/v1/jobs"]["post"]["responses"]
    assert {"Location", "Preference-Applied", "RateLimit", "RateLimit-Policy"} <= set(created["202"]["headers"])
    assert "Retry-After" in created["429"]["headers"] and "Retry-After" in created["503"]["headers"]
    for path, operations in paths.items():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if path.startswith("/v1/"):
                    assert {"RateLimit", "RateLimit-Policy"} <= set(response["headers"]), (path, status)


def test_the_spec_states_the_servers_wait_bound(client: TestClient, api_settings: Settings) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    (wait,) = [p for p in paths["/v1/jobs/{job_id}"]["get"]["parameters"] if p["name"] == "wait"]
    assert wait["schema"]["maximum"] == api_settings.max_wait_s == 5
    # The default deployment's bound is the one the docs give.
    assert Settings().max_wait_s == 60
    assert "at most `max_wait_s`, 60 by" in (REPO_ROOT / "docs" / "pipeline.md").read_text()


def test_limits_publish_the_settings_and_formats(client: TestClient, api_settings: Settings) -> None:
    response = client.get("/v1/limits")
    assert response.status_code == 200
    body = response.json()
    assert body["max_new_tokens_limit"] == api_settings.max_new_tokens_limit == 40
    assert body["max_prompt_chars"] == 50 and body["max_upload_bytes"] == 64 * 1024
    assert body["max_wait_s"] == 5 and body["max_page_size"] == 100
    assert {f["name"]: f["media_type"] for f in body["image_formats"]} == IMAGE_MEDIA_TYPES
    assert {f["name"]: tuple(f["suffixes"]) for f in body["image_formats"]} == IMAGE_FILE_SUFFIXES
    assert ".tif" not in {s for f in body["image_formats"] for s in f["suffixes"]}


def test_every_accepted_format_has_its_suffixes() -> None:
    assert set(IMAGE_FILE_SUFFIXES) == set(IMAGE_MEDIA_TYPES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_images_are_served_as_png(client: TestClient, name: str) -> None:
    response = client.get(f"/samples/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("path", ["/samples/nothing.png", "/samples/../app.py", "/samples/%2e%2e/app.py"])
def test_unknown_samples_are_404_problems(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404


def test_committed_samples_are_what_the_drawing_code_draws() -> None:
    captions = json.loads((SAMPLES_DIR / "captions.json").read_text())
    assert captions == {name: spec.caption for name, spec in SAMPLES.items()}
    for name in SAMPLES:
        with Image.open(SAMPLES_DIR / name) as committed:
            assert ImageChops.difference(committed.convert("RGB"), draw_sample(name)).getbbox() is None, name


def test_the_readme_uses_a_sample_the_stack_serves() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "/samples/red-circle.png" in readme and "127.0.0.1:9000" not in readme
    assert Path(SAMPLES_DIR / "red-circle.png").is_file()


def test_api_harness_app_is_the_one_under_test(api_harness: ApiHarness) -> None:
    # The OpenAPI document is cached per app: a second call returns the same finished document.
    assert api_harness.app.openapi() is api_harness.app.openapi()


def test_the_pages_built_in_limits_are_the_default_servers() -> None:
    # The page replaces these from GET /v1/limits on load; until then (or against an older server) they must agree.
    html = (REPO_ROOT / "api" / "static" / "index.html").read_text()
    defaults = Settings()
    assert re.search(rf'id="max-new-tokens"[^>]*max="{defaults.max_new_tokens_limit}"', html, re.DOTALL)
    assert re.search(rf'id="prompt"[^>]*maxlength="{defaults.max_prompt_chars}"', html, re.DOTALL)
    accept = re.search(r'accept="([^"]+)"', html)
    assert accept is not None
    assert set(accept.group(1).split(",")) == {
        item for name, suffixes in IMAGE_FILE_SUFFIXES.items() for item in (IMAGE_MEDIA_TYPES[name], *suffixes)
    }
