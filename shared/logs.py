"""JSON logs, one event per line, with no secret in them, configured once by each process's entry point.

Modules log with ``logger.info("job finished", extra={"job_id": ..., "duration_s": ...})``;
every ``extra`` field becomes a top-level JSON member. Image and webhook URLs are the
callers' own, and signed URLs (``?sig=``, ``?token=``) or ``user:password@`` carry
credentials: every URL's user info, query and fragment are redacted from every line,
Celery's and uvicorn's included, whatever logged it (OWASP Logging Cheat Sheet,
"data to exclude").
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

#: What replaces a URL's user info, query or fragment.
REDACTED = "REDACTED"

# A URL: scheme://, optional user info, then host and path up to a query or fragment. Quotes,
# backslashes and angle brackets end it, so a URL inside a repr, JSON text or markup stops there.
_URL = re.compile(
    r"""(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s/?#@'"\\<>]*@)?(?P<rest>[^\s?#'"\\<>]*)"""
    r"""(?P<query>\?[^\s#'"\\<>]*)?(?P<fragment>#[^\s'"\\<>]*)?"""
)
# A request target without scheme and host (``GET /v1/caption?image_url=...`` in access logs).
_PATH_QUERY = re.compile(r"""(?<![\w/:.-])(?P<path>/[^\s?#'"\\<>]*)\?(?!REDACTED)[^\s#'"\\<>]*""")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
# uvicorn's "color_message" repeats the event with terminal colours.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


_TRACEBACK_FORMATTER = logging.Formatter()


def redact_urls(text: str) -> str:
    """``text`` with the user info, query string and fragment of every URL in it replaced by ``REDACTED``."""
    if "?" not in text and "@" not in text and "#" not in text:
        return text  # the common case: nothing that could hide a credential
    return _PATH_QUERY.sub(rf"\g<path>?{REDACTED}", _URL.sub(_redact_match, text))


def _redact_match(match: re.Match[str]) -> str:
    parts = [match["head"], f"{REDACTED}@" if match["userinfo"] else "", match["rest"]]
    if match["query"]:
        parts.append(f"?{REDACTED}")
    if match["fragment"]:
        parts.append(f"#{REDACTED}")
    return "".join(parts)


def redact_value(value: Any) -> Any:
    """A log field with every URL in it redacted; objects other than JSON's become their redacted text."""
    if isinstance(value, str):
        return redact_urls(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(key): redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item) for item in value]
    return redact_urls(str(value))


class RedactingFilter(logging.Filter):
    """Redacts URLs in a record's message in place, before any handler formats it.

    Installed on every handler of the process (:func:`install_redaction`), so even a
    handler with a formatter of its own (Celery's, uvicorn's) writes no secret.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_urls(message)
        if redacted != message:
            # Freeze the message: args rendered again by another formatter would bring the secret back.
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text once it is set, so a traceback's messages are redacted for all.
            record.exc_text = redact_urls(_TRACEBACK_FORMATTER.formatException(record.exc_info))
        for name, value in list(vars(record).items()):
            # Text and containers only: other objects stay what they are for their own formatter.
            if name not in _STANDARD_ATTRS and not name.startswith("_") and isinstance(value, str | Mapping | list):
                setattr(record, name, redact_value(value))
        return True


def install_redaction(*loggers: logging.Logger) -> None:
    """Put a :class:`RedactingFilter` on every handler of ``loggers`` (default: every logger there is)."""
    targets = loggers or (logging.getLogger(), *_every_logger())
    for target in targets:
        for handler in target.handlers:
            if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
                handler.addFilter(RedactingFilter())


def _every_logger() -> list[logging.Logger]:
    return [item for item in logging.root.manager.loggerDict.values() if isinstance(item, logging.Logger)]


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
            event["exc_info"] = record.exc_text or self.formatException(record.exc_info)
        # Here too, not only in the filter: exception texts and extras are only rendered here.
        return json.dumps(redact_value(event))


def configure_logging(process_name: str, level: str = "INFO") -> None:
    """Send every log record to stdout as JSON; call once per process."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(process_name))
    handler.addFilter(RedactingFilter())
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
    install_redaction()
