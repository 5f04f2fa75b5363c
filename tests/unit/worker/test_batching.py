"""Batcher: full batches run at once, partial ones after the wait, prompts never mix, bad images fail alone,
interactive images go first, and token limits share batches."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest
from PIL import Image

from shared.jobs.model import JobOptions
from tests.fakes import FakeCaptioner, fake_caption
from worker.captioning.batching import Batcher, BatchResult

DEFAULT = JobOptions()


def image(width: int = 16) -> Image.Image:
    return Image.new("RGB", (width, 8))


def run_with_batcher(
    model: FakeCaptioner,
    scenario: Callable[[Batcher], Awaitable[None]],
    *,
    max_batch_size: int = 4,
    max_wait_s: float = 0.01,
    merge_lengths: bool = True,
) -> None:
    async def main() -> None:
        def caption(images: Sequence[Image.Image], prompt: str | None, limits: Sequence[int]) -> list[str]:
            model.limits.append(list(limits))
            return model.caption(list(images), prompt=prompt, max_new_tokens=max(limits))

        batcher = Batcher(caption, max_batch_size=max_batch_size, max_wait_s=max_wait_s, merge_lengths=merge_lengths)
        batcher.start()
        try:
            await asyncio.wait_for(scenario(batcher), timeout=20)
        finally:
            model.release()
            await batcher.stop()

    asyncio.run(main())


def test_a_full_batch_runs_without_waiting_for_the_timer() -> None:
    model = FakeCaptioner()

    async def scenario(batcher: Batcher) -> None:
        results = await asyncio.gather(*(batcher.caption(image(10 + i), DEFAULT) for i in range(4)))
        assert [r.caption for r in results] == [fake_caption(image(10 + i)) for i in range(4)]
        assert {r.batch_size for r in results} == {4}
        assert len({r.batch_id for r in results}) == 1

    # An hour of waiting allowed: only a full batch can have run.
    run_with_batcher(model, scenario, max_wait_s=3600)
    assert model.batches == [4]


def test_a_partial_batch_runs_once_its_oldest_image_has_waited() -> None:
    model = FakeCaptioner()

    async def scenario(batcher: Batcher) -> None:
        results = await asyncio.gather(*(batcher.caption(image(), DEFAULT) for _ in range(3)))
        assert all(r.batch_size == 3 for r in results)

    run_with_batcher(model, scenario, max_batch_size=8, max_wait_s=0.02)
    assert model.batches == [3]


def test_jobs_with_different_prompts_are_captioned_in_separate_batches() -> None:
    model = FakeCaptioner()
    short, prompted = JobOptions(max_new_tokens=5), JobOptions(prompt="a photo of")

    async def scenario(batcher: Batcher) -> None:
        results = await asyncio.gather(
            batcher.caption(image(), short), batcher.caption(image(), prompted), batcher.caption(image(), short)
        )
        assert results[1].caption == fake_caption(image(), "a photo of")
        assert results[0].batch_id == results[2].batch_id != results[1].batch_id

    run_with_batcher(model, scenario)
    assert sorted(model.batches) == [1, 2]
    assert sorted(model.options, key=str) == sorted([(None, 5), ("a photo of", 30)], key=str)


def test_jobs_differing_only_in_max_new_tokens_share_one_batch_with_their_own_limits() -> None:
    model = FakeCaptioner()
    limits = [5, 30, 12]

    async def scenario(batcher: Batcher) -> None:
        results = await asyncio.gather(*(batcher.caption(image(), JobOptions(max_new_tokens=n)) for n in limits))
        assert len({r.batch_id for r in results}) == 1

    run_with_batcher(model, scenario, max_batch_size=3, max_wait_s=3600)
    assert model.batches == [3]
    assert model.limits == [limits]


def test_with_beam_search_token_limits_are_kept_in_separate_batches() -> None:
    model = FakeCaptioner()

    async def scenario(batcher: Batcher) -> None:
        await asyncio.gather(*(batcher.caption(image(), JobOptions(max_new_tokens=n)) for n in (5, 30, 5)))

    run_with_batcher(model, scenario, max_batch_size=3, merge_lengths=False)
    assert sorted(model.limits) == [[5, 5], [30]]


def test_interactive_images_take_the_first_places_of_the_next_batch() -> None:
    model = FakeCaptioner(held=True)

    async def scenario(batcher: Batcher) -> None:
        first = asyncio.create_task(batcher.caption(image(1), DEFAULT, interactive=False))
        await asyncio.to_thread(model.started.wait, 10)  # a bulk batch is generating
        bulk = [asyncio.create_task(batcher.caption(image(10 + i), DEFAULT, interactive=False)) for i in range(4)]
        await asyncio.sleep(0)
        single = asyncio.create_task(batcher.caption(image(99), DEFAULT))
        await asyncio.sleep(0)
        model.release()
        await first
        # The single job arrived after four bulk images, yet is in the very next batch.
        assert (await single).batch_id == (await bulk[0]).batch_id != (await bulk[3]).batch_id

    run_with_batcher(model, scenario, max_batch_size=2, max_wait_s=0)
    assert model.batches == [1, 2, 2, 1]


def test_a_ready_group_with_an_interactive_image_runs_before_an_older_bulk_group() -> None:
    model = FakeCaptioner(held=True)
    prompted = JobOptions(prompt="q")

    async def scenario(batcher: Batcher) -> None:
        blocker = asyncio.create_task(batcher.caption(image(1), DEFAULT, interactive=False))
        await asyncio.to_thread(model.started.wait, 10)
        bulk = [asyncio.create_task(batcher.caption(image(), DEFAULT, interactive=False)) for _ in range(2)]
        await asyncio.sleep(0)
        single = asyncio.create_task(batcher.caption(image(), prompted))
        await asyncio.sleep(0)
        model.release()
        await blocker
        assert (await single).batch_id != (await bulk[0]).batch_id

    run_with_batcher(model, scenario, max_batch_size=2, max_wait_s=0)
    # After the blocker: the prompted group (interactive) went before the older bulk group.
    assert [prompt for prompt, _ in model.options] == [None, "q", None]


def test_a_bad_image_fails_only_its_own_job() -> None:
    model = FakeCaptioner(fail_on=lambda img: img.width == 13)

    async def scenario(batcher: Batcher) -> None:
        results = await asyncio.gather(
            batcher.caption(image(10), DEFAULT),
            batcher.caption(image(13), DEFAULT),
            batcher.caption(image(11), DEFAULT),
            return_exceptions=True,
        )
        assert isinstance(results[0], BatchResult) and isinstance(results[2], BatchResult)
        assert isinstance(results[1], ValueError)
        assert results[0].caption == fake_caption(image(10))

    run_with_batcher(model, scenario, max_batch_size=3)
    # The failed batch of 3, then each image alone.
    assert model.batches == [3, 1, 1, 1]


def test_images_arriving_during_a_generate_form_the_next_batch() -> None:
    model = FakeCaptioner(held=True)

    async def scenario(batcher: Batcher) -> None:
        first = asyncio.create_task(batcher.caption(image(), DEFAULT))
        await asyncio.to_thread(model.started.wait, 10)  # the first batch (of one) is generating
        later = [asyncio.create_task(batcher.caption(image(), DEFAULT)) for _ in range(2)]
        model.release()
        assert (await first).batch_size == 1
        assert [(await task).batch_size for task in later] == [2, 2]

    run_with_batcher(model, scenario, max_batch_size=2, max_wait_s=0)
    assert model.batches == [1, 2]


def test_a_caller_that_gives_up_leaves_the_batch() -> None:
    model = FakeCaptioner()

    async def scenario(batcher: Batcher) -> None:
        waiting = asyncio.create_task(batcher.caption(image(), DEFAULT))
        await asyncio.sleep(0)  # let it enqueue
        assert batcher.waiting == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert batcher.waiting == 0

    run_with_batcher(model, scenario, max_wait_s=3600)
    assert model.batches == []


def test_more_captions_than_images_is_an_error_not_a_mismatch() -> None:
    async def main() -> None:
        batcher = Batcher(lambda inputs, _, __: ["x"] * (len(inputs) + 1), max_batch_size=2, max_wait_s=0)
        batcher.start()
        try:
            with pytest.raises(RuntimeError, match="returned 2 captions for 1 images"):
                await batcher.caption(image(), DEFAULT)
        finally:
            await batcher.stop()

    asyncio.run(main())
