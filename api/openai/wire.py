"""OpenAI's wire format, as much of it as the facade speaks: chat completions, models, files and batches.

Requests keep OpenAI's unknown fields (``extra="allow"``): the contract is to ignore what is
harmless, and :mod:`api.openai.chat` refuses by name what would change the answer's meaning.
Responses carry exactly OpenAI's members, so the ``openai`` SDK parses them into its own types.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Most messages a chat request may carry: one user message, and system ones the facade ignores.
MAX_MESSAGES = 8
#: Most content parts in one message: one image and a few pieces of text.
MAX_CONTENT_PARTS = 8
#: Longest image URL, ``data:`` URLs included (48 MiB of image as base64; max_upload_bytes bounds it further).
MAX_IMAGE_URL_CHARS = 64 * 1024 * 1024


class ImageUrl(BaseModel):
    """An ``image_url`` content part's target: https URL or ``data:image/...;base64,`` URL."""

    model_config = ConfigDict(extra="allow")

    url: str = Field(max_length=MAX_IMAGE_URL_CHARS)
    detail: str | None = Field(None, description="Ignored: GIT sees every image at its one input size.")


class ContentPart(BaseModel):
    """One part of a message's content: ``text`` or ``image_url`` (others are refused by name)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=64)
    text: str | None = Field(None, max_length=64 * 1024)
    image_url: ImageUrl | None = None


class ChatMessage(BaseModel):
    """One message of a chat request."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(max_length=32)
    content: (
        Annotated[str, Field(max_length=64 * 1024)]
        | Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)]
        | None
    ) = None


class StreamOptions(BaseModel):
    """``stream_options``: only ``include_usage`` means something here."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """Body of ``POST /openai/v1/chat/completions``: one user message with one image."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "captionizer",
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}],
                        }
                    ],
                    "max_tokens": 20,
                }
            ]
        },
    )

    model: str = Field(max_length=256, description="Any name: the server answers with the model its workers serve.")
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, description="Longest caption, in tokens (max_new_tokens).")
    max_completion_tokens: int | None = Field(None, ge=1, description="Same as max_tokens; wins when both are given.")
    stream: bool | None = Field(False, description="Answer as server-sent events ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, description="Only 1: GIT decodes greedily, so more choices would be copies.")


class AssistantMessage(BaseModel):
    """The answer's message: the caption."""

    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    """``choices[0]`` of a chat completion."""

    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    """Tokens counted by the worker with the model's own tokenizer."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """A ``chat.completion`` object."""

    id: str = Field(description="chatcmpl- and the native job's id: GET /v1/jobs/{job id} shows the same job.")
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None
    system_fingerprint: None = None


class Delta(BaseModel):
    """What one stream chunk adds to the message."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """``choices[0]`` of a stream chunk."""

    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """A ``chat.completion.chunk`` server-sent event."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """One served model, and whether it is the embedded demonstration model."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "captionizer"
    embedded: bool = Field(description="True for the small embedded demonstration model, not a real GIT.")


class ModelList(BaseModel):
    """``GET /openai/v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class FileObject(BaseModel):
    """A file of the Files API: a batch input, or a batch's output or error file."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["processed"] = "processed"
    expires_at: int | None = None
    status_details: None = None


class FileList(BaseModel):
    """``GET /openai/v1/files``."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class BatchCreateRequest(BaseModel):
    """Body of ``POST /openai/v1/batches``."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(max_length=128)
    endpoint: Literal["/v1/chat/completions"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(None, max_length=16)


class RequestCounts(BaseModel):
    """A batch's requests: all of them, those that succeeded and those that failed (bad lines included)."""

    total: int
    completed: int
    failed: int


class BatchError(BaseModel):
    """One entry of a batch's ``errors`` (the file as a whole; bad lines go to the error file)."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    """A batch's ``errors`` list."""

    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchObject(BaseModel):
    """A ``batch`` object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: Literal[
        "validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"
    ]
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None


class BatchList(BaseModel):
    """``GET /openai/v1/batches``."""

    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


def sse_event(payload: BaseModel | str) -> bytes:
    """One server-sent event (``data: ...`` and a blank line), as OpenAI streams them."""
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else payload
    return f"data: {data}\n\n".encode()
