"""Anonymous mode answers only the host names it serves: a guard against DNS rebinding.

A page on ``rebind.evil.example`` can make its name resolve to 127.0.0.1 after loading; the
browser then treats the local API as that page's own origin (``Origin`` and ``Sec-Fetch-Site``
say same-origin), so only the ``Host`` header still tells the two apart. Where callers need no
key, a foreign ``Host`` is refused before any route runs (OWASP DNS Rebinding; the check
Starlette's ``TrustedHostMiddleware`` makes, answered here as our usual problem response).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.http.problems import problem_response
from shared.errors import HostNotAllowed

#: Names every anonymous stack answers to: the loopback addresses and ``localhost``.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})


def host_name(host_header: str) -> str:
    """The name in a ``Host`` value, lower case, without its port (``[::1]:8000`` → ``[::1]``)."""
    value = host_header.strip().lower()
    if value.startswith("["):  # an IPv6 literal keeps its brackets (RFC 3986 §3.2.2)
        end = value.find("]")
        return value[: end + 1] if end != -1 else value
    return value.rsplit(":", 1)[0] if ":" in value else value


class HostGuardMiddleware:
    """Refuses a request whose ``Host`` names none of ``hosts`` (421 ``host_not_allowed``)."""

    def __init__(
        self, app: ASGIApp, *, extra_hosts: Iterable[str] = (), exempt_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.hosts = LOOPBACK_HOSTS | {host_name(name) for name in extra_hosts}
        # Probes (/healthz, /readyz) reveal nothing, and a platform's prober may use any name.
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("path", "") not in self.exempt_paths:
            host = Headers(scope=scope).get("host")
            if host is None or host_name(host) not in self.hosts:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                # The name is not echoed back: the refusal says which names are served instead.
                refusal = HostNotAllowed(
                    "this server answers only requests for "
                    + ", ".join(sorted(self.hosts))
                    + " (a guard against DNS rebinding; CAPTIONIZER_ANONYMOUS_HOSTS adds names)"
                )
                await problem_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)
