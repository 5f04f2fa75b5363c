"""ASGI entry point: ``uvicorn --factory api.main:create_app_from_env`` serves the API configured from the environment.

Nothing is built at import: uvicorn calls the factory once it has set up its process,
and everything else calls :func:`api.create_app` with explicit settings.
"""

from __future__ import annotations

from fastapi import FastAPI

from api.app import create_app
from shared.logs import configure_logging
from shared.settings import get_settings


def create_app_from_env() -> FastAPI:
    """The API configured from ``CAPTIONIZER_*`` variables, with JSON logs."""
    settings = get_settings()
    configure_logging("api", settings.log_level)
    return create_app(settings)
