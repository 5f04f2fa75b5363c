"""Hostile image URLs through the real aiohttp fetch and the real decoder, against ``tests/servers.py``.

Content cases reach the 127.0.0.1 server with ``allow_private_networks`` on. SSRF cases run with it
off: the DNS lookup under the guarded resolver is replaced by a table (``FakeDns``), and a test event
loop forwards TCP connections for one public address to the local server (``NatLoop``), so a public
name can reach the test server and everything after it is checked by the code under test, unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from PIL import Image, ImageFile

from shared.error_families import CaptionizerError
from shared.errors import FetchFailed
from shared.settings import Settings
from tests.servers import BLUE, GREEN, RED, WHITE, HostileServer, hostile_images
from worker.egress import GuardedResolver
from worker.intake.images import ImageBytes, decode_image, fetch_image_bytes, make_fetch_session

pytestmark = pytest.mark.timeout(60)

#: The side git-base's image processor resizes to; decoding keeps at most twice it on the shorter side.
MODEL_INPUT_PX = 224
#: A public address (the old example.com) that ``NatLoop`` forwards to the local server.
PUBLIC_IP = "93.184.216.34"


class FakeDns(AbstractResolver):
    """The lookup under the guarded resolver, from a table; each name may change answer per lookup."""

    def __init__(self, table: dict[str, Sequence[Sequence[str]]]) -> None:
        self._answers = {name: list(answers) for name, answers in table.items()}
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        if host not in self._answers:
            raise OSError(socket.EAI_NONAME, f"{host} not in the test DNS table")
        answers = self._answers[host]
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]  # the last answer repeats
        return [_result(host, address, port) for address in addresses]

    async def close(self) -> None:
        pass


def _result(host: str, address: str, port: int) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return {"hostname": host, "host": address, "port": port, "family": family, "proto": 0, "flags": 0}


class NatLoop(asyncio.SelectorEventLoop):
    """An event loop whose TCP connects to ``PUBLIC_IP`` land on 127.0.0.1, as a NAT would."""

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        if address[0] == PUBLIC_IP:
            address = ("127.0.0.1", address[1])
        await super().sock_connect(sock, address)


@pytest.fixture(autouse=True)
def restore_pillow_bomb_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """decode_image sets Pillow's process-wide limit from the settings; later tests must not inherit ours."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


@pytest.fixture(scope="module")
def server() -> Iterator[HostileServer]:
    with HostileServer() as running:
        yield running


def make_settings(server: HostileServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "allow_private_networks": True,
        "allowed_ports": [80, 443, server.port],
        "fetch_connect_timeout_s": 1.0,
        "fetch_timeout_s": 3.0,
        "max_redirects": 3,
        "max_image_bytes": 1024 * 1024,
    }
    return Settings(**(values | overrides))


def intake(url: str, settings: Settings, dns: FakeDns | None = None) -> Image.Image:
    """Fetch and decode ``url`` as the worker does, with a fresh session."""

    async def fetch() -> bytes:
        async with make_fetch_session(settings, dns=dns) as session:
            return (await fetch_image_bytes(session, url, settings)).data

    with asyncio.Runner(loop_factory=NatLoop) as runner:
        data = runner.run(fetch())
    return decode_image(data, settings, model_input_px=MODEL_INPUT_PX)


def error_of(url: str, settings: Settings, dns: FakeDns | None = None) -> CaptionizerError:
    with pytest.raises(CaptionizerError) as caught:
        intake(url, settings, dns)
    return caught.value


def assert_close(pixel: Any, expected: tuple[int, int, int], tolerance: int = 12) -> None:
    assert all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True)), (pixel, expected)


# --- content: one row per hostile route, each with its exact error code ------------------------------

HOSTILE_CONTENT = [
    # (path, settings overrides, code)
    ("/status/404", {}, "fetch_failed"),
    ("/status/500", {}, "fetch_failed"),
    ("/status/204", {}, "not_an_image"),
    ("/image/page.html", {}, "not_an_image"),
    ("/image/notes.txt", {}, "not_an_image"),
    ("/image/drawing.svg", {}, "not_an_image"),
    ("/image/photo.tiff", {}, "not_an_image"),
    ("/image/empty.png", {}, "not_an_image"),
    ("/image/gzip-bomb.png", {}, "not_an_image"),
    ("/image/truncated.png", {}, "image_corrupt"),
    ("/image/truncated.jpg", {}, "image_corrupt"),
    ("/image/corrupt.png", {}, "image_corrupt"),
    ("/image/corrupt.jpg", {}, "image_corrupt"),
    ("/image/signature-only.png", {}, "image_corrupt"),
    ("/image/bomb.png", {}, "too_many_pixels"),
    ("/image/bomb.gif", {}, "too_many_pixels"),
    ("/image/bomb.jpg", {}, "too_many_pixels"),
    ("/image/shape.png", {"max_image_pixels": 10_000}, "too_many_pixels"),  # > 2x: Pillow's own error
    ("/image/shape.png", {"max_image_pixels": 20_000}, "too_many_pixels"),  # 1-2x: Pillow only warns
    ("/drip", {"fetch_timeout_s": 0.6}, "fetch_timeout"),
    ("/slow-headers", {"fetch_timeout_s": 0.6}, "fetch_timeout"),
    ("/endless", {"max_image_bytes": 65_536}, "image_too_large"),
    ("/declared-huge", {}, "image_too_large"),
    ("/image/large.jpg", {"max_image_bytes": 4096}, "image_too_large"),
    ("/lying-long", {}, "fetch_failed"),
    ("/lying-short", {}, "image_corrupt"),
    ("/chain/4", {}, "fetch_failed"),
    ("/chain/1", {"max_redirects": 0}, "fetch_failed"),
    ("/loop", {}, "fetch_failed"),
    ("/no-location", {}, "fetch_failed"),
    ("/redirect?to=file:///etc/passwd", {}, "url_not_allowed"),
    ("/redirect?to=gopher://127.0.0.1:6379/_INFO", {}, "url_not_allowed"),
    ("/redirect?to=ftp://example.com/cat.png", {}, "url_not_allowed"),
    ("/redirect?to=javascript:alert(1)", {}, "url_not_allowed"),
    ("/redirect?to=http://127.0.0.1:6379/", {}, "url_not_allowed"),  # port not on the list
    ("/redirect?to=http://user:pw@127.0.0.1/", {}, "url_not_allowed"),
    ("/redirect?to=http://[::1", {}, "url_not_allowed"),  # malformed Location
]


@pytest.mark.parametrize(("path", "overrides", "code"), HOSTILE_CONTENT)
def test_hostile_content_fails_with_its_exact_code(
    server: HostileServer, path: str, overrides: dict[str, Any], code: str
) -> None:
    assert error_of(server.url(path), make_settings(server, **overrides)).code == code


@pytest.mark.parametrize(("path", "status"), [("/status/404", 404), ("/status/500", 500), ("/no-location", 302)])
def test_upstream_status_is_recorded(server: HostileServer, path: str, status: int) -> None:
    error = error_of(server.url(path), make_settings(server))
    assert isinstance(error, FetchFailed)
    assert error.extra == {"upstream_status": status}


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding(
    server: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[object] = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image) or load(image))
    assert error_of(server.url("/image/bomb.png"), make_settings(server)).code == "too_many_pixels"
    assert decoded == []


# --- content: images that are hard but honest decode to the right RGB pixels -----------------------


def test_a_good_png_decodes_pixel_for_pixel(server: HostileServer) -> None:
    image = intake(server.url("/image/shape.png"), make_settings(server))
    original = Image.open(io.BytesIO(hostile_images()["shape.png"][0])).convert("RGB")
    assert image.mode == "RGB"
    assert image.tobytes() == original.tobytes()


@pytest.mark.parametrize("name", ["shape.jpg", "shape.webp", "shape.bmp"])
def test_other_accepted_formats_decode_to_rgb(server: HostileServer, name: str) -> None:
    image = intake(server.url(f"/image/{name}"), make_settings(server))
    assert (image.mode, image.size) == ("RGB", (160, 160) if name != "shape.bmp" else (96, 96))


def test_a_cmyk_jpeg_becomes_rgb(server: HostileServer) -> None:
    image = intake(server.url("/image/cmyk.jpg"), make_settings(server))
    assert image.mode == "RGB"
    assert_close(image.getpixel((16, 16)), (255, 0, 0))


def test_a_16_bit_png_is_scaled_not_clipped(server: HostileServer) -> None:
    image = intake(server.url("/image/gray16.png"), make_settings(server))
    assert image.getpixel((5, 5)) == (128, 128, 128)


@pytest.mark.parametrize(
    ("name", "opaque"), [("palette-transparent.png", RED), ("rgba.png", GREEN)], ids=["palette", "rgba"]
)
def test_transparency_is_composited_over_white(server: HostileServer, name: str, opaque: tuple[int, int, int]) -> None:
    image = intake(server.url(f"/image/{name}"), make_settings(server))
    assert image.mode == "RGB"
    assert image.getpixel((2, 10)) == WHITE
    assert image.getpixel((38, 10)) == opaque


def test_a_transparent_grey_image_is_white(server: HostileServer) -> None:
    assert intake(server.url("/image/la.png"), make_settings(server)).getpixel((0, 0)) == WHITE


def test_only_the_first_frame_of_an_animation_is_used(server: HostileServer) -> None:
    image = intake(server.url("/image/animated.gif"), make_settings(server))
    assert_close(image.getpixel((16, 16)), RED, tolerance=4)


def test_exif_orientation_is_applied(server: HostileServer) -> None:
    image = intake(server.url("/image/exif-rotated.jpg"), make_settings(server))
    assert image.size == (40, 80)  # stored 80x40, orientation 6
    assert_close(image.getpixel((20, 10)), RED)
    assert_close(image.getpixel((20, 70)), BLUE)


def test_a_large_jpeg_is_drafted_then_shrunk_to_twice_the_model_input(server: HostileServer) -> None:
    image = intake(server.url("/image/large.jpg"), make_settings(server))
    assert image.size == (672, 448)  # 3000x2000, drafted at 1/4 (750x500), then resized to 448 px high
    assert_close(image.getpixel((336, 224)), BLUE)


def test_a_large_png_is_shrunk_to_twice_the_model_input(server: HostileServer) -> None:
    image = intake(server.url("/image/large.png"), make_settings(server))
    assert image.size == (896, 448)
    assert_close(image.getpixel((10, 10)), GREEN, tolerance=0)


def test_a_download_is_hashed_as_it_arrives_over_several_reads(server: HostileServer) -> None:
    # large.jpg (94,629 bytes) arrives in more than one 64 KiB read: the digest covers every one of
    # them, the bytes of the final hop only (after a redirect), as ImageBytes.of would hash them whole.
    settings = make_settings(server)
    sent = hostile_images()["large.jpg"][0]

    async def fetch(path: str) -> ImageBytes:
        async with make_fetch_session(settings) as session:
            return await fetch_image_bytes(session, server.url(path), settings)

    with asyncio.Runner(loop_factory=NatLoop) as runner:
        fetched = runner.run(fetch("/image/large.jpg"))
    assert len(sent) > 64 * 1024
    assert fetched.data == sent
    assert fetched.sha256 == hashlib.sha256(sent).hexdigest() == ImageBytes.of(sent).sha256


@pytest.mark.parametrize(
    ("path", "cache_settings", "fresh_s"),
    [
        ("/image/shape.png?cc=max-age%3D600", {}, 600),
        ("/image/shape.png?cc=no-cache%2C+max-age%3D600", {}, 0),
        ("/image/shape.png", {}, 0),
        # The final hop promises, the URL itself did not: a redirect's freshness is not worked out.
        ("/redirect?to=/image/shape.png%3Fcc%3Dmax-age%253D600", {}, 0),
        ("/image/shape.png?cc=max-age%3D600", {"cache_fresh_urls": False}, 0),
        ("/image/shape.png?cc=max-age%3D600", {"cache_enabled": False}, 0),
    ],
    ids=["max-age", "no-cache", "no promise", "redirected", "fresh urls off", "cache off"],
)
def test_a_download_carries_how_long_its_server_said_it_stays_fresh(
    server: HostileServer, path: str, cache_settings: dict[str, Any], fresh_s: float
) -> None:
    settings = make_settings(server, **cache_settings)

    async def fetch() -> ImageBytes:
        async with make_fetch_session(settings) as session:
            return await fetch_image_bytes(session, server.url(path), settings)

    with asyncio.Runner(loop_factory=NatLoop) as runner:
        fetched = runner.run(fetch())
    assert fetched.data == hostile_images()["shape.png"][0]
    assert fetched.fresh_s == pytest.approx(fresh_s, abs=2)


def test_a_short_chain_of_relative_redirects_is_followed(server: HostileServer) -> None:
    assert intake(server.url("/chain/3"), make_settings(server)).size == (160, 160)


# --- SSRF: allow_private_networks off, a public name forwarded to the local server ------------------


@pytest.fixture
def ssrf_settings(server: HostileServer) -> Settings:
    return make_settings(server, allow_private_networks=False)


@pytest.fixture
def dns() -> FakeDns:
    return FakeDns(
        {
            "images.example": [[PUBLIC_IP]],
            "internal.example": [["10.0.0.7"]],
            "metadata.example": [["169.254.169.254"]],
            "mixed.example": [[PUBLIC_IP, "127.0.0.1"]],
            "loopback6.example": [["::1"]],
            "mapped.example": [["::ffff:127.0.0.1"]],
            "cgnat.example": [["100.100.100.200"]],  # Alibaba Cloud's metadata address
            "rebind.example": [[PUBLIC_IP], ["127.0.0.1"]],
            "wireserver.example": [["168.63.129.16"]],  # Azure's platform address, public by IANA
            "nat64.example": [["64:ff9b::a83f:8110"]],  # NAT64 around the WireServer
            "sixtofour.example": [["2002:a9fe:a9fe::1"]],  # 6to4 around IMDS
            "isatap.example": [["2001:4860:1::5efe:7f00:1"]],  # ISATAP around 127.0.0.1
            "teredo.example": [["2001:0:4136:e378:8000:63bf:57c0:7eef"]],  # Teredo, client 168.63.129.16
        }
    )


def test_a_public_name_is_fetched_with_private_networks_refused(
    server: HostileServer, ssrf_settings: Settings, dns: FakeDns
) -> None:
    url = f"http://images.example:{server.port}/image/shape.png"
    assert intake(url, ssrf_settings, dns).size == (160, 160)


REDIRECT_TARGETS = [
    "http://127.0.0.1:{port}/image/shape.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.169.254/metadata/instance?api-version=2021-02-01",  # Azure IMDS
    "http://[::ffff:169.254.169.254]/",
    "http://[::1]:{port}/image/shape.png",
    "http://2130706433:{port}/image/shape.png",
    "http://0x7f.1:{port}/image/shape.png",
    "http://0177.0.0.1:{port}/image/shape.png",
    "http://localhost:{port}/image/shape.png",
    "//169.254.169.254/latest/meta-data/",  # scheme-relative
    "http://internal.example:{port}/image/shape.png",  # a name that resolves inward
    "http://metadata.example/latest/meta-data/",
]


@pytest.mark.parametrize("target", REDIRECT_TARGETS)
def test_a_redirect_inward_is_refused(
    server: HostileServer, ssrf_settings: Settings, dns: FakeDns, target: str
) -> None:
    location = target.format(port=server.port)
    url = f"http://images.example:{server.port}/redirect?to={location}"
    assert error_of(url, ssrf_settings, dns).code == "url_not_allowed"


@pytest.mark.parametrize(
    "host",
    [
        "internal.example",
        "metadata.example",
        "mixed.example",
        "loopback6.example",
        "mapped.example",
        "cgnat.example",
        "wireserver.example",
        "nat64.example",
        "sixtofour.example",
        "isatap.example",
        "teredo.example",
    ],
)
def test_a_name_resolving_to_an_internal_address_is_refused_at_connect(
    server: HostileServer, ssrf_settings: Settings, dns: FakeDns, host: str
) -> None:
    error = error_of(f"http://{host}:{server.port}/image/shape.png", ssrf_settings, dns)
    assert error.code == "url_not_allowed"
    assert host in dns.lookups  # refused by the resolved address, not by the name


def test_a_literal_internal_address_is_refused_before_connecting(
    server: HostileServer, ssrf_settings: Settings
) -> None:
    assert error_of(server.url("/image/shape.png"), ssrf_settings).code == "url_not_allowed"


def test_dns_rebinding_is_caught_on_the_next_lookup(
    server: HostileServer, ssrf_settings: Settings, dns: FakeDns
) -> None:
    url = f"http://rebind.example:{server.port}/image/shape.png?close"

    async def fetch_twice() -> CaptionizerError | None:
        async with make_fetch_session(ssrf_settings, dns=dns) as session:
            await fetch_image_bytes(session, url, ssrf_settings)  # first answer: public
            assert isinstance(session.connector, aiohttp.TCPConnector)
            session.connector.clear_dns_cache()  # as if the record's short TTL ran out
            try:
                await fetch_image_bytes(session, url, ssrf_settings)
            except CaptionizerError as exc:
                return exc
        return None

    with asyncio.Runner(loop_factory=NatLoop) as runner:
        error = runner.run(fetch_twice())
    assert error is not None and error.code == "url_not_allowed"


def test_the_session_refuses_internal_addresses_even_without_the_url_check(
    server: HostileServer, ssrf_settings: Settings
) -> None:
    # aiohttp skips the resolver for literal addresses; the connector's socket factory still refuses them.
    async def get_directly() -> int:
        async with make_fetch_session(ssrf_settings) as session, session.get(server.url("/image/shape.png")) as r:
            return r.status

    with asyncio.Runner() as runner, pytest.raises(CaptionizerError) as caught:
        runner.run(get_directly())
    assert caught.value.code == "url_not_allowed"


def test_the_guarded_resolver_returns_public_answers_unchanged() -> None:
    dns = FakeDns({"cdn.example": [[PUBLIC_IP, "2606:4700::6810:84e5"]]})
    guard = GuardedResolver(dns, allow_private=False)
    results = asyncio.run(guard.resolve("cdn.example", 443))
    assert [result["host"] for result in results] == [PUBLIC_IP, "2606:4700::6810:84e5"]


# --- one shared session keeps serving after every kind of failure ------------------------------------


def test_the_shared_session_serves_the_next_job_after_hostile_ones(server: HostileServer) -> None:
    settings = make_settings(server, fetch_timeout_s=0.6, max_image_bytes=65_536)
    hostile = ["/endless", "/drip", "/lying-long", "/lying-short", "/declared-huge", "/loop", "/status/500"]

    async def job(session: aiohttp.ClientSession, path: str) -> str:
        try:
            data = (await fetch_image_bytes(session, server.url(path), settings)).data
            return str(decode_image(data, settings, model_input_px=MODEL_INPUT_PX).size)
        except CaptionizerError as exc:
            return exc.code

    async def jobs() -> tuple[list[str], str]:
        async with make_fetch_session(settings) as session:
            # Concurrently, as the worker fetches the jobs in hand; then one more job afterwards.
            failures = await asyncio.gather(*(job(session, path) for path in hostile))
            return failures, await job(session, "/image/shape.png")

    with asyncio.Runner() as runner:
        failures, next_job = runner.run(jobs())
    assert failures == [
        "image_too_large",
        "fetch_timeout",
        "fetch_failed",
        "image_corrupt",
        "image_too_large",
        "fetch_failed",
        "fetch_failed",
    ]
    assert next_job == "(160, 160)"
