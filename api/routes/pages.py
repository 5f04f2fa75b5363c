"""The web page: ``/`` and its static files under ``/static`` (no build step, nothing from a CDN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
#: Sample images from the embedded model's world, drawn by ``python -m scripts.samples`` (the API never draws).
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"

# The API-wide CSP (api/http/security.py) limits images to 'self'; the page previews the image a user
# pastes a link to, so only img-src widens to http(s). Scripts and styles stay 'self' with no
# inline code (OWASP CSP Cheat Sheet); the security middleware keeps this header as set here.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob: http: https:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# The page and its files change with each deploy and carry no hashes in their names: revalidate each time.
_PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
async def read_index() -> FileResponse:
    """The web page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


class _PageFiles(StaticFiles):
    """StaticFiles that asks browsers to revalidate (ETag / Last-Modified) instead of caching blindly."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def register_pages(app: FastAPI) -> None:
    """Serve the web page at ``/``, its scripts, styles and icon under ``/static``, and sample images under ``/samples``."""
    app.include_router(router)
    app.mount("/static", _PageFiles(directory=STATIC_DIR), name="static")
    # A first caption needs an image URL the stack itself serves: /samples/red-circle.png and friends.
    app.mount("/samples", _PageFiles(directory=SAMPLES_DIR), name="samples")
