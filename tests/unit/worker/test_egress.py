"""The SSRF guard of every outbound request: resolver, socket factory, per-hop URL check, session defaults."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from shared.errors import UrlNotAllowed
from shared.settings import Settings
from worker.egress import GuardedResolver, checked_url, make_egress_session

PUBLIC_IP = "93.184.216.34"


class TableDns(AbstractResolver):
    """Answers every name with the same addresses."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {"hostname": host, "host": a, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("internal", ["127.0.0.1", "10.0.0.5", "169.254.169.254", "::1"])
def test_a_name_with_any_internal_address_is_refused(internal: str) -> None:
    guard = GuardedResolver(TableDns(PUBLIC_IP, internal), allow_private=False)
    with pytest.raises(UrlNotAllowed):
        asyncio.run(guard.resolve("rebinding.example", 443))


def test_private_networks_allowed_resolve_as_they_are() -> None:
    guard = GuardedResolver(TableDns("127.0.0.1"), allow_private=True)
    assert [r["host"] for r in asyncio.run(guard.resolve("localhost", 80))] == ["127.0.0.1"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://169.254.169.254/latest/meta-data",
        "ftp://example.com/x",
        "https://example.com:8443/x",
    ],
)
def test_a_hop_to_an_internal_address_or_other_scheme_or_port_is_refused(url: str) -> None:
    with pytest.raises(UrlNotAllowed):
        checked_url(url, Settings())


def test_a_public_url_passes_unchanged() -> None:
    assert checked_url("https://example.com/a.png?x=1", Settings()) == "https://example.com/a.png?x=1"


def test_a_literal_internal_address_is_refused_at_connect_time() -> None:
    # aiohttp skips the resolver for literal IPs: the socket factory refuses them (no URL check here).
    async def post() -> None:
        session = make_egress_session(Settings(), headers={}, timeout=aiohttp.ClientTimeout(total=5))
        async with session, session.post("http://127.0.0.1:9/hook"):
            pass

    with pytest.raises((UrlNotAllowed, aiohttp.ClientError)) as caught:
        asyncio.run(post())
    refusal = caught.value
    while refusal is not None and not isinstance(refusal, UrlNotAllowed):
        refusal = refusal.__cause__ or refusal.__context__
    assert isinstance(refusal, UrlNotAllowed)


def test_the_session_ignores_proxies_and_keeps_no_cookies() -> None:
    async def inspect() -> tuple[bool, type, str]:
        session = make_egress_session(Settings(), headers={"user-agent": "t"}, timeout=aiohttp.ClientTimeout(total=1))
        async with session:
            return session.trust_env, type(session.cookie_jar), session.headers["user-agent"]

    assert asyncio.run(inspect()) == (False, aiohttp.DummyCookieJar, "t")
