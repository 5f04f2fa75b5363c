"""POST /v1/jobs against the model limits a worker published: a prompt that surely cannot fit is a 422."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from shared.intake.model_limits import BERT_WORDPIECE, ModelLimits, publish_model_limits
from shared.keys import Keys
from tests.unit.api.conftest import ApiHarness
from tests.unit.api.test_jobs import png_bytes

IMAGE = "https://images.example.com/cat.png"
# Ten tokens: a refused prompt stays under the test settings' 50 characters.
LIMITS = ModelLimits(model="embedded", max_prompt_tokens=10, prompt_tokenizer=BERT_WORDPIECE)


def publish(api_harness: ApiHarness, limits: ModelLimits) -> None:
    """Play the caption worker's part: publish its model's limits."""

    async def write() -> None:
        redis = api_harness.redis()
        await publish_model_limits(redis, Keys(api_harness.settings.key_prefix), limits, ttl_s=60)
        await redis.aclose()

    asyncio.run(write())


@pytest.mark.parametrize("form", [False, True], ids=["json", "multipart"])
def test_a_prompt_of_more_words_than_the_model_takes_is_refused(
    client: TestClient, api_harness: ApiHarness, form: bool
) -> None:
    publish(api_harness, LIMITS)
    prompt = " ".join(["a"] * 11)
    if form:
        upload = {"file": ("cat.png", png_bytes(), "image/png")}
        response = client.post("/v1/jobs", files=upload, data={"prompt": prompt})
    else:
        response = client.post("/v1/jobs", json={"image_url": IMAGE, "prompt": prompt})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert (problem["code"], problem["status"]) == ("prompt_too_long", 422)
    assert "at most 10" in problem["detail"]
    assert api_harness.queue.queued == []


def test_a_prompt_at_the_limit_is_accepted(client: TestClient, api_harness: ApiHarness) -> None:
    publish(api_harness, LIMITS)
    response = client.post("/v1/jobs", json={"image_url": IMAGE, "prompt": " ".join(["a"] * 10)})
    assert response.status_code == 202, response.text


def test_without_published_limits_the_prompt_goes_to_the_worker(client: TestClient, api_harness: ApiHarness) -> None:
    response = client.post("/v1/jobs", json={"image_url": IMAGE, "prompt": " ".join(["a"] * 11)})
    assert response.status_code == 202, response.text
    assert len(api_harness.queue.queued) == 1
