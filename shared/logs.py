"""JSON logs, one event per line, configured once by each process's entry point.

Modules log with ``logger.info("job finished", extra={"job_id": ..., "duration_s": ...})``;
every ``extra`` field becomes a top-level JSON member.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=`.
# uvicorn's "color_message" repeats the event with terminal colours.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object with its ``extra`` fields."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process_name,
            "event": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and not name.startswith("_"):
                event[name] = value
        if record.exc_info:
            event["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def configure_logging(process_name: str, level: str = "INFO") -> None:
    """Send every log record to stdout as JSON; call once per process."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Python warnings (e.g. Celery's SecurityWarning) become JSON lines too, not stderr text.
    logging.captureWarnings(True)
    # Servers configure their own loggers before our entry point runs (uvicorn's dictConfig
    # gives "uvicorn" and "uvicorn.access" plain-text handlers that do not propagate): send
    # those through the root's JSON handler too, so every line of the process is JSON.
    for existing in list(logging.root.manager.loggerDict.values()):
        if isinstance(existing, logging.Logger) and existing.handlers:
            existing.handlers.clear()
            existing.propagate = True
