"""Chat completions to and from Captionizer jobs: a request becomes a ``JobCreate``, a job a ``chat.completion``.

Pure translation, no I/O: the routes (:mod:`api.openai.routes`) admit the job through the same
admission path as ``POST /v1/jobs``, so every guard applies unchanged. A request is refused
(400 ``invalid_request``, with OpenAI's ``param``) when it asks for something that would change the
answer's meaning: several choices, tools, a structured format, several images or none.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from api.openai.wire import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    ContentPart,
    Delta,
    Usage,
)
from shared.errors import InvalidRequest
from shared.jobs.model import Job, JobCreate

#: Roles whose messages are ignored: GIT takes no instructions, only a prompt to continue.
IGNORED_ROLES = frozenset({"system", "developer"})
# Parameters that would change what the answer means; anything else unknown is ignored (temperature...).
_REFUSED_PARAMS = ("tools", "functions", "audio", "prediction", "logprobs")
# A tool choice that forces a call changes the answer; "none" and "auto" (with no tools) do not.
_HARMLESS_TOOL_CHOICES = (None, "none", "auto")
# RFC 2397 data URL of an image, base64-encoded.
_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+(?:;[A-Za-z0-9=._+-]+)*;base64,", re.IGNORECASE)


def job_create_from_chat(request: ChatCompletionRequest) -> JobCreate:
    """The native job a chat request asks for.

    Raises:
        InvalidRequest: the request asks for what a caption cannot give (``param`` names the field).
    """
    _refuse_meaning_changes(request)
    message = _the_user_message(request.messages)
    image_url, prompt = _image_and_prompt(message)
    tokens = request.max_completion_tokens or request.max_tokens
    data_url = _DATA_URL.match(image_url)
    if data_url is not None:
        return JobCreate(
            image_base64=image_url[data_url.end() :], prompt=prompt, max_new_tokens=tokens, cache=request.cache
        )
    if image_url.lower().startswith("data:"):
        raise InvalidRequest("a data: URL must be an image in base64 (data:image/png;base64,...)", param="messages")
    return JobCreate(image_url=image_url, prompt=prompt, max_new_tokens=tokens, cache=request.cache)


def _refuse_meaning_changes(request: ChatCompletionRequest) -> None:
    if request.n is not None and request.n > 1:
        raise InvalidRequest("n must be 1: captions are decoded greedily, so more choices would be copies", param="n")
    for name in _REFUSED_PARAMS:
        if getattr(request, name) not in (None, False, []):
            raise InvalidRequest(f"{name} is not supported: the model only captions images", param=name)
    for name in ("tool_choice", "function_call"):
        if getattr(request, name) not in _HARMLESS_TOOL_CHOICES:
            raise InvalidRequest(f"{name} is not supported: the model only captions images", param=name)
    if request.response_format is not None and request.response_format.type != "text":
        raise InvalidRequest("response_format must be text: captions are plain text", param="response_format")


def _the_user_message(messages: list[ChatMessage]) -> ChatMessage:
    asked = [message for message in messages if message.role not in IGNORED_ROLES]
    if len(asked) != 1 or asked[0].role != "user":
        raise InvalidRequest(
            "send exactly one user message (system and developer messages are ignored); a caption has no dialogue",
            param="messages",
        )
    return asked[0]


def _image_and_prompt(message: ChatMessage) -> tuple[str, str | None]:
    parts = message.content if isinstance(message.content, list) else []
    images = [part.image_url.url for part in parts if part.type == "image_url" and part.image_url is not None]
    if len(images) != 1:
        raise InvalidRequest(
            f"the user message must carry exactly one image_url part, not {len(images)}", param="messages"
        )
    texts = list(_texts(parts))
    prompt = " ".join(text.strip() for text in texts if text.strip())
    return images[0], prompt or None


def _texts(parts: list[ContentPart]) -> Iterator[str]:
    for part in parts:
        if part.type == "text":
            yield part.text or ""
        elif part.type != "image_url":
            raise InvalidRequest(f"content parts of type {part.type!r} are not supported", param="messages")


def completion_id(job_id: str) -> str:
    """The completion's id: the native job's, so ``GET /v1/jobs/{id}`` finds the job behind an answer."""
    return "chatcmpl-" + job_id


def usage_of(job: Job) -> Usage | None:
    """The job's token counts as OpenAI's ``usage``, or None when the worker recorded none."""
    if job.usage is None:
        return None
    prompt, completion = job.usage.prompt_tokens, job.usage.completion_tokens
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def finish_reason(job: Job) -> str:
    """``length`` when the caption used every token it was allowed, else ``stop``."""
    if job.usage is not None and job.usage.completion_tokens >= job.max_new_tokens:
        return "length"
    return "stop"


def _created(job: Job) -> int:
    return int(job.created_at.timestamp())


def chat_completion(job: Job, model: str) -> ChatCompletion:
    """A succeeded job as a ``chat.completion``."""
    reason = "length" if finish_reason(job) == "length" else "stop"
    choice = Choice(message=AssistantMessage(content=job.caption or ""), finish_reason=reason)
    return ChatCompletion(
        id=completion_id(job.id), created=_created(job), model=model, choices=[choice], usage=usage_of(job)
    )


def chat_chunks(job: Job, model: str, *, include_usage: bool) -> list[ChatCompletionChunk]:
    """A succeeded job as stream chunks: the role, the caption, the finish reason, and usage when asked for."""
    reason = "length" if finish_reason(job) == "length" else "stop"

    def chunk(choices: list[ChunkChoice]) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=completion_id(job.id), created=_created(job), model=model, choices=choices)

    chunks = [
        chunk([ChunkChoice(delta=Delta(role="assistant", content=""))]),
        chunk([ChunkChoice(delta=Delta(content=job.caption or ""))]),
        chunk([ChunkChoice(delta=Delta(), finish_reason=reason)]),
    ]
    if include_usage:
        # OpenAI's stream_options.include_usage: one last chunk with no choices and the usage.
        chunks.append(chunk([]).model_copy(update={"usage": usage_of(job)}))
    return chunks
