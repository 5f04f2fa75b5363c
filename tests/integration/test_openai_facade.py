"""/openai/v1 on the real stack, driven by the official ``openai`` package as its users would drive it.

Captions are checked word for word against the samples the API serves (``api/samples``), which the
embedded model captions exactly. Waits are the SDK's own (chat completions wait for their job) or
polls of the batch's state with a deadline; nothing waits on a sleep.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from scripts.stack import LocalStack
from tests.integration.chaos import wait_until
from tests.servers import HostileServer
from tests.stack import HAS_EMBEDDED_MODEL, TENANT_A_KEY, TENANT_B_KEY, needs_embedded_model, standin_stack

SAMPLES = Path(__file__).resolve().parents[2] / "api" / "samples"
CAPTIONS: dict[str, str] = json.loads((SAMPLES / "captions.json").read_text())
_DEADLINE_S = 240


def client_of(stack: LocalStack, key: str = TENANT_A_KEY, **options: object) -> OpenAI:
    return OpenAI(base_url=f"{stack.api_url}/openai/v1", api_key=key, timeout=90, **options)  # type: ignore[arg-type]


def sample_url(stack: LocalStack, name: str) -> str:
    return f"{stack.api_url}/samples/{name}"


def image_message(url: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]


@pytest.fixture
def sdk(stack: LocalStack, api: httpx.Client) -> Iterator[OpenAI]:
    """The SDK as tenant A; ``api`` flushes the job data after the test."""
    with client_of(stack) as client:
        yield client


def test_models_list_names_the_served_model(sdk: OpenAI) -> None:
    models = sdk.models.list().data
    assert len(models) == 1
    # The embedded model when trained, else the tiny random GIT the session built (tests/stack.py).
    assert (models[0].id == "embedded") is HAS_EMBEDDED_MODEL
    assert models[0].model_extra == {"embedded": HAS_EMBEDDED_MODEL}


@needs_embedded_model
@pytest.mark.parametrize("name", sorted(CAPTIONS))
def test_a_chat_completion_captions_a_sample_by_url_and_as_a_data_url(
    sdk: OpenAI, stack: LocalStack, name: str
) -> None:
    by_url = sdk.chat.completions.create(model="captionizer", messages=image_message(sample_url(stack, name)))  # type: ignore[arg-type]
    inline = "data:image/png;base64," + base64.b64encode((SAMPLES / name).read_bytes()).decode()
    by_data = sdk.chat.completions.create(model="captionizer", messages=image_message(inline), max_tokens=20)  # type: ignore[arg-type]

    for completion in (by_url, by_data):
        assert completion.choices[0].message.content == CAPTIONS[name]
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


@needs_embedded_model
def test_a_streamed_chat_completion_carries_the_caption_and_ends(sdk: OpenAI, stack: LocalStack) -> None:
    stream = sdk.chat.completions.create(
        model="captionizer",
        messages=image_message(sample_url(stack, "red-circle.png")),  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == CAPTIONS["red-circle.png"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/status/404", 502, "fetch_failed"),
        ("/image/bomb.png", 413, "too_many_pixels"),
        ("/image/page.html", 415, "not_an_image"),
    ],
)
def test_hostile_images_fail_with_the_native_code_and_the_worker_keeps_serving(
    sdk: OpenAI, api: httpx.Client, image_server: HostileServer, stack: LocalStack, path: str, status: int, code: str
) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        sdk.with_options(max_retries=0).chat.completions.create(
            model="m",
            messages=image_message(image_server.url(path)),  # type: ignore[arg-type]
        )
    native = api.get(
        "/caption", params={"url": image_server.url(path)}, headers={"Authorization": f"Bearer {TENANT_A_KEY}"}
    )
    assert (failed.value.status_code, failed.value.code) == (status, code)
    assert (native.status_code, native.json()["code"]) == (status, code)
    after = sdk.chat.completions.create(model="m", messages=image_message(sample_url(stack, "green-square.png")))  # type: ignore[arg-type]
    assert after.choices[0].message.content


def test_an_invalid_key_raises_authentication_error(stack: LocalStack) -> None:
    with client_of(stack, key="cap_not-a-key-of-this-server") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()


def batch_request(custom_id: str, url: str) -> str:
    body = {"model": "captionizer", "messages": image_message(url), "max_tokens": 20}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


@needs_embedded_model
def test_a_200_line_batch_file_answers_every_custom_id_once_and_fails_only_its_bad_lines(
    sdk: OpenAI, stack: LocalStack
) -> None:
    names = sorted(CAPTIONS)
    expected = {f"req-{i}": CAPTIONS[names[i % len(names)]] for i in range(197)}
    lines = [batch_request(custom_id, sample_url(stack, names[i % len(names)])) for i, custom_id in enumerate(expected)]
    malformed = [
        '{"custom_id": "broken-json", "method": "POST"',
        json.dumps(
            {
                "custom_id": "no-image",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": "just text"}]},
            }
        ),
        batch_request("wrong-endpoint", sample_url(stack, names[0])).replace("/v1/chat/completions", "/v1/embeddings"),
    ]
    lines[10:10], lines[100:100], lines[150:150] = [malformed[0]], [malformed[1]], [malformed[2]]
    assert len(lines) == 200

    uploaded = sdk.files.create(file=("captions.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_until(
        lambda: sdk.batches.retrieve(batch.id).status == "completed",
        timeout_s=_DEADLINE_S,
        what=lambda: f"batch completed, now {sdk.batches.retrieve(batch.id)}",
    )
    done = sdk.batches.retrieve(batch.id)

    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (200, 197, 3)
    assert done.output_file_id is not None and done.error_file_id is not None
    output = [json.loads(row) for row in sdk.files.content(done.output_file_id).text.splitlines()]
    answered = {row["custom_id"]: row["response"]["body"]["choices"][0]["message"]["content"] for row in output}
    assert len(output) == len(answered) == 197
    assert answered == expected
    assert all(row["response"]["status_code"] == 200 for row in output)
    errors = [json.loads(row) for row in sdk.files.content(done.error_file_id).text.splitlines()]
    assert sorted(str(row["custom_id"]) for row in errors) == ["None", "no-image", "wrong-endpoint"]
    assert all(row["error"]["code"] == "invalid_request" and row["response"] is None for row in errors)
    assert batch.id in [entry.id for entry in sdk.batches.list()]


def test_another_tenant_sees_none_of_a_batch(sdk: OpenAI, stack: LocalStack) -> None:
    uploaded = sdk.files.create(
        file=("one.jsonl", batch_request("only", sample_url(stack, "red-circle.png")).encode()), purpose="batch"
    )
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    with client_of(stack, key=TENANT_B_KEY, max_retries=0) as stranger:
        with pytest.raises(openai.NotFoundError):
            stranger.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            stranger.batches.cancel(batch.id)
        with pytest.raises(openai.NotFoundError):
            stranger.files.content(uploaded.id)
        assert [entry.id for entry in stranger.batches.list()] == []
    sdk.batches.cancel(batch.id)


@pytest.fixture(scope="module")
def limited_stack(tmp_path_factory: pytest.TempPathFactory, image_server: HostileServer) -> Iterator[LocalStack]:
    """The null model and a submit budget of one request a second, burst one."""
    env = {"CAPTIONIZER_RATE_LIMIT_PER_MINUTE": "60", "CAPTIONIZER_RATE_LIMIT_BURST": "1"}
    with standin_stack(tmp_path_factory.mktemp("openai-limited"), image_server, env) as stack:
        yield stack


def test_over_the_rate_limit_raises_rate_limit_error_and_the_sdks_retries_succeed(
    limited_stack: LocalStack, image_server: HostileServer
) -> None:
    messages = image_message(image_server.url("/image/shape.png"))
    with client_of(limited_stack, max_retries=0) as impatient, client_of(limited_stack, max_retries=3) as patient:
        impatient.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as limited:
            impatient.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        assert limited.value.code == "rate_limited"
        assert int(limited.value.response.headers["retry-after"]) >= 1
        # The SDK waits the Retry-After it was given, then tries again: the request goes through.
        completion = patient.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        assert completion.choices[0].message.content == "a stand-in caption"
