"""Keeping to the server's pace: ``Retry-After`` and the IETF ``RateLimit`` headers, shared by every request in flight.

The API meters each key with token buckets, one per policy (``"submit"`` for new work, ``"read"``
for polling), and says so on every ``/v1`` answer: ``RateLimit-Policy: "submit";q=60;w=30`` (a
bucket of ``q`` tokens refilled over ``w`` seconds) and ``RateLimit: "submit";r=0;t=30`` (``r``
tokens left). When a policy's bucket is empty (``r=0``) or a 429 says ``Retry-After``, every request
of that policy waits until a token is back, instead of each finding out with a 429 of its own.
Ref: https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx

#: The policy a request spends when the answer does not name one: reads poll, everything else submits.
READ_POLICY, SUBMIT_POLICY = "read", "submit"
_ITEM = re.compile(r'"(?P<name>[^"]+)"(?P<params>(?:;[a-z]+=[0-9.]+)*)')
_PARAM = re.compile(r";([a-z]+)=([0-9.]+)")


def policy_of(method: str) -> str:
    """The budget a request of ``method`` spends on the API: GETs read, the rest submit."""
    return READ_POLICY if method.upper() == "GET" else SUBMIT_POLICY


def parse_items(value: str | None) -> dict[str, dict[str, float]]:
    """A structured-field list such as ``"submit";q=60;w=30, "read";q=120;w=12`` as ``{name: {param: number}}``."""
    items: dict[str, dict[str, float]] = {}
    for match in _ITEM.finditer(value or ""):
        items[match.group("name")] = {key: float(number) for key, number in _PARAM.findall(match.group("params"))}
    return items


class Pacer:
    """When each policy has a token again, learned from the answers; requests wait for their policy's time."""

    def __init__(self) -> None:
        self._ready_at: dict[str, float] = {}

    def delay_s(self, policy: str) -> float:
        """Seconds until ``policy`` has a token again (0 when it has one now, as far as we know)."""
        return max(0.0, self._ready_at.get(policy, 0.0) - time.monotonic())

    async def wait(self, policy: str) -> None:
        """Sleep until ``policy`` has a token again, re-checking: another answer may have pushed the time back."""
        while (delay_s := self.delay_s(policy)) > 0:
            await asyncio.sleep(delay_s)

    def observe(self, response: httpx.Response, *, policy: str, retry_after_s: float | None) -> None:
        """Learn from one answer: a 429's ``Retry-After``, or an empty bucket in ``RateLimit``."""
        state = parse_items(response.headers.get("RateLimit"))
        # The answer names the policy it spent; trust it over our guess from the method.
        name = next(iter(state), policy)
        if response.status_code == 429 and retry_after_s is not None:
            self._push(name, retry_after_s)
            return
        left = state.get(name, {})
        if left.get("r") == 0:
            quota = parse_items(response.headers.get("RateLimit-Policy")).get(name, {})
            q, w = quota.get("q"), quota.get("w")
            # One token comes back every w/q seconds; without the policy, wait for the whole reset.
            self._push(name, w / q if q and w else left.get("t", 1.0))

    def _push(self, policy: str, delay_s: float) -> None:
        self._ready_at[policy] = max(self._ready_at.get(policy, 0.0), time.monotonic() + delay_s)
