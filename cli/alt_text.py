"""Fill in the missing ``alt`` of a page's ``<img>`` tags by splicing captions into the original text.

html.parser only locates the tags (so ``<img>`` inside comments or scripts is never touched); the page
itself is never re-serialised, so every byte outside the edited tags stays as it was. A page is
untrusted input: its ``src`` attributes read only regular files inside the page's folder (or
``--root``), never more than :data:`MAX_IMAGE_BYTES` each, so ``src="../../etc/shadow"``, a symlink
out, ``/dev/zero`` or a FIFO is refused for that image and the rest of the page is still processed.
"""

from __future__ import annotations

import base64
import binascii
import html
import mimetypes
import os
import re
import stat
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

from cli.batch import ImageSource, is_url, unsupported_reason

# The tag-name and attribute patterns of CPython 3.11's html.parser (``tagfind_tolerant`` and
# ``attrfind_tolerant``), so the spans found here are the attributes the parser reported.
_TAG_NAME = re.compile(r"<[a-zA-Z][^\t\n\r\f />\x00]*(?:\s|/(?!>))*")
#: Largest local image read for a page: the API's default upload limit (``max_upload_bytes``).
MAX_IMAGE_BYTES = 10 * 1024 * 1024
# O_NOFOLLOW: the last component must not be a symlink swapped in after the check; O_NONBLOCK: opening
# a FIFO must not wait for a writer. Neither exists on Windows, where both risks are smaller.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)

_ATTRIBUTE = re.compile(r"""((?<=['"\s/])[^\s/>][^\s/=>]*)(\s*=+\s*('[^']*'|"[^"]*"|(?!['"])[^>\s]*))?(?:\s|/(?!>))*""")


@dataclass(frozen=True)
class ImgTag:
    """One ``<img>`` start tag: where its raw text sits in the page, and its attributes."""

    offset: int
    raw: str
    #: Not part of equality or the hash: the offset alone identifies a tag within its page.
    attrs: dict[str, str | None] = field(compare=False)

    @property
    def src(self) -> str:
        """The ``src`` attribute, entities decoded, or ``""``."""
        return (self.attrs.get("src") or "").strip()

    def needs_alt(self, *, fill_empty: bool = True) -> bool:
        """True when ``alt`` is missing, or (with ``fill_empty``) empty or blank."""
        if "alt" not in self.attrs:
            return True
        return fill_empty and not (self.attrs["alt"] or "").strip()


class _ImgFinder(HTMLParser):
    """Collects ``<img>`` start tags with their absolute offsets in the fed text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        # getpos() counts lines by "\n" only, so "\r\n" pages map back exactly.
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._text = text
        self.tags: list[ImgTag] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "img":
            return
        raw = self.get_starttag_text() or ""
        line, column = self.getpos()
        offset = self._line_starts[line - 1] + column
        if not self._text.startswith(raw, offset):
            return  # the parser recovered from broken markup; never splice where we are unsure
        first: dict[str, str | None] = {}
        for name, value in attrs:
            first.setdefault(name, value)  # HTML keeps the first of duplicated attributes
        self.tags.append(ImgTag(offset, raw, first))


def find_images(text: str) -> list[ImgTag]:
    """Every ``<img>`` start tag of an HTML document, in document order."""
    finder = _ImgFinder(text)
    finder.feed(text)
    finder.close()
    return finder.tags


def with_alt(raw: str, alt: str) -> str:
    """The tag's raw text with ``alt`` set: an empty ``alt`` replaced in place, a missing one added."""
    value = html.escape(alt, quote=True).encode("ascii", "xmlcharrefreplace").decode("ascii")
    name = _TAG_NAME.match(raw)
    if name is None:
        raise ValueError(f"not a start tag: {raw[:40]!r}")
    position = name.end()
    while (attribute := _ATTRIBUTE.match(raw, position)) is not None and attribute.end() > position:
        if attribute.group(1).lower() == "alt":
            end = attribute.end(2) if attribute.group(2) else attribute.end(1)
            return f'{raw[: attribute.start(1)]}alt="{value}"{raw[end:]}'
        position = attribute.end()
    tag_end = len("<img")
    # Right after the tag name is the one place an attribute always fits, even in "<img/src=x>".
    return f'{raw[:tag_end]} alt="{value}"{raw[tag_end:]}'


def splice_alts(text: str, alts: dict[ImgTag, str]) -> str:
    """The document with each tag in ``alts`` rewritten; everything else is copied unchanged."""
    pieces: list[str] = []
    cursor = 0
    for tag in sorted(alts, key=lambda t: t.offset):
        pieces.append(text[cursor : tag.offset])
        pieces.append(with_alt(tag.raw, alts[tag]))
        cursor = tag.offset + len(tag.raw)
    pieces.append(text[cursor:])
    return "".join(pieces)


def resolve_source(
    src: str, page: Path, *, base_url: str | None = None, root: Path | None = None, max_bytes: int = MAX_IMAGE_BYTES
) -> ImageSource:
    """What the API should caption for an ``<img src>`` on ``page``; ``ValueError`` says why not.

    URLs go to the API as they are; relative ``src`` resolve against ``base_url`` when given, otherwise
    they are files next to the page, read here (see :func:`read_local_image`); ``data:`` images are uploaded.
    """
    if not src:
        raise ValueError("the tag has no src")
    if src.lower().startswith("data:"):
        source = _data_uri_source(src)
        _refuse_unsupported("", source.content_type)
        return source
    # By the name alone, before any fetch or read: SVG logos are common on documentation sites.
    _refuse_unsupported(urlsplit(src).path, None)
    if src.startswith("//"):
        src = (urlsplit(base_url).scheme if base_url else "https") + ":" + src
    if is_url(src):
        return ImageSource(label=src, url=src)
    if base_url is not None:
        return ImageSource(label=src, url=urljoin(base_url, src))
    parts = urlsplit(src)
    if parts.scheme:
        raise ValueError(f"cannot fetch {parts.scheme}: images")
    if parts.path.startswith("/"):
        raise ValueError("a root-relative src needs --base-url")
    local = page.parent / unquote(parts.path)
    data = read_local_image(local, root or page.parent, max_bytes=max_bytes)
    # The type from the name, so the upload is named image.png, image.jpg...; the API sniffs the bytes anyway.
    return ImageSource(label=src, data=data, content_type=mimetypes.guess_type(local.name)[0])


def _refuse_unsupported(name: str, media_type: str | None) -> None:
    reason = unsupported_reason(name, media_type)
    if reason is not None:
        raise ValueError(reason)


def read_local_image(path: Path, root: Path, *, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file inside ``root`` of at most ``max_bytes``; else ``ValueError``.

    Symlinks and ``..`` are resolved first, so a link pointing out of ``root`` is refused like a path that
    climbs out of it; the file is then opened without following a link and checked on the open descriptor.
    """
    real, real_root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if not real.is_relative_to(real_root):
        raise ValueError(f"refused: the file is outside {root} (use --root to allow a wider folder)")
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror or exc}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ValueError("refused: not a regular file")
    with os.fdopen(fd, "rb") as file:
        if info.st_size > max_bytes:
            raise ValueError(f"refused: the file is larger than {max_bytes} bytes")
        # Bounded even if the file grows after fstat.
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"refused: the file is larger than {max_bytes} bytes")
    return data


def _data_uri_source(src: str) -> ImageSource:
    header, comma, payload = src[len("data:") :].partition(",")
    if not comma:
        raise ValueError("malformed data: URI")
    media_type, *params = header.split(";")
    try:
        data = base64.b64decode(payload, validate=False) if "base64" in params else unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("malformed data: URI") from exc
    label = src if len(src) <= 40 else src[:37] + "..."
    return ImageSource(label=label, data=data, content_type=media_type or None)


def read_page(path: Path) -> str:
    """The page as text; undecodable bytes survive the round trip through :func:`write_page`."""
    return path.read_bytes().decode("utf-8", errors="surrogateescape")


def write_page(path: Path, text: str) -> None:
    """Write text read by :func:`read_page`, restoring any non-UTF-8 bytes exactly."""
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))


@dataclass
class PagePlan:
    """Which tags of a page get alt text from which image, and which cannot (with the reason)."""

    targets: dict[ImgTag, ImageSource]
    skipped: list[tuple[str, str]]
    kept: int

    @property
    def sources(self) -> list[ImageSource]:
        """Each distinct image once, so a logo used ten times is captioned once."""
        return list(dict.fromkeys(self.targets.values()))


def plan_page(
    text: str, page: Path, *, base_url: str | None = None, fill_empty: bool = True, root: Path | None = None
) -> PagePlan:
    """Find the page's images that need alt text and resolve each to a source (local files under ``root``)."""
    plan = PagePlan(targets={}, skipped=[], kept=0)
    # Each distinct src is resolved (and its file read) once, however often the page uses it.
    resolved: dict[str, ImageSource | ValueError] = {}
    for tag in find_images(text):
        if not tag.needs_alt(fill_empty=fill_empty):
            plan.kept += 1
            continue
        if tag.src not in resolved:
            resolved[tag.src] = _resolve_or_error(tag.src, page, base_url, root)
        source = resolved[tag.src]
        if isinstance(source, ValueError):
            plan.skipped.append((tag.src[:60] or tag.raw[:60], str(source)))
        else:
            plan.targets[tag] = source
    return plan


def _resolve_or_error(src: str, page: Path, base_url: str | None, root: Path | None) -> ImageSource | ValueError:
    try:
        return resolve_source(src, page, base_url=base_url, root=root)
    except ValueError as exc:
        return exc
