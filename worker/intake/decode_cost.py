"""What an image will cost to decode, read from its structure before any pixel is decoded.

The pixel limit (``max_image_pixels``) bounds what one pass over an image costs, not how many passes
its file asks for. A progressive JPEG is decoded scan by scan, and every scan walks the whole
coefficient buffer whatever its own size: an 856 KB greyscale JPEG that re-sends one coefficient band
in 10,000 tiny scans took 35 s of CPU. Real encoders write about 10 scans (libjpeg's
``jpeg_simple_progression``) and rarely more than a few dozen (mozjpeg's scan optimisation), so a
ceiling far above that refuses only files made to burn a decoder. A PNG is walked in the same way:
Pillow handles each chunk in Python, so a file of tens of thousands of empty chunks costs per chunk,
not per byte. The other accepted formats (GIF and WebP first frame, BMP, AVIF) cost in proportion to
their pixels and bytes, both bounded already; the decode CPU budget (``worker.intake.decoders``) is the
backstop for whatever a structural walk cannot see.
"""

from __future__ import annotations

import re

from shared.errors import ImageTooComplex

#: Most chunks a PNG may have: an encoder writing 8 KiB IDAT chunks fills a 20 MiB file with 2,560.
MAX_PNG_CHUNKS = 10_000

# In entropy-coded data a 0xFF byte is followed by 0x00 (a stuffed byte), a restart marker (D0-D7) or
# more 0xFF fill bytes; anything else is the next marker (ITU-T T.81 §B.1.1.2 and §B.1.1.5).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOS = 0xDA
_EOI = 0xD9
# Markers that stand alone, with no length field after them: TEM, RST0-7, SOI, EOI (T.81 Table B.1).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, _EOI})
_PNG_SIGNATURE_BYTES = 8


def check_decode_cost(data: bytes, image_format: str, *, max_jpeg_scans: int) -> None:
    """Refuse an image whose structure asks for far more decoding work than its pixels need.

    Cheap: it reads markers and chunk headers only, and stops at the first one over the ceiling.

    Raises:
        ImageTooComplex: a JPEG with more than ``max_jpeg_scans`` scans, or a PNG with more than
            :data:`MAX_PNG_CHUNKS` chunks.
    """
    if image_format == "JPEG":
        scans = count_jpeg_scans(data, stop_after=max_jpeg_scans)
        if scans > max_jpeg_scans:
            raise ImageTooComplex(f"the JPEG has more than {max_jpeg_scans} scans; encoders write about 10")
    elif image_format == "PNG":
        chunks = count_png_chunks(data, stop_after=MAX_PNG_CHUNKS)
        if chunks > MAX_PNG_CHUNKS:
            raise ImageTooComplex(f"the PNG has more than {MAX_PNG_CHUNKS} chunks")


def count_jpeg_scans(data: bytes, *, stop_after: int) -> int:
    """The number of scans (SOS segments) in a JPEG, counting no further than ``stop_after + 1``.

    Walks the marker segments by their lengths, and jumps over each scan's entropy-coded data to the
    next marker with one regex search; a truncated or malformed file is counted as far as it goes
    (the decoder reports it as corrupt).
    """
    scans, pos, end = 0, 2, len(data)  # past SOI
    while pos + 4 <= end and scans <= stop_after:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before a marker
            pos += 1
            continue
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == _SOS:
            scans += 1
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans


def count_png_chunks(data: bytes, *, stop_after: int) -> int:
    """The number of chunks in a PNG, counting no further than ``stop_after + 1`` (RFC 2083 §3.2 layout)."""
    chunks, pos, end = 0, _PNG_SIGNATURE_BYTES, len(data)
    while pos + 8 <= end and chunks <= stop_after:
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunks += 1
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + length  # length, type, data, CRC
    return chunks
