"""The API's edge: security headers, the Front Door check, request body limits and CORS.

:func:`install_security` wires all of it into the app that ``create_app`` builds. The
middlewares are plain ASGI (no ``BaseHTTPMiddleware``), so bodies stream through
them untouched, and each refusal is the usual RFC 9457 problem.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.http.host_guard import HostGuardMiddleware
from api.http.problems import problem_response
from shared.error_families import CaptionizerError
from shared.errors import ForbiddenOrigin, HostNotAllowed, UploadTooLarge
from shared.settings import Settings

#: Paths the platform's probes and KEDA's scaler call directly, not through Front Door; they reveal nothing
#: but readiness and one count of outstanding work.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/scaler"})

# OWASP Secure Headers Project / HTTP Headers Cheat Sheet. default-src 'self' keeps the
# web page to its own scripts and styles (no inline code); frame-ancestors 'none' and
# X-Frame-Options stop clickjacking; img-src adds data:/blob: for previews of uploads.
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_COMMON_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    # Browsers ignore HSTS over plain http, so this only binds once served over TLS.
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
)
#: What the edge middlewares may answer before any route runs, for OpenAPI ``responses``.
EDGE_ERRORS: tuple[type[CaptionizerError], ...] = (ForbiddenOrigin, HostNotAllowed, UploadTooLarge)
#: Methods and headers a cross-origin page may use (CORS preflight answers).
CORS_METHODS = ("GET", "POST", "DELETE")
CORS_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Prefer")
CORS_EXPOSED_HEADERS = ("Location", "Retry-After", "RateLimit", "RateLimit-Policy", "Preference-Applied")


def _path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    return path


async def _send_problem(exc: CaptionizerError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer with the problem response ``api.http.problems`` renders for ``exc``."""
    await problem_response(exc, path=_path(scope))(scope, receive, send)


class SecurityHeadersMiddleware:
    """Adds CSP, nosniff, no-referrer, anti-framing and, under ``/v1/``, ``Cache-Control: no-store``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _path(scope)
        # OWASP REST Security: responses carrying job data must not be stored by caches.
        no_store = path.startswith("/v1/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", _CSP)
                for name, value in _COMMON_HEADERS:
                    headers.setdefault(name, value)
                if no_store:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class FrontDoorMiddleware:
    """Refuses requests whose ``X-Azure-FDID`` is not our Front Door's id (403 ``forbidden``).

    Azure Front Door adds this header to every request it forwards; checking it stops
    anyone from reaching the origin directly and bypassing the edge's WAF and limits.
    """

    def __init__(self, app: ASGIApp, *, front_door_id: str, exempt_paths: frozenset[str] = PROBE_PATHS) -> None:
        self.app = app
        self._expected = front_door_id.encode("utf-8")
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and _path(scope) not in self.exempt_paths:
            presented = Headers(scope=scope).get("x-azure-fdid", "").encode("utf-8", "surrogateescape")
            # Constant time, like any shared secret (OWASP: avoid timing side channels).
            if not hmac.compare_digest(presented, self._expected):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                refusal = ForbiddenOrigin("requests must come through Azure Front Door")
                await _send_problem(refusal, scope, receive, send)
                return
        await self.app(scope, receive, send)


class _BodyBudget:
    """Bytes received so far, and whether the request went over the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.received = 0
        self.exceeded = False
        self.response_started = False


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413 ``upload_too_large``.

    A declared ``Content-Length`` over the limit is refused before any body is read;
    a chunked (or lying) body is cut off as soon as the bytes read pass the limit
    (OWASP REST Security: limit request sizes to keep memory bounded).
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._declared_length(scope) > self.max_bytes:
            await _send_problem(self._too_large(), scope, receive, send)
            return
        budget = _BodyBudget(self.max_bytes)
        try:
            await self.app(scope, self._counting(receive, budget), self._guarded(send, budget))
        except UploadTooLarge:
            if not budget.exceeded:
                raise
        if budget.exceeded and not budget.response_started:
            await _send_problem(self._too_large(), scope, receive, send)

    def _too_large(self) -> UploadTooLarge:
        return UploadTooLarge(f"the request body is larger than {self.max_bytes} bytes")

    @staticmethod
    def _declared_length(scope: Scope) -> int:
        # A malformed Content-Length never reaches us: the server (h11/httptools) rejects it.
        value = Headers(scope=scope).get("content-length", "")
        return int(value) if value.isdigit() else 0

    def _counting(self, receive: Receive, budget: _BodyBudget) -> Receive:
        async def receive_counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                budget.received += len(message.get("body", b""))
                if budget.received > budget.limit:
                    budget.exceeded = True
                    raise self._too_large()
            return message

        return receive_counted

    @staticmethod
    def _guarded(send: Send, budget: _BodyBudget) -> Send:
        async def send_unless_exceeded(message: Message) -> None:
            # Once over the limit, whatever the app answers (FastAPI turns a failed body read
            # into its own 400) is dropped in favour of our 413.
            if budget.exceeded and not budget.response_started:
                return
            if message["type"] == "http.response.start":
                budget.response_started = True
            await send(message)

        return send_unless_exceeded


def install_security(app: FastAPI, settings: Settings) -> None:
    """Give ``app`` its edge middlewares, per ``settings``.

    Outermost first: security headers (so every answer has them), the Host guard of anonymous
    mode, the Front Door check, CORS (so browsers can read 413s and 429s), then the body limit.
    """
    # add_middleware puts each one outside the previous, so add innermost first.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            # Keys travel in a header, never in cookies, so credentials mode is never needed.
            allow_credentials=False,
            max_age=600,
        )
    if settings.front_door_id:
        app.add_middleware(FrontDoorMiddleware, front_door_id=settings.front_door_id)
    if settings.allow_anonymous:
        # Without keys the Host header is what tells this stack from a DNS-rebinding page's origin.
        app.add_middleware(HostGuardMiddleware, extra_hosts=settings.anonymous_hosts, exempt_paths=PROBE_PATHS)
    app.add_middleware(SecurityHeadersMiddleware)
