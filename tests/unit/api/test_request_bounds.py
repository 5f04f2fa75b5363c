"""Every field of every request is bounded in the OpenAPI schema, and the bounds hold on the wire.

The walk covers what ``app.openapi()`` publishes for requests (parameters and bodies), so a
field added later without a bound fails here before a stranger finds it (#13).
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import api.app
from shared.jobs.model import MAX_WEBHOOK_EVENTS
from tests.unit.api.conftest import ApiHarness, MakeApiSettings

# Strings that may go without maxLength: the multipart image, bounded by max_upload_bytes
# (413 upload_too_large) in a way a schema cannot state.
_BINARY = "binary"


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return _resolve(node, spec)


def _own_bound_missing(schema: dict[str, Any]) -> str | None:
    """What bound this node lacks (not looking inside it), or None."""
    kind = schema.get("type")
    if kind == "string":
        bounded = {"maxLength", "enum", "const"} & schema.keys() or schema.get("format") == _BINARY
        return None if bounded else "string without maxLength"
    if kind == "array":
        return None if "maxItems" in schema else "array without maxItems"
    if kind in ("integer", "number"):
        return None if {"maximum", "exclusiveMaximum"} & schema.keys() else f"{kind} without maximum"
    if kind == "object" and schema.get("additionalProperties") not in (None, False):
        return "object open to any member"
    return None


def unbounded_fields(schema: dict[str, Any], spec: dict[str, Any], where: str) -> Iterator[str]:
    """Where, in ``schema``, a string, array or number has no upper bound."""
    schema = _resolve(schema, spec)
    missing = _own_bound_missing(schema)
    if missing:
        yield f"{where}: {missing}"
    for key in ("anyOf", "oneOf", "allOf"):
        for index, option in enumerate(schema.get(key, [])):
            yield from unbounded_fields(option, spec, f"{where}/{key}{index}")
    if "items" in schema:
        yield from unbounded_fields(schema["items"], spec, f"{where}[]")
    for name, member in schema.get("properties", {}).items():
        yield from unbounded_fields(member, spec, f"{where}.{name}")


def request_fields(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each parameter and request body schema the spec publishes, named by operation."""
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                yield f"{method.upper()} {path} {parameter['in']}:{parameter['name']}", parameter["schema"]
            for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
                yield f"{method.upper()} {path} body({media_type})", content.get("schema", {})


@pytest.fixture
def spec(api_harness: ApiHarness) -> dict[str, Any]:
    schema: dict[str, Any] = api_harness.app.openapi()
    return schema


def test_every_request_field_has_an_upper_bound(spec: dict[str, Any]) -> None:
    fields = list(request_fields(spec))
    names = {name for name, _ in fields}
    # The walk reaches both submission bodies and the parameters of the read and blocking routes.
    assert {
        "POST /v1/jobs body(application/json)",
        "POST /v1/jobs body(multipart/form-data)",
        "GET /v1/jobs/{job_id} query:wait",
        "GET /caption query:url",
    } <= names
    problems = [problem for where, schema in fields for problem in unbounded_fields(schema, spec, where)]
    assert problems == []


def test_the_walk_catches_an_unbounded_string_array_and_number(spec: dict[str, Any]) -> None:
    loose = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "array", "items": {"type": "integer"}}},
    }
    assert list(unbounded_fields(loose, spec, "x")) == [
        "x.a: string without maxLength",
        "x.b: array without maxItems",
        "x.b[]: integer without maximum",
    ]


@pytest.fixture
def roomy_client(api_harness: ApiHarness, make_api_settings: MakeApiSettings) -> Iterator[TestClient]:
    """The app with the default 15 MiB body limit, so only the schema's bounds stand in the way."""
    with TestClient(api.app.create_app(make_api_settings())) as client:
        yield client


def test_a_million_webhook_events_are_refused_before_anything_is_stored(
    roomy_client: TestClient, api_harness: ApiHarness
) -> None:
    body = json.dumps({"image_url": "https://example.com/a.png", "webhook_events": ["running"] * 1_000_000})
    assert len(body) > 10_000_000  # the 11 MB request of #13, under the body limit
    response = roomy_client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"
    assert "webhook_events" in response.json()["detail"]
    assert api_harness.queue.queued == []

    async def keys() -> list[bytes]:
        return await api_harness.redis().keys("*")

    assert asyncio.run(keys()) == []


def test_repeated_webhook_events_count_once(client: TestClient) -> None:
    events = ["running", "failed", "running", "failed"]
    response = client.post("/v1/jobs", json={"image_url": "https://example.com/a.png", "webhook_events": events})
    assert response.status_code == 202
    assert response.json()["webhook_events"] == ["running", "failed"]
    assert client.get(response.json()["url"]).json()["webhook_events"] == ["running", "failed"]


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"webhook_events": ["running"] * (MAX_WEBHOOK_EVENTS + 1)}, 422),
        ({"webhook_events": ",".join(["running"] * 1000)}, 422),
        ({"webhook_events": "running,running,failed"}, 202),
        ({"max_new_tokens": "1025"}, 422),
        ({"deadline_s": "1e308"}, 422),
    ],
    ids=["six repeats", "a thousand, comma-separated", "repeats folded", "tokens over the ceiling", "huge deadline"],
)
def test_multipart_fields_have_the_same_bounds(client: TestClient, fields: dict[str, Any], status: int) -> None:
    response = client.post("/v1/jobs", files={"file": ("a.png", _png(), "image/png")}, data=fields)
    assert response.status_code == status, response.text
    if status == 202:
        assert response.json()["webhook_events"] == ["running", "failed"]
    else:
        assert response.json()["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image_url": "https://example.com/" + "a" * 2048}, "image_url"),
        ({"image_url": "https://example.com/a.png", "prompt": "p" * 4097}, "prompt"),
        ({"image_url": "https://example.com/a.png", "max_new_tokens": 10**9}, "max_new_tokens"),
        ({"image_url": "https://example.com/a.png", "deadline_s": 86_401}, "deadline_s"),
        ({"image_url": "https://example.com/a.png", "webhook_url": "https://e.com/" + "h" * 2048}, "webhook_url"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_json_fields_past_their_bound_are_refused_by_name(client: TestClient, body: dict[str, Any], field: str) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request" and field in response.json()["detail"]


def test_a_job_id_longer_than_any_id_is_refused_unread(client: TestClient) -> None:
    assert client.get("/v1/jobs/job_" + "a" * 2000).json()["code"] == "invalid_request"
    assert client.get("/v1/jobs/job_" + "a" * 500).json()["code"] == "job_not_found"
