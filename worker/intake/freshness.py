"""How long a downloaded image may be reused without asking its server again: HTTP freshness (RFC 9111 §4.2).

The caption cache keys a result by the image's bytes, so a repeat must normally be downloaded to be
recognised. But a server that answers ``Cache-Control: max-age=86400`` has promised that the URL's
content may be reused for a day without asking it again, which is what every browser and CDN does
with a site's logos, icons and hero images. The caption cache takes that promise and no other
(``worker.caching``: a URL's digest is remembered for the time left, and a repeat within it is a hit
without a download).

Deliberately stricter than the RFC allows, because a wrong reuse gives a wrong caption:

- only explicit freshness counts (``max-age``, ``s-maxage`` for a shared cache, or ``Expires``); no
  heuristic freshness from ``Last-Modified`` (§4.2.2), so a server that says nothing is always asked;
- ``no-store``, ``no-cache`` (with or without field names), ``Vary: *`` or ``Pragma: no-cache`` without
  ``Cache-Control`` mean no reuse; so does ``private`` when the cache is shared between API keys (§5.2.2.7);
- only a ``200`` answered at the URL itself: a redirect's own cacheability is not worked out;
- the age the response already has (``Age``, and ``Date`` against the clock, §4.2.3) is taken off.
"""

from __future__ import annotations

import time
from datetime import UTC
from email.utils import parsedate_to_datetime

from multidict import MultiMapping

# Directives that forbid reusing a stored response without asking the server (RFC 9111 §5.2.2).
_NEVER_REUSE = frozenset({"no-store", "no-cache"})


def reusable_for_s(status: int, headers: MultiMapping[str], *, shared: bool, now_s: float | None = None) -> float:
    """Seconds for which the response may be reused without asking its server; 0 when it may not.

    ``headers`` is the response's (case-insensitive, as aiohttp's; a field sent on several lines counts as
    one comma-separated list, RFC 9110 §5.3); ``shared`` is whether the cache
    serves more than one API key (``cache_shared``); ``now_s`` the clock, epoch seconds.
    """
    if status != 200 or "*" in _tokens(_field(headers, "Vary") or ""):
        return 0.0
    cache_control = _field(headers, "Cache-Control")
    if cache_control is None:
        if "no-cache" in _tokens(_field(headers, "Pragma") or ""):
            return 0.0
        directives: dict[str, str | None] = {}
    else:
        directives = _directives(cache_control)
    if _NEVER_REUSE & directives.keys() or (shared and "private" in directives):
        return 0.0
    lifetime = _lifetime_s(directives, headers, shared=shared)
    if lifetime <= 0:
        return 0.0
    return max(0.0, lifetime - _age_s(headers, time.time() if now_s is None else now_s))


def _lifetime_s(directives: dict[str, str | None], headers: MultiMapping[str], *, shared: bool) -> float:
    """The freshness lifetime (§4.2.1): s-maxage (shared only), max-age, else Expires - Date; else 0."""
    for name in ("s-maxage", "max-age") if shared else ("max-age",):
        if name in directives:
            # An invalid value makes the response stale (§4.2.1): "max-age=soon" is 0, not absent.
            return _delta_seconds(directives[name])
    expires = _http_date(headers.get("Expires"))
    if expires is None:
        # Absent, or invalid (which §5.3 says means "already expired"): either way, no reuse.
        return 0.0
    date = _http_date(headers.get("Date"))
    return expires - date if date is not None else 0.0


def _age_s(headers: MultiMapping[str], now_s: float) -> float:
    """How old the response already is (§4.2.3, without the request's own delay): the larger of Age and now - Date."""
    age = _delta_seconds(headers.get("Age")) if "Age" in headers else 0.0
    date = _http_date(headers.get("Date"))
    apparent = max(0.0, now_s - date) if date is not None else 0.0
    return max(age, apparent)


def _field(headers: MultiMapping[str], name: str) -> str | None:
    """A field's value, its lines joined: "no-store" on a second Cache-Control line must not be missed."""
    lines = headers.getall(name, [])
    return ", ".join(lines) if lines else None


def _directives(value: str) -> dict[str, str | None]:
    """``Cache-Control``'s directives, names lower-cased, values unquoted (RFC 9111 §5.2)."""
    directives: dict[str, str | None] = {}
    for part in value.split(","):
        name, sep, argument = part.strip().partition("=")
        name = name.strip().lower()
        if name:
            # A repeated directive is a sender's error; §4.2.1 allows using the first occurrence.
            directives.setdefault(name, argument.strip().strip('"') if sep else None)
    return directives


#: What a delta-seconds value too large to represent counts as (RFC 9111 §1.2.2).
_LARGEST_DELTA_S = 2**31


def _delta_seconds(value: str | None) -> float:
    """A delta-seconds value (§1.2.2); anything that is not a non-negative integer counts as 0."""
    digits = (value or "").strip()
    if not (digits.isascii() and digits.isdigit()):
        return 0.0
    # Capped before int(): a 5,000-digit max-age would pass Python's limit on int conversion and raise.
    return float(_LARGEST_DELTA_S if len(digits) > 10 else min(int(digits), _LARGEST_DELTA_S))


def _http_date(value: str | None) -> float | None:
    """An HTTP date as epoch seconds, None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # HTTP dates are in GMT (RFC 9110 §5.6.7); a "-0000" zone parses as naive, and must not read as local time.
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",") if token.strip()}
