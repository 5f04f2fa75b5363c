"""Logs carry no secret: every URL's user info, query and fragment are redacted, whatever logged it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shared.logs import (
    REDACTED,
    JsonFormatter,
    RedactingFilter,
    configure_logging,
    install_redaction,
    redact_urls,
    redact_value,
)

CANARY = "CANARY7d1f"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"https://cdn.example/a.png?sig={CANARY}", "https://cdn.example/a.png?REDACTED"),
        (f"https://u:{CANARY}@cdn.example/a.png", "https://REDACTED@cdn.example/a.png"),
        (f"https://cdn.example/a.png#{CANARY}", "https://cdn.example/a.png#REDACTED"),
        (f"redis://:{CANARY}@127.0.0.1:6379/0", "redis://REDACTED@127.0.0.1:6379/0"),
        (
            f"rediss://default:{CANARY}@x.redis.cache.windows.net:6380",
            "rediss://REDACTED@x.redis.cache.windows.net:6380",
        ),
        (f"{{'url': 'http://h:8/hook?token={CANARY}', 'n': 1}}", "{'url': 'http://h:8/hook?REDACTED', 'n': 1}"),
        (f'{{"image_url":"https://x/a?sig={CANARY}"}}', '{"image_url":"https://x/a?REDACTED"}'),
        (f"<a href=https://x/a?t={CANARY}>", "<a href=https://x/a?REDACTED>"),
        (
            f'127.0.0.1:5 - "GET /v1/caption?image_url=https%3A%2F%2Fx%2Fa%3Fsig%3D{CANARY} HTTP/1.1" 200',
            '127.0.0.1:5 - "GET /v1/caption?REDACTED HTTP/1.1" 200',
        ),
        (f"two: https://a/?x={CANARY} and https://b/?y={CANARY}", "two: https://a/?REDACTED and https://b/?REDACTED"),
    ],
)
def test_every_url_loses_its_credentials(text: str, expected: str) -> None:
    assert redact_urls(text) == expected
    assert CANARY not in redact_urls(text)


@pytest.mark.parametrize(
    "text", ["https://example.com/a.png", "job job_1 ended: succeeded", "what? nothing", "mail a@b.example", "x#1"]
)
def test_text_without_credentials_is_left_as_it_is(text: str) -> None:
    assert redact_urls(text) == text


def test_nested_fields_and_objects_are_redacted() -> None:
    class Request:
        def __str__(self) -> str:
            return f"<Request https://x/a?sig={CANARY}>"

    value = {"args": [f"https://x/?t={CANARY}", (1, None)], "req": Request(), "n": 2.5}
    assert redact_value(value) == {
        "args": ["https://x/?REDACTED", [1, None]],
        "req": "<Request https://x/a?REDACTED>",
        "n": 2.5,
    }


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("tests.redaction")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    install_redaction(logger)
    try:
        yield logger, stream
    finally:
        logger.handlers.clear()
        logger.propagate = True


def test_message_args_extras_and_exceptions_are_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    # Celery's "received" line: a format with a mapping of args, and the same mapping as an extra.
    context = {"name": "captionizer.deliver_webhook", "args": f"[{{'url': 'http://h/hook?token={CANARY}'}}]"}
    logger.info("Task %(name)s received: %(args)s", context, extra={"data": context})
    try:
        raise ValueError(f"cannot connect to https://h/x?sig={CANARY}")
    except ValueError:
        logger.exception("fetch failed for %s", f"https://u:{CANARY}@h/x")
    text = stream.getvalue()
    assert CANARY not in text
    first, second = (json.loads(line) for line in text.splitlines())
    assert first["event"] == "Task captionizer.deliver_webhook received: [{'url': 'http://h/hook?REDACTED'}]"
    assert first["data"]["args"] == "[{'url': 'http://h/hook?REDACTED'}]"
    assert second["event"] == "fetch failed for https://REDACTED@h/x"
    assert REDACTED in second["exc_info"]


def test_a_foreign_formatter_gets_the_redacted_message_too() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    record = logging.LogRecord("celery", logging.INFO, __file__, 1, "GET %s", (f"https://x/?s={CANARY}",), None)
    handler.handle(record)
    assert stream.getvalue() == "INFO GET https://x/?REDACTED\n"


def test_configure_logging_redacts_on_every_handler_and_server_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stdout", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    access = logging.getLogger("uvicorn.access")
    access.addHandler(logging.StreamHandler(io.StringIO()))
    try:
        configure_logging("api")
        assert all(any(isinstance(f, RedactingFilter) for f in h.filters) for h in root.handlers)
        # uvicorn's access logger now goes through the root's redacting JSON handler.
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", f"/v1/caption?image_url={CANARY}", "1.1", 200)
        assert CANARY not in stream.getvalue() and "/v1/caption?REDACTED" in stream.getvalue()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.captureWarnings(False)
