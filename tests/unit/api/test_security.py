"""The API's edge: security headers, Front Door, body limits, CORS, and rate limits on the job routes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.app import create_app
from api.http.auth import hash_key
from api.http.security import _CSP, BodyLimitMiddleware
from shared.settings import Settings

KEY_A = "cap_security-owner-a-0123456789abcdefghijklmnopqrs"
KEY_B = "cap_security-owner-b-0123456789abcdefghijklmnopqrs"
FDID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
NO_JOB = "/v1/jobs/job_AAAAAAAAAAAAAAAAAAAAAA"


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(fresh_redis_url: str) -> SettingsFactory:
    """Settings for an app on the session's redis-server (flushed first), with two keys and no rate limit."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": fresh_redis_url,
            "key_prefix": "captionizer-security",
            "api_key_hashes": [hash_key(KEY_A), hash_key(KEY_B)],
            "rate_limit_per_minute": 0,
        }
        return Settings(**{**values, **overrides})

    return make


def _auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def send(settings: Settings, *requests: tuple[str, str, dict[str, str]]) -> list[httpx.Response]:
    """Send ``(method, path, headers)`` requests, in order, to a fresh app inside its lifespan."""

    async def go() -> list[httpx.Response]:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return [await client.request(method, path, headers=headers) for method, path, headers in requests]

    return asyncio.run(go())


# --- security headers -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", NO_JOB, "/openapi.json"])
def test_every_answer_carries_the_security_headers(path: str, make_settings: SettingsFactory) -> None:
    (response,) = send(make_settings(), ("GET", path, {}))
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]


def test_job_api_answers_are_not_cached(make_settings: SettingsFactory) -> None:
    health, job = send(make_settings(), ("GET", "/healthz", {}), ("GET", NO_JOB, _auth()))
    assert job.headers["cache-control"] == "no-store"
    assert "cache-control" not in health.headers


@pytest.mark.parametrize("path", ["/docs", "/docs/swagger-init.js", "/docs/assets/redoc.standalone.js"])
def test_the_docs_pages_live_under_the_strict_csp(make_settings: SettingsFactory, path: str) -> None:
    (docs,) = send(make_settings(), ("GET", path, {}))
    assert docs.status_code == 200
    # Their assets come from this server (api/routes/docs.py): no CDN, no inline script.
    assert docs.headers["content-security-policy"] == _CSP


def test_redoc_adds_only_inline_styles_and_its_search_worker(make_settings: SettingsFactory) -> None:
    (redoc,) = send(make_settings(), ("GET", "/redoc", {}))
    policy = dict(part.strip().split(" ", 1) for part in redoc.headers["content-security-policy"].split(";"))
    strict = dict(part.strip().split(" ", 1) for part in _CSP.split(";"))
    assert policy.pop("style-src") == "'self' 'unsafe-inline'"
    assert policy.pop("worker-src") == "'self' blob:"
    assert policy == strict and "script-src" not in policy  # scripts: default-src 'self', nothing inline


def test_401_names_the_bearer_scheme(make_settings: SettingsFactory) -> None:
    (response,) = send(make_settings(), ("GET", NO_JOB, {}))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_openapi_documents_bearer_auth(make_settings: SettingsFactory) -> None:
    (response,) = send(make_settings(), ("GET", "/openapi.json", {}))
    schemes = response.json()["components"]["securitySchemes"]
    assert any(scheme == {"type": "http", "scheme": "bearer", **_description(scheme)} for scheme in schemes.values())


def _description(scheme: dict[str, Any]) -> dict[str, Any]:
    return {"description": scheme["description"]} if "description" in scheme else {}


# --- Front Door -------------------------------------------------------------------------


@pytest.mark.parametrize("fdid", [None, "", "another-front-door", FDID.upper(), FDID + " "])
def test_front_door_refuses_requests_without_its_id(fdid: str | None, make_settings: SettingsFactory) -> None:
    headers = {} if fdid is None else {"X-Azure-FDID": fdid}
    (response,) = send(make_settings(front_door_id=FDID), ("GET", NO_JOB, {**headers, **_auth()}))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "forbidden"
    assert response.headers["x-frame-options"] == "DENY"


def test_front_door_lets_its_own_requests_through(make_settings: SettingsFactory) -> None:
    (response,) = send(make_settings(front_door_id=FDID), ("GET", NO_JOB, {"X-Azure-FDID": FDID, **_auth()}))
    assert response.status_code == 404 and response.json()["code"] == "job_not_found"


def test_front_door_check_spares_the_platform_probes(make_settings: SettingsFactory) -> None:
    (health,) = send(make_settings(front_door_id=FDID), ("GET", "/healthz", {}))
    assert health.status_code == 200


def test_without_a_front_door_id_no_header_is_needed(make_settings: SettingsFactory) -> None:
    (response,) = send(make_settings(), ("GET", "/healthz", {}))
    assert response.status_code == 200


# --- CORS -------------------------------------------------------------------------------

_PREFLIGHT = {
    "Origin": "https://app.example.com",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


def test_cors_is_same_origin_only_by_default(make_settings: SettingsFactory) -> None:
    preflight, get = send(
        make_settings(),
        ("OPTIONS", "/v1/jobs", _PREFLIGHT),
        ("GET", NO_JOB, {"Origin": "https://evil.example.com", **_auth()}),
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in get.headers


def test_cors_allows_the_configured_origins_only(make_settings: SettingsFactory) -> None:
    allowed, refused, get = send(
        make_settings(cors_origins=["https://app.example.com"]),
        ("OPTIONS", "/v1/jobs", _PREFLIGHT),
        ("OPTIONS", "/v1/jobs", {**_PREFLIGHT, "Origin": "https://evil.example.com"}),
        ("GET", NO_JOB, {"Origin": "https://app.example.com", **_auth()}),
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-credentials" not in allowed.headers
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    assert get.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "retry-after" in get.headers["access-control-expose-headers"].lower()


# --- body limits ------------------------------------------------------------------------


def _echo_app() -> ASGIApp:
    app = FastAPI()

    @app.post("/echo")
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    return BodyLimitMiddleware(app, max_bytes=1024)


def test_declared_oversized_body_is_refused_before_reading_it() -> None:
    reads: list[Message] = []

    async def receive() -> Message:
        reads.append({})
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Message] = []

    async def capture(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [(b"content-length", b"999999")]}
    app = _echo_app()
    asyncio.run(_call(app, scope, receive, capture))
    assert sent[0]["status"] == 413 and reads == []


async def _call(app: Any, scope: Scope, receive: Receive, send: Send) -> None:
    await app(scope, receive, send)


def test_body_under_the_limit_passes() -> None:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=_echo_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/echo", json={"a": "b" * 900})

    response = asyncio.run(go())
    assert response.status_code == 200


def test_streamed_oversized_body_is_cut_off_with_413() -> None:
    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 512

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=_echo_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/echo", content=chunks(), headers={"content-type": "application/json"})

    response = asyncio.run(go())
    assert response.status_code == 413
    assert response.json()["code"] == "upload_too_large"


# --- rate limits through the app (real Redis) --------------------------------------------


def test_job_routes_answer_429_with_retry_after_past_the_burst(make_settings: SettingsFactory) -> None:
    # Reading a job spends the read budget (api/http/ratelimit.py's "read" policy).
    settings = make_settings(rate_limit_reads_per_minute=6, rate_limit_reads_burst=2)
    responses = send(settings, *[("GET", NO_JOB, _auth())] * 3)
    assert [r.status_code for r in responses] == [404, 404, 429]
    limited = responses[-1]
    assert limited.json()["code"] == "rate_limited"
    assert limited.headers["retry-after"].isdigit() and 1 <= int(limited.headers["retry-after"]) <= 10


def test_rate_limits_are_per_key(make_settings: SettingsFactory) -> None:
    settings = make_settings(rate_limit_reads_per_minute=6, rate_limit_reads_burst=1)
    responses = send(
        settings, ("GET", NO_JOB, _auth(KEY_A)), ("GET", NO_JOB, _auth(KEY_A)), ("GET", NO_JOB, _auth(KEY_B))
    )
    assert [r.status_code for r in responses] == [404, 429, 404]


def test_probes_docs_and_static_files_are_not_rate_limited(make_settings: SettingsFactory) -> None:
    # No caption worker runs in unit tests, so /readyz must not wait for one.
    settings = make_settings(rate_limit_per_minute=1, rate_limit_burst=1, ready_requires_worker=False)
    paths = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/", "/static/app.js"] * 3
    responses = send(settings, *[("GET", path, _auth()) for path in paths])
    assert all(r.status_code == 200 for r in responses), [(r.url.path, r.status_code) for r in responses]


def test_unauthenticated_requests_do_not_spend_a_keys_tokens(make_settings: SettingsFactory) -> None:
    settings = make_settings(rate_limit_reads_per_minute=6, rate_limit_reads_burst=1)
    responses = send(settings, *[("GET", NO_JOB, {})] * 5, ("GET", NO_JOB, _auth()))
    assert [r.status_code for r in responses] == [401] * 5 + [404]


def test_anonymous_mode_serves_requests_without_a_key(make_settings: SettingsFactory) -> None:
    settings = make_settings(allow_anonymous=True, api_key_hashes=[])
    (response,) = send(settings, ("GET", NO_JOB, {}))
    assert response.status_code == 404 and response.json()["code"] == "job_not_found"
