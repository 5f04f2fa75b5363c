"""OpenAI's wire format, as much of it as the facade speaks: chat completions, models, files and batches.

Requests drop OpenAI's fields that do not matter here (``extra="ignore"``: the contract is to ignore
what is harmless) and declare, bounded, the ones :mod:`api.openai.chat` refuses by name because they
would change the answer's meaning. Every field has an upper bound, as every native request's (#13).
Responses carry exactly OpenAI's members, so the ``openai`` SDK parses them into its own types.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.jobs.model import MAX_NEW_TOKENS

#: Most messages a chat request may carry: one user message, and system ones the facade ignores.
MAX_MESSAGES = 8
#: Most content parts in one message: one image and a few pieces of text.
MAX_CONTENT_PARTS = 8
# Most key/value pairs of a batch's metadata (OpenAI's limit).
_MAX_METADATA_PAIRS = 16
#: Longest image URL, ``data:`` URLs included (48 MiB of image as base64; max_upload_bytes bounds it further).
MAX_IMAGE_URL_CHARS = 64 * 1024 * 1024


class ImageUrl(BaseModel):
    """An ``image_url`` content part's target: https URL or ``data:image/...;base64,`` URL."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(max_length=MAX_IMAGE_URL_CHARS)
    detail: str | None = Field(None, max_length=16, description="Ignored: GIT sees every image at its one input size.")


class ContentPart(BaseModel):
    """One part of a message's content: ``text`` or ``image_url`` (others are refused by name)."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=64)
    text: str | None = Field(None, max_length=64 * 1024)
    image_url: ImageUrl | None = None


class ChatMessage(BaseModel):
    """One message of a chat request."""

    model_config = ConfigDict(extra="ignore")

    role: str = Field(max_length=32)
    content: (
        Annotated[str, Field(max_length=64 * 1024)]
        | Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)]
        | None
    ) = None


class StreamOptions(BaseModel):
    """``stream_options``: only ``include_usage`` means something here."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ResponseFormat(BaseModel):
    """``response_format``: only ``text`` keeps a caption's meaning."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=64)


class ChatCompletionRequest(BaseModel):
    """Body of ``POST /openai/v1/chat/completions``: one user message with one image."""

    model_config = ConfigDict(
        extra="ignore",
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
    max_tokens: int | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS, description="Longest caption, in tokens (max_new_tokens; max_new_tokens_limit)."
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS, description="Same as max_tokens; wins when both are given."
    )
    stream: bool | None = Field(False, description="Answer as server-sent events ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    n: int | None = Field(
        None, ge=1, le=128, description="Only 1: GIT decodes greedily, so more choices would be copies."
    )
    # Declared only to be refused by name (400): each would change what the answer means.
    tools: list[Any] | None = Field(None, max_length=128, description="Refused: the model only captions.")
    functions: list[Any] | None = Field(None, max_length=128, description="Refused: the model only captions.")
    tool_choice: Any = Field(None, description="Refused unless absent or null.")
    function_call: Any = Field(None, description="Refused unless absent or null.")
    audio: Any = Field(None, description="Refused unless absent or null.")
    prediction: Any = Field(None, description="Refused unless absent or null.")
    logprobs: bool | None = Field(None, description="Refused when true.")
    response_format: ResponseFormat | None = Field(None, description='Only {"type": "text"}.')
    # Not OpenAI's: the SDK sends it with extra_body={"cache": False}, like any server-specific field.
    cache: bool = Field(
        True,
        description="Captionizer extension: false captions the image afresh instead of answering from the caption "
        "cache (docs/cache.md), as `cache` on a native job.",
    )


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
    metadata: Any = Field(
        None, description="Up to 16 string pairs (keys of 64 characters, values of 512), shown on the batch."
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_pairs(cls, value: Any) -> dict[str, str] | None:
        # Typed Any in the schema, so that no object in a request is open to any member (#13); checked here.
        if value is None:
            return None
        if not isinstance(value, dict) or len(value) > _MAX_METADATA_PAIRS:
            raise ValueError(f"metadata must be an object of at most {_MAX_METADATA_PAIRS} string pairs")
        for key, item in value.items():
            if not isinstance(item, str) or len(key) > 64 or len(item) > 512:
                raise ValueError("metadata keys are strings of at most 64 characters, values of at most 512")
        return value


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
