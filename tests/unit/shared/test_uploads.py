"""Up-front upload checks: size, magic bytes and base64, without an image library."""

from __future__ import annotations

import base64
import struct

import pytest

from shared.errors import InvalidRequest, NotAnImage, UploadTooLarge
from shared.intake.uploads import check_upload, decode_base64_upload, sniff_image_type

_BMP_INFO_HEADER = b"BM" + b"\x00" * 12 + struct.pack("<I", 40)

SIGNATURES = [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "JPEG"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG"),
    (b"GIF89a\x01\x00\x01\x00", "GIF"),
    (b"GIF87a\x01\x00\x01\x00", "GIF"),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "WEBP"),
    (_BMP_INFO_HEADER + b"\x00" * 8, "BMP"),
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "AVIF"),
]


@pytest.mark.parametrize(("data", "image_format"), SIGNATURES)
def test_accepted_formats_are_recognised_by_magic_bytes(data: bytes, image_format: str) -> None:
    assert sniff_image_type(data) == image_format


NOT_IMAGES = [
    b"",
    b"<!doctype html><html>",
    b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>",
    b"%PDF-1.7\n",
    b"II*\x00\x08\x00\x00\x00",  # TIFF: decodable, but not on the allow-list
    b"MM\x00*\x00\x00\x00\x08",
    b"BMW 3 series brochure, page 1",  # "BM" alone is not a bitmap
    b"RIFF\x24\x00\x00\x00WAVEfmt ",  # RIFF, but audio
    b"\x00\x00\x00\x18ftypheic\x00\x00",  # HEIC
    b"\x1f\x8b\x08\x00",  # gzip
    b"PK\x03\x04",  # zip
    b"\xff\xd8",  # two bytes of JPEG are not a JPEG
    b"\x89PNG",
]


@pytest.mark.parametrize("data", NOT_IMAGES)
def test_other_content_is_not_an_image(data: bytes) -> None:
    assert sniff_image_type(data) is None
    with pytest.raises(NotAnImage):
        check_upload(data, max_upload_bytes=1024)


def test_an_upload_within_the_limit_returns_its_format() -> None:
    assert check_upload(SIGNATURES[0][0] + b"\x00" * 100, max_upload_bytes=1024) == "JPEG"


def test_an_upload_over_the_limit_is_refused_before_sniffing() -> None:
    with pytest.raises(UploadTooLarge) as caught:
        check_upload(b"<html>" * 1000, max_upload_bytes=1024)
    assert (caught.value.code, caught.value.status) == ("upload_too_large", 413)


def test_base64_and_data_urls_decode_to_the_same_bytes() -> None:
    data = SIGNATURES[1][0]
    encoded = base64.b64encode(data).decode()
    assert decode_base64_upload(encoded, max_upload_bytes=1024) == data
    assert decode_base64_upload(f"data:image/png;base64,{encoded}", max_upload_bytes=1024) == data


def test_oversize_base64_is_refused_by_its_length_alone() -> None:
    with pytest.raises(UploadTooLarge):
        decode_base64_upload("A" * 4000, max_upload_bytes=1024)


@pytest.mark.parametrize("text", ["not base64!", "QUJD\n", "QUJ", "QUJDé==="])
def test_invalid_base64_is_an_invalid_request(text: str) -> None:
    with pytest.raises(InvalidRequest):
        decode_base64_upload(text, max_upload_bytes=1024)
