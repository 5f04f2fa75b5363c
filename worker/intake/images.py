"""Image intake for the worker: SSRF-safe, bounded downloads and robust, bounded decoding.

Fetching: every hop's URL is checked, and the session connects only to allowed addresses, through
:mod:`worker.egress` (the SSRF guard webhooks use too). Downloads are bounded
in time and in bytes while streaming. Decoding: the pixel count and the aspect ratio are checked from
the header before any pixel is decoded (decompression bombs, 200000x1 slivers), then the first frame is
decoded, shrunk in its own mode to a size set by the model's input, turned upright by its EXIF
orientation and converted to RGB. Every failure is one of the typed errors in :mod:`shared.errors`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import struct
import zlib
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver
from PIL import ExifTags, Image, PngImagePlugin

from model.images import shrink_image, to_rgb
from shared.errors import (
    FetchFailed,
    FetchTimeout,
    ImageAspectRatio,
    ImageCorrupt,
    ImageTooLarge,
    NotAnImage,
    TooManyPixels,
    UrlNotAllowed,
)
from shared.intake.uploads import IMAGE_MEDIA_TYPES, SNIFF_BYTES, sniff_image_type
from shared.settings import Settings
from worker.egress import checked_url, make_egress_session
from worker.intake.decode_cost import check_decode_cost
from worker.intake.freshness import reusable_for_s

logger = logging.getLogger(__name__)

#: The decoded image's shorter side is at most this many times the side the model's processor resizes to,
#: so the processor's own resize still has detail to average over.
DECODE_SIDE_FACTOR = 2

#: Headers sent with every image request.
REQUEST_HEADERS = {
    "User-Agent": "Captionizer/0.1 (image captioning)",
    "Accept": ", ".join(IMAGE_MEDIA_TYPES.values()),
    # Images are compressed already; refusing content-coding also rules out gzip bombs (RFC 9110 §12.5.3).
    "Accept-Encoding": "identity",
}

# Pillow keeps a PNG's text chunks (tEXt, zTXt, iTXt) decompressed in memory, up to 64 MB in all by default:
# a 200 kB file of zTXt chunks costs that much. We never read them; an honest PNG's metadata is far smaller.
_MAX_PNG_TEXT_BYTES = 4 * 1024 * 1024

# CIPA DC-008 orientations 2-8 and the transposition that undoes each (Pillow's ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
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


@dataclass(frozen=True, slots=True)
class ImageBytes:
    """An image's bytes as read, and their SHA-256 (the caption cache's key, ``worker.caching.identity``).

    A download's digest is taken chunk by chunk as the bytes arrive, while the rest of the body is still
    on its way, so a cache hit needs no second pass over them; only the bytes are kept, not a copy.
    """

    data: bytes
    sha256: str
    #: Seconds for which the URL's server lets this answer be reused without asking it again (HTTP freshness,
    #: ``worker.intake.freshness``); 0 for uploads, redirected downloads and servers that promise nothing.
    fresh_s: float = 0.0

    @classmethod
    def of(cls, data: bytes) -> ImageBytes:
        """Bytes that arrived whole (an upload read from Redis): hashed at once."""
        return cls(data, hashlib.sha256(data).hexdigest())


async def fetch_image_bytes(session: aiohttp.ClientSession, url: str, settings: Settings) -> ImageBytes:
    """Download the image at ``url`` (bounded, SSRF-checked) and return its bytes, hashed as they arrived.

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


async def _follow_redirects(session: aiohttp.ClientSession, url: str, settings: Settings) -> ImageBytes:
    """Fetch ``url``, following at most ``max_redirects`` redirects, each checked before it is followed."""
    current, last_status = url, 0
    for hop in range(settings.max_redirects + 1):
        current = checked_url(current, settings)
        # The session's own headers and timeout apply (make_fetch_session): passing them again costs a merge per request.
        async with session.get(current, allow_redirects=False) as response:
            location = _redirect_location(response)
            if location is None:
                image = await _read_body(response, settings.max_image_bytes)
                # Only the URL's own answer: a redirect's cacheability is not worked out (worker.intake.freshness).
                if hop == 0 and settings.cache_enabled and settings.cache_fresh_urls:
                    fresh_s = reusable_for_s(response.status, response.headers, shared=settings.cache_shared)
                    return ImageBytes(image.data, image.sha256, fresh_s)
                return image
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


async def _read_body(response: aiohttp.ClientResponse, max_bytes: int) -> ImageBytes:
    """Read and hash the body, refusing it as soon as it is declared or grows larger than ``max_bytes``."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        response.close()
        raise ImageTooLarge(f"the image is declared as {declared} bytes; the limit is {max_bytes}")
    body = bytearray()
    digest = hashlib.sha256()
    sniffed = False
    # Content-Length can lie, and chunked bodies have none: count what actually arrives.
    async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
        body += chunk
        digest.update(chunk)
        if len(body) > max_bytes:
            response.close()  # drop the connection: the rest of the body is never read
            raise ImageTooLarge(f"the image is larger than {max_bytes} bytes")
        if not sniffed and len(body) >= SNIFF_BYTES:
            sniffed = True
            _check_image_head(bytes(body[:SNIFF_BYTES]), response)
    if not sniffed:
        _check_image_head(bytes(body), response)
    return ImageBytes(bytes(body), digest.hexdigest())


def _check_image_head(head: bytes, response: aiohttp.ClientResponse) -> None:
    """Refuse a body that does not start like an accepted image, without downloading the rest."""
    if sniff_image_type(head) is None:
        response.close()
        media_type = response.headers.get("Content-Type", "no content type")
        raise NotAnImage(f"the URL does not serve an image we accept (it sent {media_type})")


def _client_timeout(settings: Settings) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=settings.fetch_timeout_s, sock_connect=settings.fetch_connect_timeout_s)


def decode_image(data: bytes, settings: Settings, *, model_input_px: int) -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB PIL image of bounded size, in bounded memory.

    Whatever the header says, memory stays bounded: the pixel count and the aspect ratio are checked
    from the header before any pixel is decoded; only the first frame of an animation is decoded;
    JPEGs are decoded at a reduced scale (draft mode); and the frame is shrunk in its own mode, before
    any mode conversion can multiply its bytes per pixel, until its shorter side is at most
    ``DECODE_SIDE_FACTOR * model_input_px`` (the side the model's processor resizes to, read from the
    checkpoint). So the result has at most ``(2 * model_input_px) ** 2 * max_image_aspect_ratio`` pixels.

    Raises:
        NotAnImage: the bytes are not an accepted image format (by magic bytes).
        TooManyPixels: the header declares more than ``max_image_pixels`` pixels.
        ImageAspectRatio: the header's sides differ by more than ``max_image_aspect_ratio`` times.
        ImageTooComplex: the file asks for far more decoding passes than its pixels need (worker.intake.decode_cost).
        ImageCorrupt: the format is recognised but the data is truncated or malformed.
    """
    image_format = sniff_image_type(data)
    if image_format is None:
        raise NotAnImage("the data is not an image we accept (" + ", ".join(IMAGE_MEDIA_TYPES.values()) + ")")
    # Before the header is even parsed: a scan bomb costs nothing to refuse here, seconds of CPU later.
    check_decode_cost(data, image_format, max_jpeg_scans=settings.max_jpeg_scans)
    image = _open_bounded(data, image_format, settings)
    max_short_side_px = DECODE_SIDE_FACTOR * model_input_px
    try:
        # Draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale; it keeps both sides >= the size asked for.
        image.draft("RGB", (max_short_side_px, max_short_side_px))
        image.load()  # Pillow opens an animation at its first frame; we never seek further
        orientation = _orientation(image)
        small = shrink_image(image, max_short_side_px)
        del image  # the full-size frame is not needed past this point: let it go before converting
        return to_rgb(_upright(small, orientation))
    except _DECODE_ERRORS as exc:
        raise ImageCorrupt(f"the {image_format} data is truncated or corrupt") from exc


def _open_bounded(data: bytes, image_format: str, settings: Settings) -> Image.Image:
    """Open (read the header of) an image, refusing too many pixels or too extreme an aspect ratio."""
    max_pixels = settings.max_image_pixels
    # Pillow's own bomb guard runs inside Image.open, before we see the size: give it our ceiling so the
    # two agree. It warns above the ceiling (an error under `-W error`) and raises above twice it.
    Image.MAX_IMAGE_PIXELS = max_pixels
    PngImagePlugin.MAX_TEXT_MEMORY = _MAX_PNG_TEXT_BYTES
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
    # A 200000x1 image is a few hundred bytes and far under the pixel limit, yet a processor that resizes
    # its shorter side to the model's input would blow it up to 224 x 44,800,000 pixels.
    if max(width, height) > settings.max_image_aspect_ratio * min(width, height):
        raise ImageAspectRatio(
            f"the image is {width}x{height} pixels; its sides may differ at most "
            f"{settings.max_image_aspect_ratio:g} times"
        )
    return image


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (CIPA DC-008 tag 0x0112), 1 (as stored) when absent or unreadable."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        logger.debug("ignoring an unreadable EXIF block", exc_info=True)
        return 1
    return value if isinstance(value, int) else 1


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """Turn ``image`` upright by an EXIF orientation read before it was shrunk (as ImageOps.exif_transpose)."""
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)
