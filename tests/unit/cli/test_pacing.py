"""cli.pacing: the RateLimit headers and Retry-After become one wait shared by every request of a policy."""

from __future__ import annotations

import httpx
import pytest

from cli.pacing import Pacer, parse_items, policy_of

POLICY = '"submit";q=60;w=30, "read";q=120;w=12'


def _answer(status: int, rate_limit: str) -> httpx.Response:
    return httpx.Response(status, headers={"RateLimit-Policy": POLICY, "RateLimit": rate_limit})


def test_structured_field_items_are_parsed() -> None:
    assert parse_items(POLICY) == {"submit": {"q": 60.0, "w": 30.0}, "read": {"q": 120.0, "w": 12.0}}
    assert parse_items(None) == {}
    assert parse_items("garbage") == {}


@pytest.mark.parametrize(
    ("method", "policy"), [("GET", "read"), ("get", "read"), ("POST", "submit"), ("DELETE", "submit")]
)
def test_gets_read_and_everything_else_submits(method: str, policy: str) -> None:
    assert policy_of(method) == policy


def test_tokens_left_mean_no_wait() -> None:
    pacer = Pacer()
    pacer.observe(_answer(202, '"submit";r=5;t=3'), policy="submit", retry_after_s=None)
    assert pacer.delay_s("submit") == 0


def test_an_empty_bucket_waits_for_one_token_of_that_policy_only() -> None:
    pacer = Pacer()
    pacer.observe(_answer(202, '"submit";r=0;t=30'), policy="submit", retry_after_s=None)
    # 60 tokens over 30 s: one every 0.5 s. Reads have their own bucket and do not wait.
    assert 0 < pacer.delay_s("submit") <= 0.5
    assert pacer.delay_s("read") == 0


def test_a_429_waits_its_retry_after_for_the_policy_it_names() -> None:
    pacer = Pacer()
    # A GET guessed as "read", but the answer says it spent "submit".
    pacer.observe(_answer(429, '"submit";r=0;t=7'), policy="read", retry_after_s=7)
    assert 6 < pacer.delay_s("submit") <= 7
    assert pacer.delay_s("read") == 0


def test_a_later_answer_never_shortens_the_wait() -> None:
    pacer = Pacer()
    pacer.observe(_answer(429, '"submit";r=0;t=9'), policy="submit", retry_after_s=9)
    pacer.observe(_answer(202, '"submit";r=0;t=1'), policy="submit", retry_after_s=None)
    assert pacer.delay_s("submit") > 8
