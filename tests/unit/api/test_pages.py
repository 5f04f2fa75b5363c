"""The web page: served at / with its security headers, self-contained, labelled and consistent with app.js."""

from __future__ import annotations

import asyncio
import re
from html.parser import HTMLParser

import httpx
import pytest

from api.app import create_app
from api.routes.pages import PAGE_CSP, STATIC_DIR
from shared.settings import Settings


class _PageParser(HTMLParser):
    """Collects the tags of index.html with their attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


@pytest.fixture(scope="module")
def page_tags() -> list[tuple[str, dict[str, str | None]]]:
    parser = _PageParser()
    parser.feed((STATIC_DIR / "index.html").read_text(encoding="utf-8"))
    return parser.tags


def fetch(settings: Settings, path: str) -> httpx.Response:
    # No lifespan: serving the page must not need Redis.
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    return asyncio.run(go())


def test_page_is_served_with_its_own_csp_and_security_headers(settings: Settings) -> None:
    response = fetch(settings, "/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == PAGE_CSP
    assert "frame-ancestors 'none'" in PAGE_CSP and "default-src 'self'" in PAGE_CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "<title>Captionizer" in response.text


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/static/app.js", "javascript"), ("/static/style.css", "text/css"), ("/static/favicon.svg", "image/svg+xml")],
)
def test_static_files_are_served_with_their_types(settings: Settings, path: str, content_type: str) -> None:
    response = fetch(settings, path)
    assert response.status_code == 200
    assert content_type in response.headers["content-type"]
    assert response.headers["x-content-type-options"] == "nosniff"


def test_unknown_static_file_is_a_problem_404(settings: Settings) -> None:
    response = fetch(settings, "/static/nope.js")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


def test_page_has_no_inline_code_and_loads_only_its_own_files(
    page_tags: list[tuple[str, dict[str, str | None]]],
) -> None:
    for tag, attrs in page_tags:
        assert not any(name.startswith("on") for name in attrs), f"inline handler on <{tag}>"
        assert "style" not in attrs, f"inline style on <{tag}>"
        if tag == "script":
            assert attrs.get("src", "").startswith("/static/"), "inline or foreign script"
        if tag == "link" and attrs.get("rel") in ("stylesheet", "icon"):
            href = attrs.get("href") or ""
            assert href.startswith("/static/") and (STATIC_DIR / href.removeprefix("/static/")).is_file()
    assert "<style" not in (STATIC_DIR / "index.html").read_text(encoding="utf-8")


def test_every_input_has_a_label_and_every_image_an_alt(page_tags: list[tuple[str, dict[str, str | None]]]) -> None:
    labelled = {attrs.get("for") for tag, attrs in page_tags if tag == "label"}
    inputs = [attrs for tag, attrs in page_tags if tag in ("input", "select", "textarea")]
    assert inputs
    for attrs in inputs:
        assert attrs.get("id") in labelled or attrs.get("aria-label"), f"unlabelled input {attrs}"
    assert all(attrs.get("alt") for tag, attrs in page_tags if tag == "img")


def test_status_is_announced_and_errors_are_alerts(page_tags: list[tuple[str, dict[str, str | None]]]) -> None:
    by_id = {attrs.get("id"): attrs for _, attrs in page_tags if attrs.get("id")}
    assert by_id["status"]["aria-live"] == "polite"
    assert by_id["error"]["role"] == "alert"


def test_every_element_app_js_looks_up_exists(page_tags: list[tuple[str, dict[str, str | None]]]) -> None:
    ids = {attrs.get("id") for _, attrs in page_tags}
    script = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    looked_up = set(re.findall(r'\$\("([\w-]+)"\)', script))
    assert looked_up and looked_up <= ids, looked_up - ids
