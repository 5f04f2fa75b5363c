"""SSRF-guarded outbound HTTP: the aiohttp sessions image intake and webhook delivery both connect through.

Every address a host name resolves to is checked when the connector dials it (OWASP SSRF Prevention
Cheat Sheet), so DNS rebinding and redirects to internal hosts fail; literal IP hosts are checked by
the socket factory, and each hop's URL by :func:`checked_url` before it is requested.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import AddrInfoType
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from shared.errors import UrlNotAllowed
from shared.intake.urls import is_public_address, validate_url
from shared.settings import Settings

logger = logging.getLogger(__name__)

#: Connections a worker opens to one host at once: one hostile host may not take every pooled connection.
CONNECTIONS_PER_HOST = 8


class GuardedResolver(AbstractResolver):
    """A resolver that refuses a host when any address it resolves to is internal.

    It wraps the real lookup (``dns``), so the connector dials only addresses that were checked:
    a name that resolves to 127.0.0.1, or that rebinds to it after the API accepted it, fails here.
    """

    def __init__(self, dns: AbstractResolver, *, allow_private: bool) -> None:
        self._dns = dns
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` and return its addresses, or raise UrlNotAllowed if any is internal."""
        results = await self._dns.resolve(host, port, family)
        if not self._allow_private:
            internal = [result["host"] for result in results if not is_public_address(result["host"])]
            if internal:
                # Refuse the whole name, not just the bad addresses: a public name has no internal ones.
                logger.info("refused host %s resolving to internal addresses %s", host, internal)
                raise UrlNotAllowed("the URL's host resolves to an internal address")
        return results

    async def close(self) -> None:
        """Release the wrapped resolver."""
        await self._dns.close()


def make_guarded_connector(settings: Settings, *, dns: AbstractResolver | None = None) -> aiohttp.TCPConnector:
    """A TCP connector that connects only to public addresses (unless ``allow_private_networks``).

    Call it inside the running event loop. ``dns`` replaces the system lookup (tests only).
    """
    allow_private = settings.allow_private_networks
    resolver = GuardedResolver(dns or ThreadedResolver(), allow_private=allow_private)
    return aiohttp.TCPConnector(
        resolver=resolver,
        # aiohttp skips the resolver for literal IP hosts, so the socket factory checks those.
        socket_factory=None if allow_private else _create_public_socket,
        limit_per_host=CONNECTIONS_PER_HOST,
    )


def make_egress_session(
    settings: Settings,
    *,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,
    dns: AbstractResolver | None = None,
) -> aiohttp.ClientSession:
    """A client session that reaches only allowed addresses, sending ``headers`` by default.

    Call it inside the running event loop; close it when done. Callers check each URL with
    :func:`checked_url` (and every redirect hop they choose to follow) before requesting it.
    """
    return aiohttp.ClientSession(
        connector=make_guarded_connector(settings, dns=dns),
        timeout=timeout,
        headers=dict(headers),
        # Proxies from the environment would dial the address for us, past every check (trust_env).
        trust_env=False,
        # Cookies set by one stranger's server must never reach the next request.
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )


def checked_url(url: str, settings: Settings) -> str:
    """Validate one hop's URL and make sure aiohttp will dial the very host that was validated."""
    checked = validate_url(url, allow_private=settings.allow_private_networks, allowed_ports=settings.allowed_ports)
    # Guard against parser differentials (OWASP): yarl, which aiohttp uses, must read the same host.
    try:
        ours, theirs = urlsplit(checked).hostname, URL(checked).host
    except ValueError as exc:
        raise UrlNotAllowed("the URL is malformed") from exc
    if ours is None or theirs is None or _host_key(ours) != _host_key(theirs):
        raise UrlNotAllowed("the URL's host is ambiguous")
    return checked


def _host_key(host: str) -> str:
    """The host in one canonical text form, so ``::ffff:127.0.0.1`` and ``::ffff:7f00:1`` compare equal."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.rstrip(".").lower()


def _create_public_socket(addr_info: AddrInfoType) -> socket.socket:
    """Socket factory for the connector: refuse to create a socket towards an internal address."""
    family, type_, proto, _, sockaddr = addr_info
    if not is_public_address(str(sockaddr[0])):
        raise UrlNotAllowed("the URL points to an internal address")
    return socket.socket(family=family, type=type_, proto=proto)
