"""Checks of image and webhook URLs that need no network: scheme, form, port, literal addresses.

The API runs :func:`validate_url` when a job is submitted and the worker runs it again on every
redirect hop; :func:`is_public_address` is the rule the worker's resolver applies to every address
a host name resolves to at connect time (OWASP SSRF Prevention Cheat Sheet: validate the URL,
then the resolved address, since a name can point anywhere, and point elsewhere a second later).

Literal hosts are read the way browsers and ``inet_aton`` read them (WHATWG URL Standard,
"IPv4 parser"), so ``http://2130706433/``, ``http://0177.0.0.1/``, ``http://0x7f.1/`` and
``http://127.1/`` are all seen as 127.0.0.1 and refused.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import SplitResult, urlsplit, urlunsplit

from shared.errors import UrlNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Ports implied by each scheme we fetch (RFC 9110 §4.2).
DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}

# RFC 9110 §4.1 asks senders and recipients to support at least 8000 octets; nothing longer is an image link.
_MAX_URL_CHARS = 8000
# RFC 1035 §2.3.4: a name is at most 253 characters in text form (255 octets on the wire).
_MAX_HOST_CHARS = 253
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?")
# Control characters, space and backslash: WHATWG parsers strip tabs and newlines and read "\" as "/",
# urllib does neither, and that difference is a classic way past a validator (OWASP "URL parser confusion").
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
# Names that resolve to internal hosts by definition: RFC 6761 §6.3 (localhost), RFC 6762 (.local, mDNS),
# RFC 8375 (.home.arpa), and ICANN's 2024 reservation of .internal (e.g. cloud metadata names).
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa")

# IANA special-purpose registries (RFC 6890 and updates). ipaddress's is_global covers most of these,
# but its tables vary between Python patch releases, so the list is spelled out and both must agree.
_BLOCKED_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network", RFC 791; 0.0.0.0 reaches localhost on Linux
        # Azure's WireServer: public by IANA, but on every Azure host it answers the VM agent, DHCP, DNS
        # and load-balancer probes (learn.microsoft.com/azure/virtual-network/what-is-ip-address-168-63-129-16).
        "168.63.129.16/32",
        "10.0.0.0/8",  # private, RFC 1918
        "100.64.0.0/10",  # carrier-grade NAT, RFC 6598
        "127.0.0.0/8",  # loopback, RFC 1122
        # link-local, RFC 3927: 169.254.169.254 is the metadata service of Azure (IMDS) and the other clouds,
        # 169.254.169.253 a cloud DNS resolver.
        "169.254.0.0/16",
        "172.16.0.0/12",  # private, RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments, RFC 6890
        "192.0.2.0/24",  # TEST-NET-1, RFC 5737
        "192.88.99.0/24",  # 6to4 relay anycast, RFC 7526
        "192.168.0.0/16",  # private, RFC 1918
        "198.18.0.0/15",  # benchmarking, RFC 2544
        "198.51.100.0/24",  # TEST-NET-2, RFC 5737
        "203.0.113.0/24",  # TEST-NET-3, RFC 5737
        "224.0.0.0/4",  # multicast, RFC 5771
        "240.0.0.0/4",  # reserved, RFC 1112; includes 255.255.255.255 broadcast
    )
)
_BLOCKED_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/96",  # unspecified, loopback and IPv4-compatible, RFC 4291 §2.5.5.1
        "::ffff:0:0/96",  # IPv4-mapped, RFC 4291 §2.5.5.2
        "::ffff:0:0:0/96",  # IPv4-translated, RFC 2765
        "64:ff9b:1::/48",  # local-use NAT64, RFC 8215
        # Teredo, RFC 4380: tunnels to an (obfuscated) IPv4 client behind a NAT; obsolete, no honest image host.
        "2001::/32",
        "100::/64",  # discard-only, RFC 6666
        "2001:db8::/32",  # documentation, RFC 3849
        "fc00::/7",  # unique local, RFC 4193
        "fe80::/10",  # link-local, RFC 4291
        "fec0::/10",  # site-local (deprecated), RFC 3879
        "ff00::/8",  # multicast, RFC 4291
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address
# RFC 5214 §6.1: an ISATAP interface identifier is 0000:5efe or 0200:5efe (u bit), then an IPv4 address;
# some stacks also set the g bit (0100, 0300), so those two bits are masked out.
_ISATAP_IID_MASK = 0xFCFFFFFF
_ISATAP_IID = 0x00005EFE


def validate_url(url: str, *, allow_private: bool, allowed_ports: Sequence[int]) -> str:
    """Return ``url`` normalised (host in ASCII, lower case) if it may be fetched, else raise UrlNotAllowed.

    Refuses anything but http and https, malformed URLs, user info, ports outside ``allowed_ports``,
    and, unless ``allow_private``, hosts that are internal by their spelling alone: literal internal
    addresses in any notation, ``localhost`` and other internal-only names, and single-label names.
    """
    parts = _split(url)
    host, port_text = _split_netloc(parts.netloc)
    ascii_host = _to_ascii_host(host)
    port = _check_port(port_text, parts.scheme, allowed_ports)
    if host.startswith("["):
        _check_ipv6_literal(ascii_host, allow_private)
    else:
        _check_name_or_ipv4(ascii_host, allow_private)
    netloc = ascii_host if not port_text else f"{ascii_host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def is_public_address(ip: str | IPAddress) -> bool:
    """Whether ``ip`` is a globally routable unicast address a stranger's URL may make us connect to.

    False for loopback, private, link-local (169.254.169.254 included), carrier-grade NAT, multicast,
    reserved, unspecified and documentation ranges; for IPv4-mapped, -compatible and -translated IPv6,
    local-use NAT64 and Teredo; for 6to4, NAT64 and ISATAP addresses that embed an internal IPv4
    address; and for Azure's WireServer (168.63.129.16), public by IANA but internal on Azure.
    Unparseable input is False.
    """
    try:
        address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_global and not any(address in net for net in _BLOCKED_V4)
    if any(address in net for net in _BLOCKED_V6) or not address.is_global:
        return False
    return all(is_public_address(embedded) for embedded in _embedded_ipv4(address))


def parse_ipv4_host(host: str) -> ipaddress.IPv4Address | None:
    """Read ``host`` as browsers do (WHATWG "IPv4 parser"): the address, or None for a host name.

    Accepts the legacy ``inet_aton`` spellings: 1 to 4 parts, each decimal, octal (leading 0) or
    hex (leading 0x), the last part filling the remaining bytes. A host whose last label looks like
    a number but that is not a valid address is refused (browsers refuse it too).
    """
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # a trailing dot is allowed: "127.0.0.1." is 127.0.0.1
    if not _is_ipv4_number(labels[-1]):
        return None
    numbers = [_parse_ipv4_number(label) for label in labels]
    valid = [n for n in numbers if n is not None]
    if len(labels) > 4 or len(valid) != len(numbers) or any(n > 255 for n in valid[:-1]):
        raise UrlNotAllowed("the host is not a valid IPv4 address")
    if valid[-1] >= 256 ** (5 - len(valid)):
        raise UrlNotAllowed("the host is not a valid IPv4 address")
    value = valid[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(valid[:-1]))
    return ipaddress.IPv4Address(value)


def _split(url: str) -> SplitResult:
    if len(url) > _MAX_URL_CHARS:
        raise UrlNotAllowed(f"the URL is longer than {_MAX_URL_CHARS} characters")
    if _UNSAFE_CHARS.search(url):
        raise UrlNotAllowed("the URL contains spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced or invalid [IPv6] host
        raise UrlNotAllowed("the URL is malformed") from exc
    if parts.scheme not in DEFAULT_PORTS:
        raise UrlNotAllowed("only http and https URLs are allowed")
    if not url.lower().startswith(f"{parts.scheme}://"):
        raise UrlNotAllowed("the URL must have the form scheme://host/path")
    return parts


def _split_netloc(netloc: str) -> tuple[str, str]:
    """Split the authority into host (brackets kept for IPv6) and port text."""
    if "@" in netloc:
        # "http://example.com@127.0.0.1/" names 127.0.0.1; user info has no use in an image link.
        raise UrlNotAllowed("URLs with user info (user:password@) are not allowed")
    if netloc.startswith("["):
        inside, bracket, rest = netloc.partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise UrlNotAllowed("the URL's IPv6 host is malformed")
        return inside + bracket, rest[1:]
    host, _, port_text = netloc.partition(":")
    if not host:
        raise UrlNotAllowed("the URL has no host")
    return host, port_text


def _to_ascii_host(host: str) -> str:
    """The host as the client will send it: IDNA-encoded and lower case (RFC 3490)."""
    if host.startswith("["):
        return host.lower()
    try:
        # IDNA maps full-width digits and ideographic dots ("127。0。0。1") to ASCII, exactly as
        # yarl does before aiohttp connects, so the checks below see what will be dialled.
        ascii_host = host.encode("idna").decode("ascii").lower() if not host.isascii() else host.lower()
    except UnicodeError as exc:
        raise UrlNotAllowed("the URL's host is not a valid domain name") from exc
    if len(ascii_host) > _MAX_HOST_CHARS or not _HOST_NAME.fullmatch(ascii_host):
        raise UrlNotAllowed("the URL's host is not a valid domain name")
    return ascii_host


def _check_port(port_text: str, scheme: str, allowed_ports: Sequence[int]) -> int:
    if port_text and not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise UrlNotAllowed("the URL's port is not a number")
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    if port not in allowed_ports:
        raise UrlNotAllowed(f"port {port} is not allowed")
    return port


def _check_ipv6_literal(bracketed: str, allow_private: bool) -> None:
    literal = bracketed[1:-1]
    if "%" in literal:
        # Zone ids (RFC 6874) only name link-local interfaces of this machine.
        raise UrlNotAllowed("IPv6 zone identifiers are not allowed")
    try:
        address = ipaddress.IPv6Address(literal)
    except ValueError as exc:
        raise UrlNotAllowed("the URL's IPv6 host is malformed") from exc
    if not allow_private and not is_public_address(address):
        raise UrlNotAllowed("the URL points to an internal address")


def _check_name_or_ipv4(host: str, allow_private: bool) -> None:
    address = parse_ipv4_host(host)
    if address is None:
        if not allow_private:
            _check_public_name(host)
        return
    if not allow_private and not is_public_address(address):
        raise UrlNotAllowed("the URL points to an internal address")
    if host.rstrip(".") != str(address):
        # Decimal, octal, hex and short forms have no honest use; aiohttp refuses them too.
        raise UrlNotAllowed("IPv4 addresses must be written in dotted-decimal form")


def _check_public_name(host: str) -> None:
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(_INTERNAL_SUFFIXES):
        raise UrlNotAllowed("the URL names an internal host")
    if "." not in name:
        # Single-label names ("redis", "api") are resolved by search domains: compose and cluster services.
        raise UrlNotAllowed("the URL's host must be a fully qualified domain name")


def _is_ipv4_number(label: str) -> bool:
    """WHATWG "ends in a number": all digits, or parseable as an IPv4 number (0x-hex included)."""
    return label != "" and ((label.isascii() and label.isdigit()) or _parse_ipv4_number(label) is not None)


def _parse_ipv4_number(label: str) -> int | None:
    """One part of a legacy IPv4 host: decimal, 0-prefixed octal or 0x-prefixed hex (WHATWG)."""
    if label[:2].lower() == "0x":
        digits, alphabet, base = label[2:], "0123456789abcdefABCDEF", 16
    elif len(label) > 1 and label[0] == "0":
        digits, alphabet, base = label[1:], "01234567", 8
    else:
        digits, alphabet, base = label, "0123456789", 10
    if not digits:
        return 0 if base == 16 else None  # "0x" alone is 0 to browsers
    if any(char not in alphabet for char in digits):
        return None
    return int(digits, base)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a 6to4 (RFC 3056), NAT64 (RFC 6052) or ISATAP (RFC 5214) address reaches.

    IPv4-mapped, -compatible and -translated, local-use NAT64 and Teredo addresses need no entry here:
    their ranges are refused whole.
    """
    embedded: list[ipaddress.IPv4Address] = []
    if address.sixtofour is not None:
        embedded.append(address.sixtofour)
    low = int(address)
    if address in _NAT64:
        embedded.append(ipaddress.IPv4Address(low & 0xFFFFFFFF))
    if (low >> 32) & _ISATAP_IID_MASK == _ISATAP_IID:
        embedded.append(ipaddress.IPv4Address(low & 0xFFFFFFFF))
    return embedded
