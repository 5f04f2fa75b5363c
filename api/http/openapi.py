"""The OpenAPI document's finishing touches: response headers described once, for every route.

FastAPI writes each route's body schema and problems; the headers the edge adds to every
``/v1`` answer (``RateLimit``, ``RateLimit-Policy``) and to refusals (``Retry-After``) are
not visible to it, so they are added here after generation, in one place.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

_RATE_LIMIT_HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit-Policy": {
        "description": 'The rate-limit policies (IETF draft-ietf-httpapi-ratelimit-headers-10): `"submit";q=60;w=30, '
        '"read";q=120;w=12`: quota q requests, refilled over w seconds.',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What is left of the policy this request spent: `"read";r=119;t=1` (r requests remain, '
        "t seconds until the bucket is full again, or until the next request is allowed after a 429).",
        "schema": {"type": "string"},
    },
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (RFC 9110 §10.2.3).",
        "schema": {"type": "integer", "minimum": 1},
    }
}
#: Header descriptions routes attach to their own success responses.
LOCATION_HEADER = {"Location": {"description": "Where to poll the job: `/v1/jobs/{id}`.", "schema": {"type": "string"}}}
PREFERENCE_APPLIED_HEADER = {
    "Preference-Applied": {
        "description": "`wait=N` when a `Prefer: wait=N` was honoured (RFC 7240 §3), N capped by max_wait_s.",
        "schema": {"type": "string"},
    }
}


def operation_id(route: APIRoute) -> str:
    """A route's operationId when it sets none: its function's name in lowerCamelCase (``read_limits`` -> ``readLimits``).

    Stable across FastAPI versions and paths, unlike FastAPI's default (``create_job_v1_jobs_post``);
    the job routes name theirs explicitly (``createJob``, ``getJob``, ``listJobs``, ``cancelJob``).
    """
    head, *rest = route.name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def install_openapi(app: FastAPI, *, max_wait_s: float) -> None:
    """Make ``app.openapi()`` describe the rate-limit headers of ``/v1`` answers and ``Retry-After`` of refusals.

    The ``wait`` parameter's ``maximum`` is this deployment's ``max_wait_s``, the bound the docs
    state, rather than the route's structural limit (larger values are capped to it, not refused).
    """

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            # FastAPI's own generator caches its result on app.openapi_schema; finish it in place once.
            schema = generate()
            _describe_headers(schema)
            _bound_waits(schema, max_wait_s)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _describe_headers(schema: dict[str, Any]) -> None:
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                headers = response.setdefault("headers", {})
                if path.startswith("/v1/"):
                    headers.update(_RATE_LIMIT_HEADERS)
                if status in ("429", "503"):
                    headers.update(_RETRY_AFTER)
                if not headers:
                    del response["headers"]


def _bound_waits(schema: dict[str, Any], max_wait_s: float) -> None:
    bound: float | int = int(max_wait_s) if float(max_wait_s).is_integer() else max_wait_s
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "wait" and parameter.get("in") == "query":
                    parameter["schema"]["maximum"] = bound
