"""Stand-ins for the model and the queue: deterministic, instant, and observable by tests.

``FakeCaptioner`` names each image by its size (LitServe's ``lambda x: x**2`` idea),
records every batch it was given, can hold a batch until a test releases it, and
can be told to fail on chosen images. ``build_tiny_git`` saves a real, randomly
initialised GIT checkpoint of a few hundred kilobytes, so worker subprocesses can
load a model through the real loading path before the embedded one exists.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from shared.errors import QueueUnavailable
from shared.keys import CAPTION_CHUNK_TASK
from shared.webhooks.delivery import WebhookDelivery
from worker.webhooks.schedule import RetrySchedule


def fake_caption(image: Image.Image, prompt: str | None = None) -> str:
    """The caption FakeCaptioner gives ``image``."""
    text = f"an image of {image.width}x{image.height} pixels"
    return f"{prompt} {text}" if prompt else text


class FakeCaptioner:
    """Captions by image size; ``batches`` lists the size of every batch it captioned."""

    name = "fake"
    revision = "fake"
    device = "cpu"
    input_size_px = 224  # as git-base's processor
    max_prompt_tokens = 510  # as a BERT tokenizer's 512 positions less [CLS] and one new token
    prompt_tokenizer = "fake"
    load_time_s = 0.25
    warmup_time_s = 0.0

    def __init__(self, *, fail_on: Callable[[Image.Image], bool] | None = None, held: bool = False) -> None:
        self.fail_on = fail_on
        self.batches: list[int] = []
        self.options: list[tuple[str | None, int]] = []
        self.limits: list[list[int]] = []
        #: Cleared: every batch waits in ``caption`` until ``release()``.
        self.gate = threading.Event()
        self.started = threading.Event()
        if not held:
            self.gate.set()

    def release(self) -> None:
        """Let held batches (and all later ones) run."""
        self.gate.set()

    def caption(
        self,
        images: Sequence[Image.Image],
        prompt: str | None = None,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        min_new_tokens: int | None = None,
    ) -> list[str]:
        self.started.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the test never released the fake model")
        self.batches.append(len(images))
        self.options.append((prompt, max_new_tokens))
        if self.fail_on is not None and any(self.fail_on(image) for image in images):
            raise ValueError("the fake model refuses this image")
        return [fake_caption(image, prompt) for image in images]

    def count_tokens(self, text: str | None) -> int:
        """Words of ``text``: deterministic usage figures for the jobs it captions."""
        return len((text or "").split())

    def preprocess(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """The images themselves: the fake captions from their size."""
        return list(images)

    def generate_from_tensors(
        self, inputs: Sequence[Any], prompt: str | None, max_new_tokens: Sequence[int], num_beams: int = 1
    ) -> list[str]:
        """``caption`` of the rows (lists of images, as ``preprocess`` returns), to the largest token limit."""
        images = [image for row in inputs for image in row]
        captions = self.caption(images, prompt, max(max_new_tokens, default=30), num_beams)
        #: The token limits of every batch, row by row.
        self.limits.append(list(max_new_tokens))
        return captions


class FakeQueue:
    """Records the job ids the API queued; ``fail`` makes it behave like an unreachable broker."""

    def __init__(self, fail: bool = False, bulk_queue: str = "captionizer-test-captions-bulk") -> None:
        self.fail = fail
        self.bulk_queue = bulk_queue
        self.queued: list[str] = []
        self.sent: list[tuple[str, list[Any], str]] = []

    async def enqueue_caption(self, job_id: str) -> None:
        if self.fail:
            raise QueueUnavailable("the task queue (Redis) cannot be reached")
        self.queued.append(job_id)

    def send_task(self, name: str, *, args: list[Any], queue: str, argsrepr: str | None = None) -> object:
        self.sent.append((name, args, queue))
        return None

    async def enqueue_item_messages(self, owner: str, job_ids: Sequence[str], items_per_message: int) -> list[str]:
        """As TaskQueue's, with no backlog: the messages straight on the bulk queue; with ``fail``, every id comes back unsent."""
        if self.fail:
            return list(job_ids)
        for first in range(0, len(job_ids), items_per_message):
            self.send_task(
                CAPTION_CHUNK_TASK, args=[list(job_ids[first : first + items_per_message])], queue=self.bulk_queue
            )
        return []

    def close(self) -> None:
        pass


def build_tiny_git(folder: Path) -> Path:
    """Save a randomly initialised GIT with git-base's tokenizer and processor, a few layers of width 32."""
    import torch
    from transformers import GitConfig, GitForCausalLM

    from model.standin import build_standin

    torch.manual_seed(0)
    build_standin(folder, with_weights=False)
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    config = GitConfig.from_dict({**small, "vision_config": small})
    GitForCausalLM(config).save_pretrained(folder)
    return folder


async def scheduled_retries(schedule: RetrySchedule) -> list[tuple[WebhookDelivery, float]]:
    """Every delivery waiting in a retry schedule with its due time, soonest first."""
    entries = await schedule.redis.zrange(schedule.keys.webhook_schedule(), 0, -1, withscores=True)
    return [(WebhookDelivery.model_validate_json(member), score) for member, score in entries]
