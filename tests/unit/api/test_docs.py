"""/docs and /redoc: served from the installed fastapi-offline package, started by a script file, no CDN."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.routes.docs import ASSETS_DIR, REDOC_BUNDLE_URL, REDOCLY_LOGO_URL, register_docs


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_script_and_style_of_the_page_is_served_here(client: TestClient, page: str) -> None:
    html = client.get(page).text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert "<script>" not in html, "inline scripts would need 'unsafe-inline'"
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 0, url


def test_the_bundles_are_the_packages_files(client: TestClient) -> None:
    served = client.get("/docs/assets/swagger-ui-bundle.js")
    assert served.content == (ASSETS_DIR / "swagger-ui-bundle.js").read_bytes()
    assert served.headers["content-type"].startswith("text/javascript")
    assert "SwaggerUIBundle" in client.get("/docs/swagger-init.js").text


def test_the_asset_mount_serves_nothing_outside_the_package(client: TestClient) -> None:
    for path in ("/docs/assets/../core.py", "/docs/assets/%2e%2e/core.py", "/docs/assets/missing.js"):
        assert client.get(path).status_code == 404, path


def test_the_pages_stay_out_of_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(path.startswith(("/docs", "/redoc")) for path in paths)


def test_fastapis_cdn_pages_must_be_off() -> None:
    with pytest.raises(ValueError, match="docs_url=None"):
        register_docs(FastAPI())


def test_redocs_bundle_reaches_no_other_site(client: TestClient) -> None:
    original = (ASSETS_DIR / "redoc.standalone.js").read_text(encoding="utf-8")
    assert REDOCLY_LOGO_URL in original  # the package still ships it: the replacement has something to do
    served = client.get(REDOC_BUNDLE_URL)
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/javascript")
    assert REDOCLY_LOGO_URL not in served.text and "cdn.redoc.ly" not in served.text
    assert len(served.text) > len(original) * 0.99
