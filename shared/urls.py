"""Checks of image and webhook URLs that need no network: scheme, form, port, literal addresses.

STUB (owned by the intake engineer, issue 4): the full SSRF rules land here.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from shared.errors import UrlNotAllowed


def validate_url(url: str, *, allow_private: bool, allowed_ports: Sequence[int]) -> str:
    """Return the URL if its form is acceptable, else raise UrlNotAllowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlNotAllowed("only http and https URLs with a host are allowed")
    return url
