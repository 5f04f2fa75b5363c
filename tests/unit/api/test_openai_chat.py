"""api.openai.chat and api.openai.batch_lines: OpenAI requests to native jobs, and the refusals on the way."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from api.http.problems import openai_error_body, openai_status
from api.openai.batch_lines import BatchLine, LineError, read_batch_lines
from api.openai.chat import chat_chunks, chat_completion, job_create_from_chat
from api.openai.wire import ChatCompletionRequest
from shared.errors import InvalidRequest
from shared.jobs.model import Job, JobStatus, JobUsage


def chat(content: Any, **extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "any", "messages": [{"role": "user", "content": content}], **extra}
    )


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def test_an_image_url_and_text_become_the_job_url_and_prompt() -> None:
    request = chat([{"type": "text", "text": " a photo of"}, image("https://example.com/a.png")], max_tokens=12)
    job = job_create_from_chat(request)
    assert (job.image_url, job.image_base64, job.prompt, job.max_new_tokens) == (
        "https://example.com/a.png",
        None,
        "a photo of",
        12,
    )


def test_a_base64_data_url_becomes_an_inline_image() -> None:
    job = job_create_from_chat(chat([image("data:image/png;base64,iVBORw0KGgo=")]))
    assert (job.image_url, job.image_base64, job.prompt) == (None, "iVBORw0KGgo=", None)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    job = job_create_from_chat(chat([image("https://example.com/a.png")], max_tokens=30, max_completion_tokens=7))
    assert job.max_new_tokens == 7


def test_harmless_parameters_and_system_messages_are_ignored() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You write alt text."},
                {"role": "user", "content": [image("https://example.com/a.png")]},
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "user": "someone",
            "n": 1,
            "response_format": {"type": "text"},
            "tool_choice": "none",
            "logprobs": False,
            "metadata": {"team": "a11y"},
        }
    )
    assert job_create_from_chat(request).image_url == "https://example.com/a.png"


@pytest.mark.parametrize(
    ("request_body", "param"),
    [
        ({"content": [image("https://example.com/a.png")], "n": 2}, "n"),
        ({"content": [image("https://example.com/a.png")], "tools": [{"type": "function"}]}, "tools"),
        (
            {"content": [image("https://example.com/a.png")], "response_format": {"type": "json_object"}},
            "response_format",
        ),
        ({"content": [image("https://example.com/a.png")], "logprobs": True}, "logprobs"),
        ({"content": [image("https://example.com/a.png")], "tool_choice": "required"}, "tool_choice"),
        ({"content": [image("https://example.com/a.png"), image("https://example.com/b.png")]}, "messages"),
        ({"content": "describe this image"}, "messages"),
        ({"content": [{"type": "text", "text": "no image"}]}, "messages"),
        ({"content": [image("https://example.com/a.png"), {"type": "input_audio"}]}, "messages"),
        ({"content": [image("data:text/plain,hello")]}, "messages"),
    ],
)
def test_what_would_change_the_answer_is_refused_naming_the_parameter(request_body: dict[str, Any], param: str) -> None:
    content = request_body.pop("content")
    with pytest.raises(InvalidRequest) as refused:
        job_create_from_chat(chat(content, **request_body))
    assert refused.value.extra["param"] == param


def test_two_user_messages_are_refused() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [image("https://example.com/a.png")]},
                {"role": "assistant", "content": "a cat"},
                {"role": "user", "content": "and now?"},
            ],
        }
    )
    with pytest.raises(InvalidRequest):
        job_create_from_chat(request)


def done_job(caption: str, completion_tokens: int, max_new_tokens: int) -> Job:
    return Job(
        id="job_abcdefghijklmnopqrstuv",
        status=JobStatus.SUCCEEDED,
        caption=caption,
        max_new_tokens=max_new_tokens,
        usage=JobUsage(prompt_tokens=2, completion_tokens=completion_tokens),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_a_succeeded_job_is_a_chat_completion_with_usage_and_finish_reason() -> None:
    completion = chat_completion(done_job("a red circle", 3, 30), "embedded")
    body = completion.model_dump(mode="json")
    assert body["id"] == "chatcmpl-job_abcdefghijklmnopqrstuv" and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "a red circle", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert chat_completion(done_job("a red", 2, 2), "embedded").choices[0].finish_reason == "length"


def test_stream_chunks_carry_role_caption_finish_and_usage_when_asked() -> None:
    chunks = chat_chunks(done_job("a red circle", 3, 30), "embedded", include_usage=True)
    assert [c.choices[0].delta.content if c.choices else None for c in chunks] == ["", "a red circle", None, None]
    assert chunks[2].choices[0].finish_reason == "stop"
    assert chunks[3].usage is not None and chunks[3].usage.total_tokens == 5
    assert len(chat_chunks(done_job("x", 1, 30), "embedded", include_usage=False)) == 3


def test_errors_take_openai_shape_with_the_stable_code_and_400_for_invalid_requests() -> None:
    body = openai_error_body("invalid_request", 422, "n must be 1", {"param": "n"})
    assert body == {
        "error": {"message": "n must be 1", "type": "invalid_request_error", "param": "n", "code": "invalid_request"}
    }
    assert openai_status(422) == 400 and openai_status(413) == 413
    assert openai_error_body("unauthorized", 401, "", {})["error"]["type"] == "authentication_error"
    assert openai_error_body("rate_limited", 429, "", {})["error"]["type"] == "rate_limit_error"
    assert openai_error_body("fetch_failed", 502, "", {})["error"]["type"] == "server_error"


def line(custom_id: str, url: str = "https://example.com/a.png", **body: Any) -> str:
    request = {"model": "m", "messages": [{"role": "user", "content": [image(url)]}], **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request})


def test_bad_batch_lines_fail_one_by_one_and_good_ones_keep_their_custom_id() -> None:
    content = "\n".join(
        [
            line("a"),
            "{not json",
            json.dumps({"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions"}),
            line("wrong-endpoint").replace("/v1/chat/completions", "/v1/embeddings"),
            line("two-choices", n=2),
            line("a"),
            "",
            line("b", max_tokens=5),
        ]
    ).encode()
    lines = read_batch_lines(content, max_lines=100)
    good = [entry for entry in lines if isinstance(entry, BatchLine)]
    bad = [entry for entry in lines if isinstance(entry, LineError)]
    assert [(entry.line, entry.custom_id) for entry in good] == [(1, "a"), (8, "b")]
    assert [(entry.line, entry.custom_id) for entry in bad] == [
        (2, None),
        (3, "no-body"),
        (4, "wrong-endpoint"),
        (5, "two-choices"),
        (6, "a"),
    ]
    assert all(entry.code == "invalid_request" for entry in bad)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\xff\xfe", "UTF-8"), (b"\n \n", "no request lines"), ((line("x") + "\n").encode() * 3, "at most 2")],
)
def test_a_file_unreadable_as_a_whole_is_refused(content: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        read_batch_lines(content, max_lines=2)
