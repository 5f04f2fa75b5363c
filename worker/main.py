"""Worker entry point: ``celery -A worker worker`` builds the app here, from the environment, once."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from shared.logs import configure_logging, install_redaction
from shared.settings import get_settings
from worker.celery_app import make_celery

_settings = get_settings()
# Before Celery starts, so the model loading at worker_init is logged too.
configure_logging("worker", _settings.log_level)


def _keep_json_logging(**_: Any) -> None:
    configure_logging("worker", _settings.log_level)


def _redact_celery_handlers(logger: logging.Logger | None = None, **_: Any) -> None:
    # Celery sends these only if it configures a logger itself; any handler it adds redacts URLs too.
    install_redaction(*([logger] if logger is not None else []))


# With a setup_logging receiver connected, Celery installs no handlers of its own: JSON lines only.
signals.setup_logging.connect(_keep_json_logging, weak=False)
signals.after_setup_logger.connect(_redact_celery_handlers, weak=False)
signals.after_setup_task_logger.connect(_redact_celery_handlers, weak=False)


celery_app = make_celery(_settings)
