"""The network-free URL checks: which image and webhook URLs the API and the worker accept."""

from __future__ import annotations

import ipaddress

import pytest

from shared.errors import UrlNotAllowed
from shared.intake.urls import is_public_address, parse_ipv4_host, validate_url

PORTS = (80, 443)

# (url, what validate_url returns) for URLs a stranger may submit.
ACCEPTED = [
    ("http://example.com/cat.png", "http://example.com/cat.png"),
    ("https://images.example.com/a/b.jpg?w=200&sig=abc", "https://images.example.com/a/b.jpg?w=200&sig=abc"),
    ("HTTPS://Example.COM/Cat.PNG", "https://example.com/Cat.PNG"),
    ("https://example.com:443/x.png", "https://example.com:443/x.png"),
    ("http://example.com:0080/x.png", "http://example.com:80/x.png"),
    ("http://example.com:/x.png", "http://example.com/x.png"),
    ("http://example.com", "http://example.com"),
    ("http://example.com./x.png", "http://example.com./x.png"),
    ("http://my_bucket.example.com/x.png", "http://my_bucket.example.com/x.png"),
    ("http://8.8.8.8/x.png", "http://8.8.8.8/x.png"),
    ("http://[2606:4700:4700::1111]/x.png", "http://[2606:4700:4700::1111]/x.png"),
    ("http://例え.jp/猫.png", "http://xn--r8jz45g.jp/猫.png"),
    ("http://example.com/x.png#fragment", "http://example.com/x.png#fragment"),
    ("http://[2002:808:808::1]/x.png", "http://[2002:808:808::1]/x.png"),  # 6to4 around a public address
]


@pytest.mark.parametrize(("url", "expected"), ACCEPTED)
def test_public_http_urls_are_accepted_and_normalised(url: str, expected: str) -> None:
    assert validate_url(url, allow_private=False, allowed_ports=PORTS) == expected


# (url, why it is refused): every one must fail with url_not_allowed, even for a public-looking host.
REFUSED = [
    # scheme and form
    ("ftp://example.com/x.png", "ftp scheme"),
    ("file:///etc/passwd", "file scheme"),
    ("gopher://example.com:70/_INFO", "gopher scheme (classic Redis SSRF)"),
    ("javascript:alert(1)", "javascript scheme"),
    ("data:image/png;base64,iVBORw0KGgo=", "data URL"),
    ("//example.com/x.png", "scheme-relative"),
    ("example.com/x.png", "no scheme"),
    ("http:example.com/x.png", "no authority"),
    ("http:/example.com/x.png", "one slash"),
    ("http:///x.png", "empty host"),
    ("http://:80/x.png", "port without host"),
    ("", "empty"),
    ("http://exa mple.com/", "space in host"),
    (" http://example.com/", "leading space"),
    ("http://example.com/\n.png", "newline"),
    ("http://example.com/\t", "tab"),
    ("http://example.com\x00.evil/", "NUL byte"),
    ("http://example.com\\@127.0.0.1/", "backslash: WHATWG reads it as a slash"),
    ("http://" + "a" * 8000 + ".com/", "too long"),
    ("http://a..b.com/", "empty label"),
    ("http://-bad.com/", "label starting with a hyphen"),
    ("http://%31%32%37.0.0.1/", "percent-encoded host"),
    ("http://exa$mple.com/", "character not allowed in a host name"),
    ("http://" + "a" * 64 + ".com/", "label longer than 63"),
    ("http://[::1/", "unbalanced IPv6 bracket"),
    ("http://[not-v6]/", "bracketed non-address"),
    ("http://[::1]junk/", "text after the IPv6 bracket"),
    ("http://\u00ad/", "host that IDNA maps to nothing"),
    # user info
    ("http://user@example.com/", "user info"),
    ("http://user:pass@example.com/", "credentials"),
    ("http://example.com@127.0.0.1/", "user info hiding the real host"),
    ("http://example.com:80@169.254.169.254/", "port-looking user info"),
    # ports
    ("http://example.com:8080/", "port not in the list"),
    ("http://example.com:6379/", "Redis port"),
    ("http://example.com:22/", "SSH port"),
    ("http://example.com:0/", "port 0"),
    ("http://example.com:99999/", "port out of range"),
    ("http://example.com:8o/", "non-numeric port"),
    ("http://example.com:+80/", "signed port"),
    ("http://example.com:\uff18\uff10/", "full-width digits in port"),
    ("http://example.com:80:80/", "two ports"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_malformed_or_disallowed_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UrlNotAllowed):
        validate_url(url, allow_private=True, allowed_ports=PORTS)


# Hosts that reach internal addresses by their spelling alone, in every notation browsers accept.
INTERNAL_HOSTS = [
    "127.0.0.1",
    "127.255.255.254",
    "localhost",
    "LOCALHOST",
    "localhost.",
    "app.localhost",
    "printer.local",
    "metadata.google.internal",
    "router.home.arpa",
    "redis",  # single label: a compose or cluster service name
    "10.0.0.5",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # Azure, AWS and GCP instance metadata
    "169.254.0.1",
    "100.64.0.1",  # carrier-grade NAT
    "100.127.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",  # broadcast
    "192.0.0.8",
    "192.0.2.1",  # TEST-NET-1
    "198.18.0.1",  # benchmarking
    "2130706433",  # 127.0.0.1 in decimal
    "0x7f000001",  # hex
    "017700000001",  # octal
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0x7F.0x00.0x00.0x01",
    "0177.0.0.01",
    "127.1",  # short forms: the last part fills the remaining bytes
    "127.0.1",
    "0",
    "0x",  # browsers read a bare 0x as 0
    "0xa9fea9fe",  # 169.254.169.254 in hex
    "2852039166",  # 169.254.169.254 in decimal
    "0251.0376.0251.0376",  # 169.254.169.254 in octal
    "169.254.43518",  # 169.254.169.254, short form
    "127.0.0.1.",  # trailing dot
    "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # full-width digits: IDNA maps them to ASCII
    "127。0。0。1",  # ideographic full stops: IDNA maps them to dots
    "[::1]",
    "[::]",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:7f00:1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:8.8.8.8]",  # mapped, even around a public address: no honest use
    "[::127.0.0.1]",  # IPv4-compatible (deprecated)
    "[::ffff:0:127.0.0.1]",  # IPv4-translated
    "[fe80::1]",  # link-local
    "[fc00::1]",  # unique local
    "[fd12:3456:789a::1]",
    "[fec0::1]",  # site-local
    "[ff02::1]",  # multicast
    "[2001:db8::1]",  # documentation
    "[100::1]",  # discard
    "[2002:7f00:1::1]",  # 6to4 around 127.0.0.1
    "[2002:a9fe:a9fe::]",  # 6to4 around 169.254.169.254
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo around 127.0.0.1
    "[64:ff9b::7f00:1]",  # NAT64 around 127.0.0.1
    "[64:ff9b::a9fe:a9fe]",  # NAT64 around 169.254.169.254
    "[64:ff9b:1::1]",  # local-use NAT64
    "[fe80::1%25eth0]",  # zone identifier
]


@pytest.mark.parametrize("host", INTERNAL_HOSTS)
def test_internal_hosts_are_refused_by_their_spelling(host: str) -> None:
    with pytest.raises(UrlNotAllowed):
        validate_url(f"http://{host}/latest/meta-data/", allow_private=False, allowed_ports=PORTS)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000/x.png", "http://localhost/x.png", "http://redis/x.png", "http://[::1]/x.png"]
)
def test_allow_private_networks_lets_internal_hosts_through(url: str) -> None:
    assert validate_url(url, allow_private=True, allowed_ports=(80, 8000)) == url


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0x08.0x08.0x08.0x08", "134744072"])
def test_legacy_ipv4_spellings_are_refused_even_where_private_is_allowed(host: str) -> None:
    # Browsers read them, aiohttp refuses them: one honest spelling, so nothing differs between the two.
    with pytest.raises(UrlNotAllowed):
        validate_url(f"http://{host}/", allow_private=True, allowed_ports=PORTS)


@pytest.mark.parametrize(
    "host", ["256.0.0.1", "1.2.3.4.5", "1.2.3.256.", "08.0.0.1", "0x1g.0.0.1", "example.123", "1.16777216"]
)
def test_hosts_ending_in_a_number_that_is_no_address_are_refused(host: str) -> None:
    with pytest.raises(UrlNotAllowed):
        validate_url(f"http://{host}/", allow_private=True, allowed_ports=PORTS)


def test_the_default_port_follows_the_scheme() -> None:
    assert validate_url("https://example.com/", allow_private=False, allowed_ports=[443])
    with pytest.raises(UrlNotAllowed, match="port 80"):
        validate_url("http://example.com/", allow_private=False, allowed_ports=[443])


def test_the_refusal_carries_the_url_not_allowed_code() -> None:
    with pytest.raises(UrlNotAllowed) as caught:
        validate_url("http://169.254.169.254/", allow_private=False, allowed_ports=PORTS)
    assert (caught.value.code, caught.value.status) == ("url_not_allowed", 400)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("1.2.3.4.", "1.2.3.4"),
        ("4294967295", "255.255.255.255"),
        ("0XA9.0xFE.0251.254", "169.254.169.254"),
    ],
)
def test_ipv4_hosts_are_parsed_as_browsers_parse_them(host: str, address: str) -> None:
    assert parse_ipv4_host(host) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize("host", ["example.com", "1.2.3.example", "0x7f.example", "localhost", "a1", "0x1g"])
def test_host_names_are_not_read_as_addresses(host: str) -> None:
    assert parse_ipv4_host(host) is None


@pytest.mark.parametrize("host", ["4294967296", "1.2.65536", "1.256.1.1", "1.2.3.4.5", "09", "0x1g.1"])
def test_out_of_range_ipv4_numbers_are_refused(host: str) -> None:
    with pytest.raises(UrlNotAllowed):
        parse_ipv4_host(host)


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:82b::200e", "2002:808:808::1"],
)
def test_public_addresses_are_public(address: str) -> None:
    assert is_public_address(address)
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "240.0.0.1",
        "255.255.255.255",
        "203.0.113.9",
        "198.51.100.7",
        "192.88.99.1",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:8.8.8.8",
        "::127.0.0.1",
        "fe80::1",
        "fe80::1%eth0",
        "fd00::1",
        "ff02::1",
        "2001:db8::1",
        "2002:7f00:1::1",
        "2002:a00:1::1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::a00:1",
        "not an address",
        "",
    ],
)
def test_internal_and_unparseable_addresses_are_not_public(address: str) -> None:
    assert not is_public_address(address)


# Azure's platform addresses, and every IPv6 form that embeds an IPv4 address: (address, public?).
# The same rule runs at submit (literal hosts) and at connect (every resolved address), for images and webhooks.
PLATFORM_AND_EMBEDDED = [
    ("168.63.129.16", False),  # Azure WireServer: DHCP, DNS, VM agent, load-balancer probes
    ("168.63.129.17", True),  # its neighbour is an ordinary public address
    ("169.254.169.254", False),  # Azure IMDS
    ("169.254.169.253", False),  # cloud DNS resolver (link-local)
    ("::ffff:168.63.129.16", False),  # IPv4-mapped
    ("::168.63.129.16", False),  # IPv4-compatible
    ("::ffff:0:168.63.129.16", False),  # IPv4-translated
    ("64:ff9b::a83f:8110", False),  # NAT64 around the WireServer
    ("64:ff9b::a9fe:a9fe", False),  # NAT64 around IMDS
    ("64:ff9b::808:808", True),  # NAT64 around a public address: how IPv6-only networks reach IPv4 hosts
    ("64:ff9b:1::a83f:8110", False),  # local-use NAT64: refused whole
    ("64:ff9b:1::808:808", False),
    ("2002:a83f:8110::1", False),  # 6to4 around the WireServer
    ("2002:a9fe:a9fe::1", False),  # 6to4 around IMDS
    ("2002:808:808::1", True),  # 6to4 around a public address
    ("2001:0:4136:e378:8000:63bf:57c0:7eef", False),  # Teredo, obfuscated client 168.63.129.16
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", False),  # Teredo, client 8.8.8.8: refused whole
    ("2001:4860:1::5efe:7f00:1", False),  # ISATAP interface id around 127.0.0.1
    ("2001:4860:1:0:200:5efe:a9fe:a9fe", False),  # ISATAP with the u bit, around IMDS
    ("2001:4860:1:0:100:5efe:a83f:8110", False),  # ISATAP with the g bit, around the WireServer
    ("2001:4860:1::5efe:808:808", True),  # ISATAP around a public address
]


@pytest.mark.parametrize(("address", "public"), PLATFORM_AND_EMBEDDED)
def test_platform_addresses_and_embedded_ipv4_are_classified_exactly(address: str, public: bool) -> None:
    assert is_public_address(address) is public


@pytest.mark.parametrize(("address", "public"), PLATFORM_AND_EMBEDDED)
def test_platform_addresses_and_embedded_ipv4_are_refused_at_submit(address: str, public: bool) -> None:
    host = f"[{address}]" if ":" in address else address
    url = f"http://{host}/cat.png"
    if public:
        assert validate_url(url, allow_private=False, allowed_ports=PORTS) == url
    else:
        with pytest.raises(UrlNotAllowed, match="internal address"):
            validate_url(url, allow_private=False, allowed_ports=PORTS)
