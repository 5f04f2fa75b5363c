"""cli.alt_text: finding <img> tags, splicing alt attributes in, resolving src to images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli.alt_text import (
    MAX_IMAGE_BYTES,
    find_images,
    plan_page,
    read_local_image,
    read_page,
    resolve_source,
    splice_alts,
    with_alt,
    write_page,
)
from cli.batch import ImageSource

PAGE = """<!doctype html>\r
<html><head><title>Shapes &amp; more</title>\r
<script>var s = '<img src="in-script.png">';</script></head>\r
<body>\r
<!-- <img src="commented.png"> -->\r
<IMG SRC=one.png class=hero>\r
<p>text <img alt="" src="two.png"/> and <img src='three.png' ALT='Kept as is'></p>\r
<img\r
   src="four.png"\r
   alt>\r
</body></html>\r
"""


def test_only_real_img_tags_are_found_with_exact_offsets() -> None:
    tags = find_images(PAGE)
    assert [t.src for t in tags] == ["one.png", "two.png", "three.png", "four.png"]
    for tag in tags:
        assert PAGE[tag.offset : tag.offset + len(tag.raw)] == tag.raw


def test_missing_and_empty_alt_need_filling_and_existing_alt_is_kept() -> None:
    needs = [t.needs_alt() for t in find_images(PAGE)]
    assert needs == [True, True, False, True]
    assert [t.needs_alt(fill_empty=False) for t in find_images(PAGE)] == [True, False, False, False]


def test_splicing_changes_only_the_tags_it_fills() -> None:
    tags = find_images(PAGE)
    result = splice_alts(PAGE, {tags[0]: "a red circle", tags[1]: "a blue square", tags[3]: "a triangle"})
    expected = (
        PAGE.replace("<IMG SRC=one.png", '<IMG alt="a red circle" SRC=one.png')
        .replace('alt="" src="two.png"', 'alt="a blue square" src="two.png"')
        .replace('"four.png"\r\n   alt>', '"four.png"\r\n   alt="a triangle">')
    )
    assert result == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<img src=a.png>", '<img alt="x" src=a.png>'),
        ("<img/src=a.png>", '<img alt="x"/src=a.png>'),
        ("<img src=a.png />", '<img alt="x" src=a.png />'),
        ('<img title="alt=" alt = "" src=a>', '<img title="alt=" alt="x" src=a>'),
        ("<img src=a.png alt=''>", '<img src=a.png alt="x">'),
        ("<img src=a.png Alt>", '<img src=a.png alt="x">'),
        ('<img data-alt="" src=a>', '<img alt="x" data-alt="" src=a>'),
    ],
)
def test_with_alt_replaces_the_alt_attribute_or_adds_one(raw: str, expected: str) -> None:
    assert with_alt(raw, "x") == expected


def test_alt_text_is_escaped_for_any_page_encoding() -> None:
    assert with_alt("<img>", 'a "quoted" <b> & café') == '<img alt="a &quot;quoted&quot; &lt;b&gt; &amp; caf&#233;">'


def test_undecodable_bytes_survive_the_round_trip(tmp_path: Path) -> None:
    page = tmp_path / "latin1.html"
    original = b"<p>caf\xe9</p><img src=a.png>\r\n"
    page.write_bytes(original)
    text = read_page(page)
    write_page(page, splice_alts(text, {find_images(text)[0]: "a circle"}))
    assert page.read_bytes() == b'<p>caf\xe9</p><img alt="a circle" src=a.png>\r\n'


@pytest.mark.parametrize(
    ("src", "base_url", "expected"),
    [
        ("https://img.test/a.png", None, ImageSource(label="https://img.test/a.png", url="https://img.test/a.png")),
        ("//cdn.test/a.png", None, ImageSource(label="https://cdn.test/a.png", url="https://cdn.test/a.png")),
        ("../a.png", "http://site.test/blog/post/", ImageSource(label="../a.png", url="http://site.test/blog/a.png")),
        ("/a.png", "http://site.test/blog/", ImageSource(label="/a.png", url="http://site.test/a.png")),
        (
            "data:image/png;base64,iVBORw==",
            None,
            ImageSource(label="data:image/png;base64,iVBORw==", data=b"\x89PNG", content_type="image/png"),
        ),
        ("data:,GIF89a%00", None, ImageSource(label="data:,GIF89a%00", data=b"GIF89a\x00")),
    ],
)
def test_src_resolves_to_url_file_or_bytes(src: str, base_url: str | None, expected: ImageSource) -> None:
    assert resolve_source(src, Path("/site/index.html"), base_url=base_url) == expected


@pytest.mark.parametrize(
    ("src", "reason"),
    [("", "no src"), ("/abs.png", "--base-url"), ("ftp://x/a.png", "ftp"), ("data:image/png;base64", "malformed")],
)
def test_unusable_src_says_why(src: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        resolve_source(src, Path("/site/index.html"))


def test_plan_captions_a_repeated_image_once_and_reports_what_it_skips(tmp_path: Path) -> None:
    (tmp_path / "logo.png").write_bytes(PNG)
    page = '<img src="logo.png"><img src="logo.png" alt=""><img alt="Kept" src=x.png><img><img src="/root.png">'
    plan = plan_page(page, tmp_path / "index.html")
    assert plan.sources == [ImageSource(label="logo.png", data=PNG, content_type="image/png")]
    assert len(plan.targets) == 2
    assert plan.kept == 1
    assert plan.skipped == [("<img>", "the tag has no src"), ("/root.png", "a root-relative src needs --base-url")]


# --- a page is untrusted: local images only from regular files inside its folder (or --root) ------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A page's folder with one image, a secret next to the folder, and hostile entries inside it."""
    folder = tmp_path / "site"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "a b.png").write_bytes(PNG)
    (tmp_path / "shadow").write_text("root:secret-hash")
    (folder / "out-link.png").symlink_to(tmp_path / "shadow")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "in-link.png").symlink_to(folder / "img" / "a b.png")
    (folder / "dir.png").mkdir()
    os.mkfifo(folder / "fifo.png")
    (folder / "huge.png").write_bytes(PNG + b"\x00" * MAX_IMAGE_BYTES)
    return folder


def test_a_file_in_the_pages_folder_is_read_with_its_src_decoded(site: Path) -> None:
    source = resolve_source("img/a%20b.png?v=2#x", site / "index.html")
    assert source == ImageSource(label="img/a%20b.png?v=2#x", data=PNG, content_type="image/png")


def test_a_symlink_that_stays_inside_is_followed(site: Path) -> None:
    assert resolve_source("in-link.png", site / "index.html").data == PNG


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        ("../shadow", "refused: the file is outside"),
        ("img/../../shadow", "refused: the file is outside"),
        ("../../../../../../etc/shadow", "refused: the file is outside"),
        ("..%2Fshadow", "refused: the file is outside"),
        ("out-link.png", "refused: the file is outside"),
        ("zero.png", "refused: the file is outside"),
        ("file:///etc/passwd", "cannot fetch file: images"),
        ("/etc/passwd", "a root-relative src needs --base-url"),
        ("dir.png", "refused: not a regular file"),
        ("fifo.png", "refused: not a regular file"),
        ("huge.png", f"refused: the file is larger than {MAX_IMAGE_BYTES} bytes"),
        ("missing.png", "cannot read the file: No such file or directory"),
    ],
)
def test_hostile_local_src_is_refused_with_its_reason(site: Path, src: str, reason: str) -> None:
    with pytest.raises(ValueError) as refused:
        resolve_source(src, site / "index.html")
    assert str(refused.value).startswith(reason)


def test_dev_zero_is_refused_even_inside_a_root_that_holds_it() -> None:
    with pytest.raises(ValueError, match="refused: not a regular file"):
        read_local_image(Path("/dev/zero"), Path("/"))


def test_root_widens_what_a_page_may_read(site: Path) -> None:
    page = site / "blog" / "post.html"
    page.parent.mkdir()
    with pytest.raises(ValueError, match="outside"):
        resolve_source("../img/a%20b.png", page)
    assert resolve_source("../img/a%20b.png", page, root=site).data == PNG


def test_the_rest_of_the_page_is_planned_when_some_images_are_refused(site: Path) -> None:
    page = '<img src="../shadow"><img src="img/a%20b.png"><img src="fifo.png"><img src="zero.png">'
    plan = plan_page(page, site / "index.html")
    assert plan.sources == [ImageSource(label="img/a%20b.png", data=PNG, content_type="image/png")]
    assert [src for src, _ in plan.skipped] == ["../shadow", "fifo.png", "zero.png"]
