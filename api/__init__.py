"""The HTTP API: FastAPI routes over the shared job store and queue; it never imports the model."""

from api.app import create_app

__all__ = ["create_app"]
