"""A hostile image server for intake tests: aiohttp on 127.0.0.1, served from a background thread.

Each route is one way a stranger's URL can misbehave: slow, endless, lying about its length,
redirecting inward, failing, or serving something that is not an image, or an image built to hurt
the decoder. ``HOSTILE_IMAGES`` holds the image bodies so tests can compare what they decode.
Unit tests (``tests/unit/worker/test_intake.py``) and the end-to-end tests both use it.
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import io
import random
import socket
import struct
import threading
import zlib
from collections.abc import Awaitable, Callable
from functools import cache
from types import TracebackType

from aiohttp import web
from PIL import Image

from model.shapes import draw_shape

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Colours the test images are made of, so decoded pixels can be checked.
RED, GREEN, BLUE, WHITE = (220, 30, 30), (30, 170, 60), (30, 70, 220), (255, 255, 255)

#: Side of the PNG decompression bomb: 400 million pixels, a few kilobytes on the wire.
BOMB_SIDE_PX = 20_000

_DRIP_INTERVAL_S = 0.2
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- images ------------------------------------------------------------------------------


def _encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, image_format, **params)
    return out.getvalue()


def _split_colours(size: tuple[int, int], first: tuple[int, int, int], second: tuple[int, int, int]) -> Image.Image:
    """An RGB image whose left half is ``first`` and right half ``second``."""
    image = Image.new("RGB", size, first)
    image.paste(second, (size[0] // 2, 0, size[0], size[1]))
    return image


def _noise(size: tuple[int, int]) -> Image.Image:
    """Incompressible pixels, so truncating the file cuts into real image data."""
    return Image.frombytes("RGB", size, bytes((i * 7919 + i // 3 * 104729) % 251 for i in range(size[0] * size[1] * 3)))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(side_px: int = BOMB_SIDE_PX) -> bytes:
    """A valid 1-bit greyscale PNG of ``side_px`` squared pixels, all zero, written chunk by chunk (a few kB)."""
    ihdr = struct.pack(">IIBBBBB", side_px, side_px, 1, 0, 0, 0, 0)  # 1-bit grey, no interlace
    row = b"\x00" * (1 + (side_px + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side_px)) + compressor.flush()
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _gif_bomb() -> bytes:
    """A GIF whose logical screen is 65535x65535 (4.3 billion pixels) around a 1x1 image."""
    small = _encode(Image.new("P", (1, 1)), "GIF")
    return small[:6] + struct.pack("<HH", 65535, 65535) + small[10:]


def _jpeg_bomb() -> bytes:
    """A small JPEG whose frame header (SOF0) claims 65500x65500 pixels."""
    data = bytearray(_encode(Image.new("RGB", (16, 16), RED), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


def scan_bomb_jpeg(scans: int = 10_000, side_px: int = 2048) -> bytes:
    """A progressive greyscale JPEG whose last scan is sent ``scans`` times over: a few bytes each, one pass each.

    libjpeg warns about the repeated refinement scans but decodes every one of them, and each walks
    the whole coefficient buffer, so the CPU cost grows with ``scans`` while the file stays small.
    """
    data = _encode(Image.new("L", (side_px, side_px), 128), "JPEG", progressive=True, quality=90)
    last_sos = data.rindex(b"\xff\xda")
    eoi = data.rindex(b"\xff\xd9")
    first = data.index(b"\xff\xda")
    # Keep the scan count of the original (libjpeg writes 6 for greyscale) and repeat its last scan.
    original = data[first:eoi].count(b"\xff\xda")
    return data[:eoi] + data[last_sos:eoi] * max(0, scans - original) + data[eoi:]


def png_chunk_bomb(chunks: int = 50_000) -> bytes:
    """A small valid PNG padded with ``chunks`` empty private ancillary chunks (each handled in Python by Pillow)."""
    data = _encode(Image.new("RGB", (8, 8), RED), "PNG")
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + _png_chunk(b"prVt", b"") * chunks + data[iend:]


def _corrupt_png() -> bytes:
    """A PNG whose image data is garbage, with chunk CRCs that match (so only the decoder notices)."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0))
    return _PNG_SIGNATURE + header + _png_chunk(b"IDAT", b"not zlib data" * 20) + _png_chunk(b"IEND", b"")


def _palette_with_transparency() -> bytes:
    """A palette PNG (tRNS chunk): left half transparent, right half red."""
    image = Image.new("P", (40, 20), 0)
    image.putpalette([0, 0, 0, *RED] + [0] * (254 * 3))
    image.paste(1, (20, 0, 40, 20))
    return _encode(image, "PNG", transparency=0)


def _animated_gif() -> bytes:
    """Two frames: red, then blue. Only the first may be captioned."""
    frames = [Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_rotated_jpeg() -> bytes:
    """Stored 80x40, left red and right blue, with EXIF orientation 6: shown 40x80, red on top."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display" (CIPA DC-008)
    return _encode(_split_colours((80, 40), RED, BLUE), "JPEG", exif=exif.tobytes(), quality=95)


def _gray16_png() -> bytes:
    """A 16-bit greyscale PNG at mid-grey (32768 of 65535)."""
    return _encode(Image.new("I;16", (24, 24), 32768), "PNG")


def _rgba_png() -> bytes:
    """Left half fully transparent, right half opaque green."""
    image = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    image.paste((*GREEN, 255), (20, 0, 40, 20))
    return _encode(image, "PNG")


@cache
def hostile_images() -> dict[str, tuple[bytes, str]]:
    """Every image body the server serves under ``/image/<name>``, with its Content-Type."""
    noisy_png = _encode(_noise((96, 96)), "PNG")
    noisy_jpeg = _encode(_noise((96, 96)), "JPEG", quality=90)
    text = {
        "page.html": (b"<!doctype html><title>Not an image</title><img src=cat.png>", "text/html"),
        "notes.txt": (b"just some text, long enough to be sniffed properly\n", "text/plain"),
        "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "image/svg+xml"),
        "empty.png": (b"", "image/png"),
    }
    images = {
        "shape.png": (_encode(draw_shape("circle", "red", image_size=160), "PNG"), "image/png"),
        "shape.jpg": (_encode(draw_shape("square", "blue", image_size=160), "JPEG", quality=95), "image/jpeg"),
        "shape.webp": (_encode(draw_shape("triangle", "green", image_size=160), "WEBP", lossless=True), "image/webp"),
        "shape.bmp": (_encode(draw_shape("circle", "yellow", image_size=96), "BMP"), "image/bmp"),
        "cmyk.jpg": (_encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95), "image/jpeg"),
        "gray16.png": (_gray16_png(), "image/png"),
        "palette-transparent.png": (_palette_with_transparency(), "image/png"),
        "rgba.png": (_rgba_png(), "image/png"),
        "la.png": (_encode(Image.new("LA", (16, 16), (0, 0)), "PNG"), "image/png"),
        "animated.gif": (_animated_gif(), "image/gif"),
        "exif-rotated.jpg": (_exif_rotated_jpeg(), "image/jpeg"),
        "large.jpg": (_encode(Image.new("RGB", (3000, 2000), BLUE), "JPEG", quality=80), "image/jpeg"),
        "large.png": (_encode(Image.new("RGB", (2000, 1000), GREEN), "PNG"), "image/png"),
        # A few hundred bytes, 200,000 pixels: a processor resizing the short side to 224 px would need GBs.
        "wide.png": (_encode(Image.new("L", (200_000, 1)), "PNG"), "image/png"),
        "tall.png": (_encode(Image.new("L", (1, 200_000)), "PNG"), "image/png"),
        "bomb.png": (png_bomb(), "image/png"),
        "bomb.gif": (_gif_bomb(), "image/gif"),
        "bomb.jpg": (_jpeg_bomb(), "image/jpeg"),
        # 10,000 scans of a 1024x1024 greyscale JPEG: 150 kB, seconds of CPU to decode.
        "scan-bomb.jpg": (scan_bomb_jpeg(scans=10_000, side_px=1024), "image/jpeg"),
        "chunk-bomb.png": (png_chunk_bomb(), "image/png"),
        "truncated.png": (noisy_png[: len(noisy_png) // 2], "image/png"),
        "truncated.jpg": (noisy_jpeg[: len(noisy_jpeg) // 2], "image/jpeg"),
        "corrupt.png": (_corrupt_png(), "image/png"),
        "corrupt.jpg": (b"\xff\xd8\xff\xe0" + b"\x00garbage" * 64, "image/jpeg"),
        "signature-only.png": (_PNG_SIGNATURE, "image/png"),
        "photo.tiff": (_encode(Image.new("RGB", (16, 16), RED), "TIFF"), "image/tiff"),
        "gzip-bomb.png": (gzip.compress(b"\x00" * (8 * 1024 * 1024)), "image/png"),
    }
    return images | text


# --- routes ------------------------------------------------------------------------------


async def _image(request: web.Request) -> web.StreamResponse:
    body, content_type = hostile_images().get(request.match_info["name"], (b"", ""))
    if not content_type:
        raise web.HTTPNotFound()
    headers = {"Content-Encoding": "gzip"} if request.match_info["name"].startswith("gzip") else {}
    if "cc" in request.query:
        headers["Cache-Control"] = request.query["cc"]
    response = web.Response(body=body, content_type=content_type, headers=headers)
    if "close" in request.query:
        response.force_close()  # no keep-alive: the client's next request must connect (and resolve) again
    return response


async def _status(request: web.Request) -> web.StreamResponse:
    return web.Response(status=int(request.match_info["code"]), text="nope")


async def _redirect(request: web.Request) -> web.StreamResponse:
    """Redirect to ``?to=`` (any text at all) with ``?status=`` (default 302)."""
    status = int(request.query.get("status", "302"))
    return web.Response(status=status, headers={"Location": request.query["to"]})


async def _chain(request: web.Request) -> web.StreamResponse:
    """``/chain/N`` redirects N times, relative Locations, then serves a good image."""
    hops = int(request.match_info["hops"])
    if hops == 0:
        return await _image_named("shape.png")
    return web.Response(status=302, headers={"Location": f"{hops - 1}"})


async def _image_named(name: str) -> web.StreamResponse:
    body, content_type = hostile_images()[name]
    return web.Response(body=body, content_type=content_type)


async def _delayed(request: web.Request) -> web.StreamResponse:
    """``/delayed/S`` waits S seconds (at most 60), then serves the red circle: a slow job that succeeds."""
    await asyncio.sleep(min(float(request.match_info["seconds"]), 60.0))
    return await _image_named("shape.png")


async def _loop(request: web.Request) -> web.StreamResponse:
    return web.Response(status=307, headers={"Location": "/loop"})


async def _no_location(request: web.Request) -> web.StreamResponse:
    return web.Response(status=302)


async def _slow_headers(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3600)  # cancelled when the server stops
    return web.Response()


async def _drip(request: web.Request) -> web.StreamResponse:
    """Headers at once, then a PNG one byte at a time, slowly, forever."""
    response = web.StreamResponse(headers={"Content-Type": "image/png"})
    await response.prepare(request)
    payload = hostile_images()["shape.png"][0]
    try:
        for index in range(10**9):
            await response.write(payload[index % len(payload) : index % len(payload) + 1])
            await asyncio.sleep(_DRIP_INTERVAL_S)
    except ConnectionError:
        pass  # the client gave up, as it should
    return response


async def _endless(request: web.Request) -> web.StreamResponse:
    """A chunked body that starts like a PNG and never ends."""
    response = web.StreamResponse(headers={"Content-Type": "image/png"})
    await response.prepare(request)
    chunk = b"\x00" * 65536
    try:
        await response.write(_PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)))
        while True:
            await response.write(chunk)
    except ConnectionError:
        pass
    return response


async def _raw(request: web.Request, head: bytes, body: bytes, *, pause_s: float = 0.0, rest: bytes = b"") -> None:
    """Write a hand-made HTTP response on the socket, lies included, then close it."""
    transport = request.transport
    assert transport is not None
    transport.write(head + body)
    if pause_s:
        await asyncio.sleep(pause_s)
        if not transport.is_closing():
            transport.write(rest)
    transport.close()


def _head(content_length: int, content_type: str = "image/png") -> bytes:
    # Connection: close, so the client never reuses a connection this route has desynchronised.
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {content_length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


async def _declared_huge(request: web.Request) -> web.StreamResponse:
    """Declares 10 GiB and sends a PNG signature, then waits: the client must refuse from the header."""
    transport = request.transport
    assert transport is not None
    transport.write(_head(10 * 1024**3) + _PNG_SIGNATURE)
    await asyncio.sleep(3600)
    return web.Response()


async def _lying_long(request: web.Request) -> web.StreamResponse:
    """Content-Length bigger than the body: the connection closes early."""
    body = hostile_images()["shape.png"][0]
    await _raw(request, _head(len(body) * 4), body)
    return web.Response()


async def _lying_short(request: web.Request) -> web.StreamResponse:
    """Content-Length smaller than the body: the client must read only what was declared."""
    body = hostile_images()["shape.png"][0]
    declared = len(body) // 3
    await _raw(request, _head(declared), body[:declared], pause_s=0.3, rest=body[declared:])
    return web.Response()


class Tarpit:
    """Requests to ``/tarpit/{name}`` hang here until :meth:`release`; counts the ones open now and at most.

    Its counters are written on the server's loop and read from tests' threads (ints: atomic reads).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._released = asyncio.Event()
        #: Requests hanging now.
        self.open = 0
        #: The most requests that hung at once.
        self.max_open = 0

    def release(self) -> None:
        """Answer every hanging request (and every later one) with the red circle."""
        self._loop.call_soon_threadsafe(self._released.set)

    async def hold(self) -> None:
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self._released.wait()
        finally:
            self.open -= 1


_TARPITS: web.AppKey[dict[str, Tarpit]] = web.AppKey("tarpits", dict)
_REQUESTS: web.AppKey[collections.Counter[str]] = web.AppKey("requests", collections.Counter)


async def _unique(request: web.Request) -> web.StreamResponse:
    """``/unique/TOKEN.png``: a PNG of random pixels seeded by TOKEN (a test's own image), counting its requests.

    ``?cc=`` sets its Cache-Control.
    """
    token = request.match_info["token"]
    request.app[_REQUESTS][token] += 1
    rng = random.Random(token)
    out = io.BytesIO()
    Image.frombytes("RGB", (16, 16), rng.randbytes(16 * 16 * 3)).save(out, "PNG")
    headers = {"Cache-Control": request.query["cc"]} if "cc" in request.query else {}
    return web.Response(body=out.getvalue(), content_type="image/png", headers=headers)


async def _tarpit(request: web.Request) -> web.StreamResponse:
    """``/tarpit/NAME`` hangs before any header until the test releases tarpit NAME, then serves the red circle."""
    tarpits = request.app[_TARPITS]
    name = request.match_info["name"]
    tarpit = tarpits.setdefault(name, Tarpit(asyncio.get_running_loop()))
    await tarpit.hold()
    return await _image_named("shape.png")


def make_app() -> web.Application:
    """The hostile application; see each handler's docstring for what it does."""
    app = web.Application()
    app[_TARPITS] = {}
    app[_REQUESTS] = collections.Counter()
    routes: dict[str, Handler] = {
        "/image/{name}": _image,
        "/status/{code}": _status,
        "/redirect": _redirect,
        "/chain/{hops}": _chain,
        "/delayed/{seconds}": _delayed,
        "/loop": _loop,
        "/no-location": _no_location,
        "/slow-headers": _slow_headers,
        "/drip": _drip,
        "/endless": _endless,
        "/declared-huge": _declared_huge,
        "/lying-long": _lying_long,
        "/lying-short": _lying_short,
        "/tarpit/{name}": _tarpit,
        "/unique/{token}.png": _unique,
    }
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    return app


# --- the server --------------------------------------------------------------------------


class HostileServer:
    """Serves :func:`make_app` on 127.0.0.1 (a free port) from its own thread and event loop.

    Use it as a context manager; ``url("/image/shape.png")`` gives an absolute URL.
    """

    def __init__(self, start_timeout_s: float = 10.0) -> None:
        self._start_timeout_s = start_timeout_s
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hostile-server", daemon=True)
        self._runner: web.AppRunner | None = None

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """The absolute URL of ``path`` on this server (``host``: another name for it, e.g. localhost)."""
        return f"http://{host}:{self.port}{path}"

    def requests_for(self, token: str) -> int:
        """How many requests ``/unique/TOKEN.png`` has had."""
        assert self._runner is not None, "the server is not running"
        return self._runner.app[_REQUESTS][token]

    def tarpit(self, name: str) -> Tarpit:
        """The tarpit behind ``/tarpit/NAME`` (made now if no request reached it yet)."""
        assert self._runner is not None, "the server is not running"
        tarpits = self._runner.app[_TARPITS]
        if name not in tarpits:
            made = asyncio.run_coroutine_threadsafe(self._make_tarpit(), self._loop).result(timeout=10)
            tarpits.setdefault(name, made)
        return tarpits[name]

    async def _make_tarpit(self) -> Tarpit:
        return Tarpit(asyncio.get_running_loop())

    def __enter__(self) -> HostileServer:
        hostile_images()  # build the images before serving, not inside the first request's timeout
        self._thread.start()
        if not self._ready.wait(self._start_timeout_s):
            raise RuntimeError("the hostile server did not start in time")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        # shutdown_timeout: handlers that sleep forever are cancelled at once on exit.
        # handler_cancellation: a handler stops when its client hangs up, as the tests' clients do.
        self._runner = web.AppRunner(
            make_app(), handle_signals=False, access_log=None, shutdown_timeout=0.1, handler_cancellation=True
        )
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.SockSite(self._runner, self._socket).start())
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._runner.cleanup())
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()
