"""Who is calling: API keys checked against their SHA-256 digests, and the owner each key maps to.

Keys are never stored, only ``sha256(key)`` in hex (settings or a secrets file).
A caller's owner id is derived from that digest, so job records, rate-limit
buckets and logs never hold a key. ``python -m api.http.auth new-key`` makes a key and
its digest; ``python -m api.http.auth hash-key`` hashes a key read from stdin.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import re
import secrets
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.error_families import CaptionizerError
from shared.errors import CrossSiteRequest, QueueUnavailable, RateLimited, Unauthorized
from shared.settings import Settings

#: Owner of every job made without a key (only when ``allow_anonymous`` is on).
ANONYMOUS_OWNER = "anonymous"
#: Hex characters of the key digest that name its owner (64 bits: unique in practice, and not the key).
OWNER_ID_HEX_CHARS = 16
#: Longest key we hash; real keys are ~47 characters, so longer ones are refused unread.
MAX_KEY_CHARS = 256
#: Prefix of generated keys, so a leaked one is easy to spot (e.g. by secret scanners).
KEY_PREFIX = "cap_"

# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token; the scheme is case-insensitive (RFC 9110 §11.1).
_BEARER = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

# W3C Fetch Metadata: what a browser sends in Sec-Fetch-Site when another site's page (or
# another port of the same host) started the request; "same-origin" and "none" (typed or
# bookmarked by the user) are the page's own.
_FOREIGN_FETCH_SITES = frozenset({"cross-site", "same-site"})

#: What ``api.deps.require_caller`` may answer, for each route's OpenAPI ``responses``.
CALLER_ERRORS: tuple[type[CaptionizerError], ...] = (Unauthorized, CrossSiteRequest, RateLimited, QueueUnavailable)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller; ``owner`` scopes its jobs and its rate limit."""

    owner: str


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of an API key, as configured in ``api_key_hashes``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A new random API key (256 bits from the OS CSPRNG)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def owner_of(digest: str) -> str:
    """The owner id of a key digest: a prefix of the digest, never the key."""
    return "key_" + digest[:OWNER_ID_HEX_CHARS]


def read_key_hashes_file(path: str | Path) -> list[str]:
    """Digests from a secrets file: one per line, blank lines and ``#`` comments allowed.

    Raises:
        ValueError: a line is not a SHA-256 hex digest (a plain key pasted by mistake, say).
    """
    digests: list[str] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.split("#", 1)[0].strip().lower()
        if not entry:
            continue
        if not _SHA256_HEX.fullmatch(entry):
            # Do not echo the line: it may be a key in plain text.
            raise ValueError(f"{path}:{number}: not a SHA-256 hex digest (store hashes, never keys)")
        digests.append(entry)
    return digests


class KeyRing:
    """The accepted key digests, and whether a caller without a key is served."""

    def __init__(self, digests: Iterable[str], *, allow_anonymous: bool) -> None:
        self._digests: tuple[bytes, ...] = tuple(sorted({d.lower().encode("ascii") for d in digests}))
        self.allow_anonymous = allow_anonymous

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """The key ring of ``api_key_hashes`` plus the lines of ``api_key_hashes_file``."""
        digests = list(settings.api_key_hashes)
        if settings.api_key_hashes_file:
            digests += read_key_hashes_file(settings.api_key_hashes_file)
        return cls(digests, allow_anonymous=settings.allow_anonymous)

    def __len__(self) -> int:
        return len(self._digests)

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization`` header value stands for.

        Fails closed (OWASP ASVS V2/V4): with no keys configured and anonymous mode
        off, every request is refused. A header that is present but wrong is refused
        even in anonymous mode, so a typo'd key never silently becomes "anonymous".

        Raises:
            Unauthorized: the header is missing, malformed, or names no known key.
        """
        if authorization is None or authorization == "":
            if self.allow_anonymous:
                return Caller(ANONYMOUS_OWNER)
            raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
        match = _BEARER.fullmatch(authorization)
        if match is None or len(match.group(1)) > MAX_KEY_CHARS:
            raise Unauthorized("the Authorization header must be 'Bearer <key>'")
        digest = self._find(hash_key(match.group(1)))
        if digest is None:
            raise Unauthorized("the API key is not valid")
        return Caller(owner_of(digest))

    def _find(self, digest: str) -> str | None:
        """The configured digest equal to ``digest``, compared in constant time.

        Every configured digest is compared (no early exit), with
        ``hmac.compare_digest`` (OWASP: compare secrets in constant time).
        """
        candidate = digest.encode("ascii")
        found: bytes | None = None
        for known in self._digests:
            if hmac.compare_digest(candidate, known):
                found = known
        return found.decode("ascii") if found is not None else None


def check_same_origin(headers: Mapping[str, str], own_origin: str, allowed_origins: Collection[str]) -> None:
    """Refuse a request that another site's page made a browser send (for callers without a key).

    In anonymous mode (``make run``) the API cannot tell its developer's curl from a page
    they happen to visit, and a multipart POST needs no CORS preflight: any site could
    submit jobs, and webhooks into the developer's network, with the browser as its proxy
    (OWASP CSRF Prevention: Fetch Metadata, then Origin). Requests with neither header
    (curl, the CLI) and the API's own page (same origin) pass; so do ``cors_origins``.

    Raises:
        CrossSiteRequest: ``Sec-Fetch-Site`` is cross-site or same-site, or ``Origin`` is another origin.
    """
    origin = headers.get("origin")
    if origin is not None and origin in allowed_origins:
        return
    site = headers.get("sec-fetch-site", "").lower()
    if site in _FOREIGN_FETCH_SITES or (origin is not None and origin != own_origin):
        raise CrossSiteRequest(
            "a page on another site cannot use this API without a key (Origin or Sec-Fetch-Site is cross-site)"
        )


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.http.auth", description="Make and hash Captionizer API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("hash-key", help="read a key from stdin, print its SHA-256 digest for api_key_hashes")
    commands.add_parser("new-key", help="print a new random key and, on the next line, its digest")
    args = parser.parse_args(argv)
    if args.command == "new-key":
        key = new_key()
        print(key)
        print(hash_key(key))
        return 0
    key = sys.stdin.readline().strip()
    if not key:
        print("no key on stdin", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
