"""``Prefer: wait=N`` (RFC 7240 §4.3): how long a client would like ``POST /v1/jobs`` to wait for its job."""

from __future__ import annotations

import re
from collections.abc import Iterable

# RFC 7240 §2: preference = token [ BWS "=" BWS word ] *( OWS ";" [ OWS parameter ] ); word is a token
# or a quoted-string. Only the name and its value matter here; parameters are ignored.
_PREFERENCE = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("[^"]*"|[^;,\s]*))?')


def preferred_wait_s(values: Iterable[str]) -> float | None:
    """The ``wait`` preference in seconds from every ``Prefer`` header value, or None when absent or invalid.

    RFC 7240 §2: a preference the server does not understand, or whose value is malformed, is
    ignored rather than refused; the first ``wait`` wins when several are given (§2: a
    repeated preference takes its first instance).
    """
    for value in values:
        for item in value.split(","):
            match = _PREFERENCE.match(item.split(";", 1)[0])
            if match is None or match.group(1).lower() != "wait":
                continue
            text = (match.group(2) or "").strip('"')
            # delta-seconds (RFC 9111 §1.2.2): digits only.
            return float(text) if text.isdigit() and len(text) <= 6 else None
    return None


def preference_applied(wait_s: float) -> str:
    """The ``Preference-Applied`` value (RFC 7240 §3) for the wait the server honoured."""
    return f"wait={round(wait_s)}"
