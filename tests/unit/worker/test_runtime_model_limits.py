"""The worker's side of the model's limits: it publishes them, and a prompt the model refuses is the caller's mistake."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import fakeredis
import pytest
from PIL import Image

from model.captioner import Captioner
from shared.errors import PromptTooLong
from shared.intake.model_limits import BERT_WORDPIECE, ModelLimits, read_model_limits
from shared.settings import Settings
from tests.fakes import FakeCaptioner
from worker.runtime import CaptionRuntime, caption_fn_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def embedded() -> Captioner:
    return Captioner.load(device="cpu", warmup=False)


def test_the_embedded_models_limits_come_from_its_config(embedded: Captioner) -> None:
    # config.json: 32 text positions; processor_config.json: a 128 px square.
    assert (embedded.max_prompt_tokens, embedded.input_size_px, embedded.prompt_tokenizer) == (30, 128, BERT_WORDPIECE)


@pytest.mark.parametrize("prompt", [" ".join(["a"] * 31), "猫" * 31], ids=["words", "cjk"])
def test_a_prompt_longer_than_the_text_positions_is_the_callers_mistake(embedded: Captioner, prompt: str) -> None:
    caption = caption_fn_for(embedded, Settings())
    with pytest.raises(PromptTooLong) as caught:
        caption(embedded.preprocess([Image.new("RGB", (48, 48))]), prompt, [5])
    assert (caught.value.code, caught.value.status) == ("prompt_too_long", 422)
    assert "at most 30" in caught.value.message


def test_a_prompt_at_the_limit_is_captioned(embedded: Captioner) -> None:
    caption = caption_fn_for(embedded, Settings())
    inputs = embedded.preprocess([Image.new("RGB", (48, 48))])
    assert len(caption(inputs, " ".join(["a"] * 30), [5])) == 1


@pytest.fixture
def runtime() -> Iterator[CaptionRuntime]:
    runtime = CaptionRuntime(Settings(), lambda *args, **kwargs: None, FakeCaptioner())
    yield runtime
    runtime._loop.close()  # never started: only its loop object exists


def test_the_heartbeat_publishes_the_models_limits(runtime: CaptionRuntime) -> None:
    async def beat() -> tuple[ModelLimits | None, int]:
        redis = fakeredis.aioredis.FakeRedis()
        await runtime._beat(redis)
        limits = await read_model_limits(redis, runtime.keys)
        ttl_s = await redis.ttl(runtime.keys.model_limits())
        await redis.aclose()
        return limits, ttl_s

    limits, ttl_s = asyncio.run(beat())
    # Settings().model is the embedded model, which /openai/v1/models reports as such.
    assert limits == ModelLimits(model="fake", max_prompt_tokens=510, prompt_tokenizer="fake", embedded=True)
    assert 0 < ttl_s <= 3 * Settings().worker_heartbeat_s  # gone soon after the last worker stops
