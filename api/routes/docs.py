"""The API reference pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served with no CDN.

FastAPI's own pages load their scripts from jsDelivr and start them with an inline script, so
offline they are blank, and they need a CSP that allows both. These load the same scripts from the
installed ``fastapi-offline`` package under ``/docs/assets`` and start Swagger UI from a script file,
so the API's strict CSP applies to them: scripts from 'self' only, no inline code. ReDoc alone needs
inline styles: its bundle writes <style> elements (styled-components, style-loader) as it loads, before
it could read a nonce (ReDoc's ``nonce`` option comes too late: tried, the page breaks with its error #17).
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

#: Swagger UI's and ReDoc's bundles, as the fastapi-offline package ships them.
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
ASSETS_URL = "/docs/assets"
OPENAPI_URL = "/openapi.json"
#: ReDoc's bundle with its footer logo made local (see :func:`redoc_bundle`).
REDOC_BUNDLE_URL = "/docs/redoc.js"
#: The one off-site URL in ReDoc's bundle: its "API docs by Redocly" footer logo (no option turns it off).
REDOCLY_LOGO_URL = "https://cdn.redoc.ly/redoc/logo-mini.svg"
# An empty SVG in its place: img-src allows data:, so the browser loads it instead of breaking the CSP.
_EMPTY_SVG = "data:image/svg+xml,%3Csvg%20xmlns='http://www.w3.org/2000/svg'%20width='1'%20height='1'/%3E"

# The page's own start-up code, from a file rather than inline (CSP script-src 'self').
_SWAGGER_INIT_JS = f"""\
window.ui = SwaggerUIBundle({{
  url: "{OPENAPI_URL}",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  // No badge from validator.swagger.io: nothing on these pages leaves this server.
  validatorUrl: null,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
}});
"""
_SWAGGER_HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Captionizer API - Swagger UI</title>
<link rel="icon" href="{ASSETS_URL}/favicon.png">
<link rel="stylesheet" href="{ASSETS_URL}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS_URL}/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-init.js"></script>
</body>
</html>
"""
_REDOC_HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Captionizer API - ReDoc</title>
<link rel="icon" href="{ASSETS_URL}/favicon.png">
</head>
<body>
<redoc spec-url="{OPENAPI_URL}"></redoc>
<script src="{REDOC_BUNDLE_URL}"></script>
</body>
</html>
"""
# The API's policy (api/http/security.py) with two additions for ReDoc's page: inline styles, and its search
# index's worker, which it starts from a blob: URL. Scripts stay 'self' only, and the page reflects no input.
REDOC_CSP = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The pages change with each deploy; the assets with the package version. Revalidate both.
_HEADERS = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def read_swagger_ui() -> HTMLResponse:
    """Swagger UI over the API's OpenAPI document."""
    return HTMLResponse(_SWAGGER_HTML, headers=_HEADERS)


@router.get("/docs/swagger-init.js")
async def read_swagger_init() -> Response:
    """The script that starts Swagger UI."""
    return Response(_SWAGGER_INIT_JS, media_type="text/javascript; charset=utf-8", headers=_HEADERS)


@functools.cache
def redoc_bundle() -> bytes:
    """ReDoc's bundle with its footer logo's cdn.redoc.ly URL replaced by an empty data: image.

    Left as it is, every visit to /redoc loads the logo off-site, which the CSP refuses with an
    error in the console; allowing cdn.redoc.ly would let the page reach the network.
    """
    bundle = (ASSETS_DIR / "redoc.standalone.js").read_text(encoding="utf-8")
    return bundle.replace(REDOCLY_LOGO_URL, _EMPTY_SVG).encode("utf-8")


@router.get(REDOC_BUNDLE_URL)
async def read_redoc_bundle() -> Response:
    """ReDoc's script, with nothing in it that leaves this server."""
    return Response(redoc_bundle(), media_type="text/javascript; charset=utf-8", headers=_HEADERS)


@router.get("/redoc")
async def read_redoc() -> HTMLResponse:
    """ReDoc over the API's OpenAPI document."""
    return HTMLResponse(_REDOC_HTML, headers={**_HEADERS, "Content-Security-Policy": REDOC_CSP})


def register_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets; ``app`` must be built with ``docs_url=None, redoc_url=None``."""
    if app.docs_url or app.redoc_url:
        raise ValueError("turn FastAPI's CDN-based docs off (docs_url=None, redoc_url=None) first")
    app.include_router(router)
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
