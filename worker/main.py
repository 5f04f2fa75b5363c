"""Worker entry point: ``celery -A worker worker`` builds the app here, from the environment, once."""

from __future__ import annotations

from typing import Any

from celery import signals

from shared.logs import configure_logging
from shared.settings import get_settings
from worker.celery_app import make_celery

_settings = get_settings()
# Before Celery starts, so the model loading at worker_init is logged too.
configure_logging("worker", _settings.log_level)


def _keep_json_logging(**_: Any) -> None:
    configure_logging("worker", _settings.log_level)


# With a setup_logging receiver connected, Celery installs no handlers of its own: JSON lines only.
signals.setup_logging.connect(_keep_json_logging, weak=False)


celery_app = make_celery(_settings)
