"""Fill in the missing ``alt`` of a page's ``<img>`` tags by splicing captions into the original text.

html.parser only locates the tags (so ``<img>`` inside comments or scripts is never touched); the page
itself is never re-serialised, so every byte outside the edited tags stays as it was.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

from cli.batch import ImageSource, is_url

# The tag-name and attribute patterns of CPython 3.11's html.parser (``tagfind_tolerant`` and
# ``attrfind_tolerant``), so the spans found here are the attributes the parser reported.
_TAG_NAME = re.compile(r"<[a-zA-Z][^\t\n\r\f />\x00]*(?:\s|/(?!>))*")
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


def resolve_source(src: str, page: Path, *, base_url: str | None = None) -> ImageSource:
    """What the API should caption for an ``<img src>`` on ``page``; ``ValueError`` says why not.

    URLs go to the API as they are; relative ``src`` resolve against ``base_url`` when given, otherwise
    they are files next to the page; ``data:`` images are uploaded.
    """
    if not src:
        raise ValueError("the tag has no src")
    if src.lower().startswith("data:"):
        return _data_uri_source(src)
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
    return ImageSource(label=src, path=page.parent / unquote(parts.path))


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


def plan_page(text: str, page: Path, *, base_url: str | None = None, fill_empty: bool = True) -> PagePlan:
    """Find the page's images that need alt text and resolve each to a source."""
    plan = PagePlan(targets={}, skipped=[], kept=0)
    for tag in find_images(text):
        if not tag.needs_alt(fill_empty=fill_empty):
            plan.kept += 1
            continue
        try:
            plan.targets[tag] = resolve_source(tag.src, page, base_url=base_url)
        except ValueError as exc:
            plan.skipped.append((tag.src[:60] or tag.raw[:60], str(exc)))
    return plan
