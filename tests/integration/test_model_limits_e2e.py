"""A prompt the model cannot take is the caller's mistake, through the real API and worker.

The caption worker publishes its model's limits next to its heartbeat; the API refuses a prompt that
surely exceeds them (422 ``prompt_too_long``), and a prompt that passes the API's lower bound but not
the real tokenizer fails its job with the same code, never ``internal_error``. The worker serves on.
"""

from __future__ import annotations

import time

import httpx
from redis import Redis

from scripts.stack import LocalStack
from shared.intake.model_limits import BERT_WORDPIECE, ModelLimits
from tests.integration.test_intake_e2e import run_job, wait_for_end
from tests.servers import HostileServer

_LIMITS_DEADLINE_S = 60


def published_limits(stack: LocalStack) -> ModelLimits:
    """The limits the worker published (it refreshes them with every heartbeat), waited for with a deadline."""
    client = Redis.from_url(stack.redis_url)
    try:
        deadline = time.monotonic() + _LIMITS_DEADLINE_S
        while (raw := client.get(stack.keys.model_limits())) is None:
            assert time.monotonic() < deadline, "the worker never published its model's limits"
            time.sleep(0.1)
    finally:
        client.close()
    return ModelLimits.model_validate_json(raw)


def test_the_worker_publishes_its_models_limits(stack: LocalStack) -> None:
    limits = published_limits(stack)
    assert limits.prompt_tokenizer == BERT_WORDPIECE  # every GIT checkpoint's tokenizer is BERT's
    assert limits.max_prompt_tokens > 0


def test_a_prompt_of_more_words_than_the_model_takes_is_refused_at_submit(
    api: httpx.Client, stack: LocalStack, image_server: HostileServer
) -> None:
    limits = published_limits(stack)
    prompt = " ".join(["a"] * (limits.max_prompt_tokens + 1))
    response = api.post("/v1/jobs", json={"image_url": image_server.url("/image/shape.png"), "prompt": prompt})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "prompt_too_long"


def test_a_prompt_past_the_apis_bound_fails_its_job_as_the_callers_mistake(
    api: httpx.Client, stack: LocalStack, image_server: HostileServer
) -> None:
    limits = published_limits(stack)
    # One CJK run is one piece to the API's lower bound, but BERT makes every character a token.
    prompt = "猫" * (limits.max_prompt_tokens + 1)
    created = api.post("/v1/jobs", json={"image_url": image_server.url("/image/shape.png"), "prompt": prompt})
    assert created.status_code == 202, created.text
    failed = wait_for_end(api, created.json())
    assert (failed["status"], failed["error"]["code"]) == ("failed", "prompt_too_long"), failed

    following = run_job(api, image_server.url("/image/shape.png"))
    assert following["status"] == "succeeded", following
