"""Batch input files line by line, and the output and error files, in OpenAI's JSONL formats.

Each input line is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``. A line
that cannot be read or translated fails alone, as a :class:`LineError` that goes to the error file;
the rest of the file still runs. Output lines are keyed by ``custom_id``, as OpenAI writes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.openai.chat import job_create_from_chat
from api.openai.wire import ChatCompletionRequest
from shared.batches.model import MAX_REF_CHARS
from shared.error_families import CaptionizerError
from shared.errors import InvalidRequest
from shared.jobs.model import JobCreate

#: The one endpoint a batch line may name.
BATCH_ENDPOINT = "/v1/chat/completions"


class _InputLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=MAX_REF_CHARS)
    method: str
    url: str
    body: ChatCompletionRequest


@dataclass(frozen=True)
class BatchLine:
    """A line that reads as a chat request: its number (from 1), ``custom_id`` and the job it asks for."""

    line: int
    custom_id: str
    request: JobCreate
    stream: bool


@dataclass(frozen=True)
class LineError:
    """A line that failed before running: its number, ``custom_id`` when it had one, and why."""

    line: int
    custom_id: str | None
    code: str
    message: str


def read_batch_lines(content: bytes, *, max_lines: int) -> list[BatchLine | LineError]:
    """Every non-blank line of ``content``, read or failed, in order.

    Raises:
        InvalidRequest: the file is not UTF-8, has no request, or more than ``max_lines`` of them.
    """
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("a batch file must be UTF-8 JSON lines", param="file") from exc
    numbered = [(number, raw) for number, raw in enumerate(text.splitlines(), start=1) if raw.strip()]
    if not numbered:
        raise InvalidRequest("the batch file holds no request lines", param="file")
    if len(numbered) > max_lines:
        raise InvalidRequest(f"a batch file may hold at most {max_lines} request lines", param="file")
    seen: set[str] = set()
    lines: list[BatchLine | LineError] = []
    for number, raw in numbered:
        line = _read_line(number, raw)
        if isinstance(line, BatchLine):
            if line.custom_id in seen:
                line = LineError(number, line.custom_id, InvalidRequest.code, "custom_id repeats an earlier line's")
            else:
                seen.add(line.custom_id)
        lines.append(line)
    return lines


def _read_line(number: int, raw: str) -> BatchLine | LineError:
    custom_id = _custom_id_of(raw)
    try:
        parsed = _InputLine.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return LineError(number, custom_id, InvalidRequest.code, f"{where}: {first.get('msg', 'invalid')}")
    if parsed.method.upper() != "POST" or parsed.url != BATCH_ENDPOINT:
        message = f"every line must be POST {BATCH_ENDPOINT}, not {parsed.method} {parsed.url}"
        return LineError(number, parsed.custom_id, InvalidRequest.code, message)
    try:
        request = job_create_from_chat(parsed.body)
    except CaptionizerError as exc:
        return LineError(number, parsed.custom_id, exc.code, exc.message)
    return BatchLine(number, parsed.custom_id, request, bool(parsed.body.stream))


def _custom_id_of(raw: str) -> str | None:
    """The line's custom_id if it has a usable one, for the error file even when the rest is bad."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    custom_id = value.get("custom_id") if isinstance(value, dict) else None
    return custom_id if isinstance(custom_id, str) and 0 < len(custom_id) <= MAX_REF_CHARS else None


def output_line(custom_id: str, request_id: str, status_code: int, body: dict[str, Any]) -> bytes:
    """One line of an output or error file for a request that ran: its HTTP status and body."""
    row = {
        "id": f"batch_req_{request_id}",
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body},
        "error": None,
    }
    return json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def failed_line(batch_id: str, error: LineError) -> bytes:
    """One line of an error file for a line that never ran (unreadable, or refused before admission)."""
    row = {
        "id": f"batch_req_{batch_id}_line{error.line}",
        "custom_id": error.custom_id,
        "response": None,
        "error": {"code": error.code, "message": f"line {error.line}: {error.message}"},
    }
    return json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
