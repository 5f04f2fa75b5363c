"""PromptShares: a key's distinct prompts in flight are bounded; shared prompts and other keys never wait."""

from __future__ import annotations

import asyncio

import pytest

from worker.captioning.prompts import PromptShares


def test_a_key_s_prompt_beyond_its_share_waits_until_one_drains() -> None:
    async def scenario() -> None:
        shares = PromptShares(max_prompts_per_key=2)
        first, second = shares.hold("greedy", "p1"), shares.hold("greedy", "p2")
        await first.__aenter__()
        await second.__aenter__()
        third = asyncio.create_task(_enter_and_leave(shares, "greedy", "p3"))
        # The same prompt again, and another key's prompt, go straight in.
        await asyncio.wait_for(_enter_and_leave(shares, "greedy", "p1"), 5)
        await asyncio.wait_for(_enter_and_leave(shares, "polite", "p9"), 5)
        await asyncio.sleep(0)
        assert not third.done() and shares.prompts_of("greedy") == {"p1", "p2"}
        await second.__aexit__(None, None, None)
        await asyncio.wait_for(third, 5)
        await first.__aexit__(None, None, None)
        assert shares.prompts_of("greedy") == set()

    asyncio.run(scenario())


def test_no_prompt_counts_as_one_prompt() -> None:
    async def scenario() -> None:
        shares = PromptShares(max_prompts_per_key=1)
        async with shares.hold("k", None):
            await asyncio.wait_for(_enter_and_leave(shares, "k", None), 5)

    asyncio.run(scenario())


def test_a_share_of_zero_prompts_is_refused() -> None:
    with pytest.raises(ValueError):
        PromptShares(0)


async def _enter_and_leave(shares: PromptShares, owner: str, prompt: str | None) -> None:
    async with shares.hold(owner, prompt):
        pass
