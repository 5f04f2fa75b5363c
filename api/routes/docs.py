"""The API reference pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served with no CDN.

FastAPI's own pages load their scripts from jsDelivr and start them with an inline script, so
offline they are blank, and they need a CSP that allows both. These load the same scripts from the
installed ``fastapi-offline`` package under ``/docs/assets`` and start Swagger UI from a script file,
so the API's strict CSP applies to them: scripts from 'self' only, no inline code. ReDoc alone needs
inline styles: its bundle writes <style> elements (styled-components, style-loader) as it loads, before
it could read a nonce (ReDoc's ``nonce`` option comes too late: tried, the page breaks with its error #17).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

#: Swagger UI's and ReDoc's bundles, as the fastapi-offline package ships them.
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
ASSETS_URL = "/docs/assets"
OPENAPI_URL = "/openapi.json"

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
<script src="{ASSETS_URL}/redoc.standalone.js"></script>
</body>
</html>
"""
# The API's policy (api/http/security.py) with two additions for ReDoc's page: inline styles, and its search
# index's worker, which it starts from a blob: URL. Scripts stay 'self' only, and the page reflects no
# input. Its "API docs by Redocly" logo comes from cdn.redoc.ly: refused by img-src, the logo hides itself.
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
