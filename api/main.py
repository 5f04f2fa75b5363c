"""ASGI entry point: ``uvicorn api.main:app`` serves the API configured from the environment.

The app is built here, at import, because this module is only ever imported by the
server; everything else calls :func:`api.create_app` with explicit settings.
"""

from __future__ import annotations

from fastapi import FastAPI

from api.app import create_app
from shared.logs import configure_logging
from shared.settings import get_settings


def build_app() -> FastAPI:
    """The API configured from ``CAPTIONIZER_*`` variables, with JSON logs (``uvicorn --factory``)."""
    settings = get_settings()
    configure_logging("api", settings.log_level)
    return create_app(settings)


app = build_app()
