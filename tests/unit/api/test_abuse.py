"""A table of abusive requests, each with the status and problem code it must get; none may be a 5xx.

Requests go straight into the ASGI app as raw scopes, so the table can hold bytes a
well-behaved client library would refuse to send (CRLF in headers, NUL in paths,
non-UTF-8 bodies). The app runs against a real redis-server, with two keys.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from api.app import create_app
from api.http.auth import hash_key, owner_of
from shared.jobs.model import Job, new_job_id
from shared.jobs.store import JobStore
from shared.keys import Keys
from shared.settings import Settings
from tests.unit.api.conftest import build_api_settings

KEY_A = "cap_abuse-owner-a-0123456789abcdefghijklmnopqrstuv"
KEY_B = "cap_abuse-owner-b-0123456789abcdefghijklmnopqrstuv"
MAX_REQUEST_BYTES = 64 * 1024
PREFIX = "captionizer-abuse"


@dataclass
class Answer:
    """What the app sent back to one raw request."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        return next((v.decode("latin-1") for k, v in self.headers if k.lower() == wanted), None)

    def problem(self) -> dict[str, Any]:
        assert self.header("content-type") == "application/problem+json", self.body[:300]
        body: dict[str, Any] = json.loads(self.body)
        return body


@dataclass
class Abuse:
    """One abusive request: ``{job_a}`` in the target is A's job id; ``key`` is A's or B's key (or raw)."""

    target: str
    status: int
    code: str
    method: str = "GET"
    auth: str | None = "B"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes | list[bytes] = b""
    json_body: Any = None


async def call(
    app: FastAPI, method: str, target: bytes, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> Answer:
    """Send one request as uvicorn would (path percent-decoded, raw_path kept) and collect the answer."""
    raw_path, _, query = target.partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": query,
        "headers": [(b"host", b"testserver"), *headers],
        "state": {},
    }
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    pending = pending or [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], list(start.get("headers", [])), body)


def _settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "key_prefix": PREFIX,
        "max_request_bytes": MAX_REQUEST_BYTES,
        "max_upload_bytes": MAX_REQUEST_BYTES // 2,
    }
    return build_api_settings(keys=[KEY_A, KEY_B], redis_url=redis_url, **{**values, **overrides})


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, str]]:
    """The app inside its lifespan, and the id of a queued job owned by key A."""
    redis = Redis.from_url(settings.redis_url)
    try:
        await redis.flushdb()
        job_id = new_job_id()
        await JobStore(redis, Keys(PREFIX), 600).create(
            Job(id=job_id, owner=owner_of(hash_key(KEY_A)), image_url="https://example.com/a.png")
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            yield app, job_id
    finally:
        await redis.flushdb()
        await redis.aclose()


def _request_parts(abuse: Abuse, job_id: str) -> tuple[bytes, list[tuple[bytes, bytes]], list[bytes]]:
    headers = list(abuse.headers)
    if abuse.auth in ("A", "B"):
        headers.append((b"authorization", f"Bearer {KEY_A if abuse.auth == 'A' else KEY_B}".encode()))
    elif abuse.auth is not None:
        headers.append((b"authorization", abuse.auth.encode("utf-8")))
    chunks = abuse.body if isinstance(abuse.body, list) else [abuse.body]
    if abuse.json_body is not None:
        chunks = [json.dumps(abuse.json_body).encode()]
    if abuse.json_body is not None or (abuse.method == "POST" and not any(k == b"content-type" for k, _ in headers)):
        headers.append((b"content-type", b"application/json"))
    if not isinstance(abuse.body, list):
        headers.append((b"content-length", str(len(chunks[0])).encode()))
    return abuse.target.replace("{job_a}", job_id).encode("utf-8"), headers, chunks


_HUGE = b"x" * (MAX_REQUEST_BYTES + 1)
_VALID = {"image_url": "https://example.com/cat.jpg"}
_PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")

ABUSES: dict[str, Abuse] = {
    # --- who is asking ------------------------------------------------------------------
    "missing key": Abuse("/v1/jobs/{job_a}", 401, "unauthorized", auth=None),
    "unknown key": Abuse("/v1/jobs/{job_a}", 401, "unauthorized", auth="Bearer cap_not-a-key"),
    "basic scheme": Abuse("/v1/jobs/{job_a}", 401, "unauthorized", auth=f"Basic {KEY_A}"),
    "bearer without token": Abuse("/v1/jobs/{job_a}", 401, "unauthorized", auth="Bearer "),
    "key hash sent as key": Abuse("/v1/jobs/{job_a}", 401, "unauthorized", auth=f"Bearer {hash_key(KEY_A)}"),
    "crlf injected after key": Abuse("/v1/jobs/{job_a}", 401, "unauthorized", auth=f"Bearer {KEY_A}\r\nX-Owner: admin"),
    "non-ascii key": Abuse("/v1/jobs/{job_a}", 401, "unauthorized", auth="Bearer clé-ключ-🔑"),
    "two authorization headers": Abuse(
        "/v1/jobs/{job_a}", 401, "unauthorized", headers=[(b"authorization", b"Bearer cap_forged")], auth="A"
    ),
    "missing key on submit": Abuse("/v1/jobs", 401, "unauthorized", method="POST", auth=None, json_body=_VALID),
    # --- whose job ----------------------------------------------------------------------
    "another key's job": Abuse("/v1/jobs/{job_a}", 404, "job_not_found"),
    "another key's job, long-polled": Abuse("/v1/jobs/{job_a}?wait=60", 404, "job_not_found"),
    "another key's job, canceled": Abuse("/v1/jobs/{job_a}/cancel", 404, "job_not_found", method="POST"),
    "path traversal in job id": Abuse("/v1/jobs/job_..%2F..%2Fjob_x", 404, "not_found"),
    "dot segments as job id": Abuse("/v1/jobs/..", 404, "job_not_found"),
    "redis glob as job id": Abuse("/v1/jobs/job_*", 404, "job_not_found"),
    "redis key separator in job id": Abuse("/v1/jobs/job_a:job:b", 404, "job_not_found"),
    "nul byte in job id": Abuse("/v1/jobs/job_abc%00def0123456789abcdef", 404, "job_not_found"),
    "crlf in job id": Abuse("/v1/jobs/job_a%0D%0ASet-Cookie:%20x=1", 404, "job_not_found"),
    "unicode job id": Abuse("/v1/jobs/job_%E2%80%AEabcdefghijklmnopqrstu", 404, "job_not_found"),
    "10k-character job id": Abuse("/v1/jobs/job_" + "a" * 10_000, 422, "invalid_request"),
    # --- query strings ------------------------------------------------------------------
    "negative wait": Abuse("/v1/jobs/{job_a}?wait=-1", 422, "invalid_request", auth="A"),
    "infinite wait": Abuse("/v1/jobs/{job_a}?wait=inf", 422, "invalid_request", auth="A"),
    "nan wait": Abuse("/v1/jobs/{job_a}?wait=nan", 422, "invalid_request", auth="A"),
    "crlf in query": Abuse("/v1/jobs/{job_a}?wait=1%0D%0ASet-Cookie:%20x=1", 422, "invalid_request", auth="A"),
    "caption of a file url": Abuse("/caption?url=file:///etc/passwd", 400, "url_not_allowed"),
    "caption of the metadata address": Abuse(
        "/caption?url=http://169.254.169.254/latest/meta-data/", 400, "url_not_allowed"
    ),
    "caption url with crlf": Abuse("/caption?url=http://example.com/%0D%0AHost:%20evil", 400, "url_not_allowed"),
    "unknown method": Abuse("/v1/jobs", 405, "method_not_allowed", method="PUT"),
    # --- bodies -------------------------------------------------------------------------
    "body over the limit": Abuse("/v1/jobs", 413, "upload_too_large", method="POST", body=_HUGE),
    "chunked body over the limit": Abuse("/v1/jobs", 413, "upload_too_large", method="POST", body=[b"x" * 16_384] * 5),
    "body over the limit without a key": Abuse(
        "/v1/jobs", 413, "upload_too_large", method="POST", body=_HUGE, auth=None
    ),
    "bad json": Abuse("/v1/jobs", 422, "invalid_request", method="POST", body=b'{"image_url": '),
    "json array": Abuse("/v1/jobs", 422, "invalid_request", method="POST", json_body=[_VALID]),
    "invalid utf-8": Abuse("/v1/jobs", 422, "invalid_request", method="POST", body=b'{"image_url": "\xff\xfe"}'),
    "deeply nested json": Abuse("/v1/jobs", 422, "invalid_request", method="POST", body=b"[" * 20_000 + b"]" * 20_000),
    "wrong type for max_new_tokens": Abuse(
        "/v1/jobs", 422, "invalid_request", method="POST", json_body={**_VALID, "max_new_tokens": "ten"}
    ),
    "negative max_new_tokens": Abuse(
        "/v1/jobs", 422, "invalid_request", method="POST", json_body={**_VALID, "max_new_tokens": -5}
    ),
    "huge max_new_tokens": Abuse(
        "/v1/jobs", 422, "invalid_request", method="POST", json_body={**_VALID, "max_new_tokens": 10**40}
    ),
    "oversized prompt": Abuse(
        "/v1/jobs", 422, "invalid_request", method="POST", json_body={**_VALID, "prompt": "p" * 501}
    ),
    "unknown field": Abuse("/v1/jobs", 422, "invalid_request", method="POST", json_body={**_VALID, "owner": "key_a"}),
    "url of another scheme": Abuse(
        "/v1/jobs", 400, "url_not_allowed", method="POST", json_body={"image_url": "gopher://127.0.0.1:6379/_FLUSHALL"}
    ),
    "url with crlf": Abuse(
        "/v1/jobs", 400, "url_not_allowed", method="POST", json_body={"image_url": "http://example.com/\r\nHost: evil"}
    ),
    "crlf in idempotency key": Abuse(
        "/v1/jobs",
        422,
        "invalid_request",
        method="POST",
        json_body=_VALID,
        headers=[(b"idempotency-key", b"k1\r\nSet-Cookie: x=1")],
    ),
    "10k-character idempotency key": Abuse(
        "/v1/jobs",
        422,
        "invalid_request",
        method="POST",
        json_body=_VALID,
        headers=[(b"idempotency-key", b"k" * 10_000)],
    ),
    "text/plain body": Abuse(
        "/v1/jobs", 415, "unsupported_media_type", method="POST", body=b"hi", headers=[(b"content-type", b"text/plain")]
    ),
    "multipart without a file": Abuse(
        "/v1/jobs",
        422,
        "invalid_request",
        method="POST",
        headers=[(b"content-type", b"multipart/form-data; boundary=xx")],
        body=b'--xx\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhi\r\n--xx--\r\n',
    ),
    "multipart field given twice": Abuse(
        "/v1/jobs",
        422,
        "invalid_request",
        method="POST",
        headers=[(b"content-type", b"multipart/form-data; boundary=xx")],
        body=b'--xx\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na\r\n'
        b'--xx\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nb\r\n'
        b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + _PNG + b"\r\n--xx--\r\n",
    ),
    "multipart with a broken boundary": Abuse(
        "/v1/jobs",
        422,
        "invalid_request",
        method="POST",
        headers=[(b"content-type", b"multipart/form-data; boundary=xx")],
        body=b"--yy\r\ngarbage",
    ),
}


@pytest.mark.parametrize("abuse", ABUSES.values(), ids=ABUSES.keys())
def test_abusive_request_gets_its_status_and_code(abuse: Abuse, redis_server_url: str) -> None:
    async def scenario() -> None:
        async with running_app(_settings(redis_server_url)) as (app, job_id):
            target, headers, chunks = _request_parts(abuse, job_id)
            started = time.monotonic()
            answer = await call(app, abuse.method, target, headers, chunks)
            elapsed_s = time.monotonic() - started
        assert answer.status < 500, answer.body[:500]
        assert (answer.status, answer.problem()["code"]) == (abuse.status, abuse.code), answer.body[:500]
        assert answer.header("set-cookie") is None and answer.header("x-owner") is None
        # A refusal never waits, even when a long-poll (60 s) was asked for; half of it is margin for a loaded machine.
        assert elapsed_s < 30

    asyncio.run(scenario())


def test_the_owner_still_reads_its_own_job(redis_server_url: str) -> None:
    async def scenario() -> None:
        async with running_app(_settings(redis_server_url)) as (app, job_id):
            target, headers, chunks = _request_parts(Abuse("/v1/jobs/{job_a}", 200, "", auth="A"), job_id)
            answer = await call(app, "GET", target, headers, chunks)
        assert answer.status == 200
        assert json.loads(answer.body)["id"] == job_id and "owner" not in json.loads(answer.body)

    asyncio.run(scenario())
