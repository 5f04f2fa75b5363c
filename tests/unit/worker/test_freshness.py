"""HTTP freshness (RFC 9111 §4.2) as the caption cache reads it: only explicit promises, less the age already spent."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from multidict import CIMultiDict

from worker.intake.freshness import reusable_for_s

NOW = 1_800_000_000.0


def http_date(epoch_s: float) -> str:
    return formatdate(epoch_s, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "shared", "expected"),
    [
        ({"Cache-Control": "max-age=600"}, False, 600),
        ({"Cache-Control": "public, max-age=31536000, immutable"}, False, 31_536_000),
        ({"cache-control": 'MAX-AGE="60"'}, False, 60),  # names are case-insensitive, values may be quoted
        ({"Cache-Control": "max-age=600", "Age": "100"}, False, 500),
        ({"Cache-Control": "max-age=600", "Date": http_date(NOW - 30)}, False, 570),
        ({"Cache-Control": "max-age=600", "Age": "900"}, False, 0),  # already stale
        ({"Cache-Control": "max-age=600, no-cache"}, False, 0),
        ({"Cache-Control": 'no-cache="Set-Cookie", max-age=600'}, False, 0),
        ({"Cache-Control": "no-store, max-age=600"}, False, 0),
        ({"Cache-Control": "max-age=soon"}, False, 0),  # invalid: stale (§4.2.1), Expires not consulted
        ({"Cache-Control": "max-age=-5"}, False, 0),
        ({"Cache-Control": "max-age=\u0661\u0662"}, False, 0),  # Arabic-Indic digits are not delta-seconds
        # Too large to represent: 2^31 (RFC 9111 §1.2.2), even past Python's limit on int conversion.
        ({"Cache-Control": "max-age=" + "9" * 5000}, False, 2**31),
        ({"Cache-Control": "max-age=99999999999"}, False, 2**31),
        ({"Cache-Control": "max-age=600", "Vary": "Accept, *"}, False, 0),
        ({"Cache-Control": "max-age=600", "Vary": "Accept-Encoding"}, False, 600),  # our request headers never vary
        ({"Cache-Control": "private, max-age=600"}, False, 600),  # the cache is the key's own
        ({"Cache-Control": "private, max-age=600"}, True, 0),  # but not in a cache shared between keys
        ({"Cache-Control": "max-age=600, s-maxage=60"}, True, 60),
        ({"Cache-Control": "max-age=600, s-maxage=60"}, False, 600),
        ({"Expires": http_date(NOW + 300), "Date": http_date(NOW)}, False, 300),
        ({"Expires": "0", "Date": http_date(NOW)}, False, 0),  # invalid Expires means already expired
        ({"Expires": http_date(NOW + 300)}, False, 0),  # no Date to measure the lifetime from
        ({"Last-Modified": http_date(NOW - 86_400)}, False, 0),  # no heuristic freshness
        ({"Pragma": "no-cache", "Expires": http_date(NOW + 300), "Date": http_date(NOW)}, False, 0),
        ({}, False, 0),
    ],
)
def test_only_explicit_freshness_counts(headers: dict[str, str], shared: bool, expected: float) -> None:
    assert reusable_for_s(200, CIMultiDict(headers), shared=shared, now_s=NOW) == pytest.approx(expected, abs=1)


@pytest.mark.parametrize("status", [203, 206, 301, 304, 404])
def test_only_a_200_is_reused(status: int) -> None:
    assert reusable_for_s(status, CIMultiDict({"Cache-Control": "max-age=600"}), shared=False, now_s=NOW) == 0


def test_a_field_sent_on_two_lines_counts_whole() -> None:
    headers = CIMultiDict([("Cache-Control", "max-age=600"), ("Cache-Control", "no-store")])
    assert reusable_for_s(200, headers, shared=False, now_s=NOW) == 0
