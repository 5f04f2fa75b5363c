"""Image intake for the worker: SSRF-safe, bounded downloads and robust, bounded decoding.

Fetching: every hop's URL is checked, and the session connects only to allowed addresses, through
:mod:`worker.egress` (the SSRF guard webhooks use too). Downloads are bounded
in time and in bytes while streaming. Decoding: the pixel count is checked from the header before any
pixel is decoded (decompression bombs), then the first frame is decoded, turned upright by its EXIF
orientation and converted to RGB. Every failure is one of the typed errors in :mod:`shared.errors`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import zlib
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver
from PIL import Image, ImageOps

from model.images import to_rgb
from shared.errors import (
    FetchFailed,
    FetchTimeout,
    ImageCorrupt,
    ImageTooLarge,
    NotAnImage,
    TooManyPixels,
    UrlNotAllowed,
)
from shared.settings import Settings
from shared.uploads import IMAGE_MEDIA_TYPES, SNIFF_BYTES, sniff_image_type
from worker.egress import checked_url, make_egress_session

logger = logging.getLogger(__name__)

#: Shortest side, in pixels, that decoding keeps: twice the 224 px the captioning model sees, so the
#: model's own resize still has detail to average over.
MIN_DECODE_SIDE_PX = 2 * 224

#: Headers sent with every image request.
REQUEST_HEADERS = {
    "User-Agent": "Captionizer/0.1 (image captioning)",
    "Accept": ", ".join(IMAGE_MEDIA_TYPES.values()),
    # Images are compressed already; refusing content-coding also rules out gzip bombs (RFC 9110 §12.5.3).
    "Accept-Encoding": "identity",
}

# RFC 9110 §15.4: the redirects that carry a Location to follow.
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 64 * 1024
_MAX_DETAIL_CHARS = 200
# What Pillow raises on truncated or malformed data, besides its own OSError subclasses.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


def make_fetch_session(settings: Settings, *, dns: AbstractResolver | None = None) -> aiohttp.ClientSession:
    """The client session to fetch images with: one per worker process, shared by its jobs, closed at exit.

    Call it inside the running event loop. Use it only through :func:`fetch_image_bytes`, which adds
    the per-hop checks, redirects and size limit.
    """
    return make_egress_session(settings, headers=REQUEST_HEADERS, timeout=_client_timeout(settings), dns=dns)


async def fetch_image_bytes(session: aiohttp.ClientSession, url: str, settings: Settings) -> bytes:
    """Download the image at ``url`` (bounded, SSRF-checked) and return its bytes.

    Raises:
        UrlNotAllowed: a hop's URL, or an address its host resolves to, is not allowed.
        FetchTimeout: the whole download, redirects included, took longer than ``fetch_timeout_s``.
        FetchFailed: a network error, a non-2xx status (``upstream_status``) or too many redirects.
        ImageTooLarge: the body is, or is declared, larger than ``max_image_bytes``.
        NotAnImage: the body does not start like an image we accept.
    """
    try:
        async with asyncio.timeout(settings.fetch_timeout_s):
            return await _follow_redirects(session, url, settings)
    except TimeoutError as exc:  # aiohttp's own timeouts subclass it too
        raise FetchTimeout(f"the image server did not answer within {settings.fetch_timeout_s:g} s") from exc
    except aiohttp.InvalidURL as exc:
        raise UrlNotAllowed("the URL is malformed") from exc
    except aiohttp.ClientError as exc:
        # Bounded: a hostile server's bytes can end up in the text, and the text is stored on the job.
        detail = (str(exc) or type(exc).__name__)[:_MAX_DETAIL_CHARS]
        raise FetchFailed(f"the image could not be downloaded: {detail}") from exc


async def _follow_redirects(session: aiohttp.ClientSession, url: str, settings: Settings) -> bytes:
    """Fetch ``url``, following at most ``max_redirects`` redirects, each checked before it is followed."""
    current, last_status = url, 0
    for _ in range(settings.max_redirects + 1):
        current = checked_url(current, settings)
        async with session.get(
            current, allow_redirects=False, timeout=_client_timeout(settings), headers=REQUEST_HEADERS
        ) as response:
            location = _redirect_location(response)
            if location is None:
                return await _read_body(response, settings.max_image_bytes)
            last_status = response.status
        current = _resolve_location(current, location)
    raise FetchFailed(f"more than {settings.max_redirects} redirects", upstream_status=last_status)


def _resolve_location(base: str, location: str) -> str:
    """The absolute URL a redirect points to; relative ones resolve against the hop (RFC 9110 §10.2.2)."""
    try:
        return urljoin(base, location)
    except ValueError as exc:  # e.g. an unbalanced IPv6 bracket
        raise UrlNotAllowed("the redirect's Location is malformed") from exc


def _redirect_location(response: aiohttp.ClientResponse) -> str | None:
    """The Location to follow, None for a 2xx answer; any other status fails the fetch."""
    if response.status in _REDIRECT_STATUSES:
        location = response.headers.get("Location")
        if not location:
            raise FetchFailed("the image server redirected without a Location", upstream_status=response.status)
        return location
    if not 200 <= response.status < 300:
        raise FetchFailed(f"the image server answered {response.status}", upstream_status=response.status)
    return None


async def _read_body(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """Read the body, refusing it as soon as it is declared or grows larger than ``max_bytes``."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        response.close()
        raise ImageTooLarge(f"the image is declared as {declared} bytes; the limit is {max_bytes}")
    body = bytearray()
    sniffed = False
    # Content-Length can lie, and chunked bodies have none: count what actually arrives.
    async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            response.close()  # drop the connection: the rest of the body is never read
            raise ImageTooLarge(f"the image is larger than {max_bytes} bytes")
        if not sniffed and len(body) >= SNIFF_BYTES:
            sniffed = True
            _check_image_head(bytes(body[:SNIFF_BYTES]), response)
    if not sniffed:
        _check_image_head(bytes(body), response)
    return bytes(body)


def _check_image_head(head: bytes, response: aiohttp.ClientResponse) -> None:
    """Refuse a body that does not start like an accepted image, without downloading the rest."""
    if sniff_image_type(head) is None:
        response.close()
        media_type = response.headers.get("Content-Type", "no content type")
        raise NotAnImage(f"the URL does not serve an image we accept (it sent {media_type})")


def _client_timeout(settings: Settings) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=settings.fetch_timeout_s, sock_connect=settings.fetch_connect_timeout_s)


def decode_image(data: bytes, settings: Settings, *, min_side_px: int = MIN_DECODE_SIDE_PX) -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB PIL image, within the pixel limit.

    Only the first frame of an animation is decoded. JPEGs are decoded at a reduced scale (draft
    mode), and large images are reduced, but never so that the shorter side falls below ``min_side_px``.

    Raises:
        NotAnImage: the bytes are not an accepted image format (by magic bytes).
        TooManyPixels: the header declares more than ``max_image_pixels`` pixels.
        ImageCorrupt: the format is recognised but the data is truncated or malformed.
    """
    image_format = sniff_image_type(data)
    if image_format is None:
        raise NotAnImage("the data is not an image we accept (" + ", ".join(IMAGE_MEDIA_TYPES.values()) + ")")
    image = _open_bounded(data, image_format, settings.max_image_pixels)
    try:
        # Draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale; it keeps both sides >= the size asked for.
        image.draft("RGB", (min_side_px, min_side_px))
        image.load()  # Pillow opens an animation at its first frame; we never seek further
        rgb = to_rgb(_upright(image))
    except _DECODE_ERRORS as exc:
        raise ImageCorrupt(f"the {image_format} data is truncated or corrupt") from exc
    return _reduce(rgb, min_side_px)


def _open_bounded(data: bytes, image_format: str, max_pixels: int) -> Image.Image:
    """Open (read the header of) an image, refusing it when it has more than ``max_pixels`` pixels."""
    # Pillow's own bomb guard runs inside Image.open, before we see the size: give it our ceiling so the
    # two agree. It warns above the ceiling (an error under `-W error`) and raises above twice it.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        image = Image.open(io.BytesIO(data), formats=[image_format])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(f"the image has more than {max_pixels} pixels") from exc
    except _DECODE_ERRORS as exc:  # UnidentifiedImageError included: the magic matched, the rest did not
        raise ImageCorrupt(f"the {image_format} header is corrupt") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise TooManyPixels(f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    if width == 0 or height == 0:
        raise ImageCorrupt(f"the {image_format} header declares an empty image")
    return image


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (CIPA DC-008 tag 0x0112); a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS:
        logger.debug("ignoring an unreadable EXIF orientation", exc_info=True)
        return image


def _reduce(image: Image.Image, min_side_px: int) -> Image.Image:
    """Shrink by a whole factor while the shorter side stays >= ``min_side_px`` (box filter, cheap)."""
    factor = min(image.size) // min_side_px
    return image.reduce(factor) if factor >= 2 else image
