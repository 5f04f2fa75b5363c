"""Up-front checks of uploaded images by size and magic bytes, with no image library.

The API runs these before it stores an upload, so a 4xx comes back at once; the worker's
decoder (``worker.intake.images.decode_image``) is the final word, since magic bytes only say what a
file claims to be. The formats listed here are the only ones the worker will decode: OWASP's
File Upload Cheat Sheet asks for an allow-list checked by content, never by name or Content-Type.
"""

from __future__ import annotations

import base64
import binascii
import re

from shared.errors import InvalidRequest, NotAnImage, UploadTooLarge

#: Image formats we accept, by Pillow format name, with their media types.
IMAGE_MEDIA_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "AVIF": "image/avif",
}

#: File name suffixes of each accepted format: what a client may offer (``GET /v1/limits`` publishes them).
IMAGE_FILE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg"),
    "PNG": (".png",),
    "GIF": (".gif",),
    "WEBP": (".webp",),
    "BMP": (".bmp",),
    "AVIF": (".avif",),
}

#: Bytes from the start of a file that :func:`sniff_image_type` needs to decide.
SNIFF_BYTES = 32

# BITMAPINFOHEADER sizes Windows and OS/2 bitmaps use; "BM" alone is too weak a signature
# (any text starting "BM..." would match).
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_AVIF_BRANDS = (b"avif", b"avis")
_DATA_URL = re.compile(r"data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


def sniff_image_type(data: bytes) -> str | None:
    """The Pillow format name of ``data`` by its magic bytes (e.g. ``"PNG"``), or None if not an accepted image."""
    head = data[:SNIFF_BYTES]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM") and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[4:8] == b"ftyp" and head[8:12] in _AVIF_BRANDS:  # ISO BMFF box, ISO/IEC 23000-22
        return "AVIF"
    return None


def check_upload(data: bytes, *, max_upload_bytes: int) -> str:
    """Return the image format of an upload, or raise UploadTooLarge or NotAnImage."""
    if len(data) > max_upload_bytes:
        raise UploadTooLarge(f"the upload is larger than {max_upload_bytes} bytes")
    image_format = sniff_image_type(data)
    if image_format is None:
        accepted = ", ".join(IMAGE_MEDIA_TYPES.values())
        raise NotAnImage(f"the upload is not an image we accept ({accepted})")
    return image_format


def decode_base64_upload(text: str, *, max_upload_bytes: int) -> bytes:
    """Decode a base64 image (optionally a ``data:image/...;base64,`` URL), refusing oversize input before decoding.

    Raises:
        UploadTooLarge: the decoded image would exceed ``max_upload_bytes``.
        InvalidRequest: the text is not valid base64 (RFC 4648 §4, padding required).
    """
    match = _DATA_URL.match(text)
    encoded = text[match.end() :] if match else text
    # Every 4 base64 characters carry 3 bytes: refuse by arithmetic before allocating the decoded bytes.
    if len(encoded) // 4 * 3 > max_upload_bytes + 2:
        raise UploadTooLarge(f"the upload is larger than {max_upload_bytes} bytes")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("the image is not valid base64") from exc
    if len(data) > max_upload_bytes:
        raise UploadTooLarge(f"the upload is larger than {max_upload_bytes} bytes")
    return data
