"""FetchShares: a key's downloads in progress are bounded; other keys never wait; shares come back however a fetch ends."""

from __future__ import annotations

import asyncio

import pytest

from worker.intake.fetch_shares import FetchShares


def test_a_key_s_fetch_beyond_its_share_waits_until_one_ends_and_other_keys_go_straight_in() -> None:
    async def scenario() -> None:
        shares = FetchShares(max_fetches_per_key=2)
        first, second = shares.hold("greedy"), shares.hold("greedy")
        await first.__aenter__()
        await second.__aenter__()
        entered, leave = asyncio.Event(), asyncio.Event()
        third = asyncio.create_task(_hold_until(shares, "greedy", entered, leave))
        # Another key is never held up by the greedy one.
        await asyncio.wait_for(_enter_and_leave(shares, "polite"), 5)
        await asyncio.sleep(0)
        assert not entered.is_set() and shares.fetches_of("greedy") == 2
        await second.__aexit__(None, None, None)
        await asyncio.wait_for(entered.wait(), 5)
        assert shares.fetches_of("greedy") == 2
        await first.__aexit__(None, None, None)
        leave.set()
        await asyncio.wait_for(third, 5)
        assert shares.fetches_of("greedy") == 0 and shares.fetches_of("polite") == 0

    asyncio.run(scenario())


def test_a_share_comes_back_when_the_fetch_fails_or_is_canceled() -> None:
    async def scenario() -> None:
        shares = FetchShares(max_fetches_per_key=1)
        with pytest.raises(RuntimeError):
            async with shares.hold("k"):
                raise RuntimeError("the download failed")
        assert shares.fetches_of("k") == 0
        entered, never = asyncio.Event(), asyncio.Event()
        hanging = asyncio.create_task(_hold_until(shares, "k", entered, never))
        await asyncio.wait_for(entered.wait(), 5)
        waiting = asyncio.create_task(_enter_and_leave(shares, "k"))
        await asyncio.sleep(0)
        assert not waiting.done()
        # A job timed out or canceled mid-download: its share goes to the next fetch of the key.
        hanging.cancel()
        await asyncio.wait_for(waiting, 5)
        assert shares.fetches_of("k") == 0

    asyncio.run(scenario())


def test_a_waiter_canceled_before_its_turn_takes_no_share_with_it() -> None:
    async def scenario() -> None:
        shares = FetchShares(max_fetches_per_key=1)
        entered, leave = asyncio.Event(), asyncio.Event()
        holder = asyncio.create_task(_hold_until(shares, "k", entered, leave))
        await asyncio.wait_for(entered.wait(), 5)
        waiter = asyncio.create_task(_enter_and_leave(shares, "k"))
        await asyncio.sleep(0)
        waiter.cancel()  # its job timed out while it waited
        await asyncio.gather(waiter, return_exceptions=True)
        leave.set()
        await asyncio.wait_for(holder, 5)
        await asyncio.wait_for(_enter_and_leave(shares, "k"), 5)
        assert shares.fetches_of("k") == 0

    asyncio.run(scenario())


def test_zero_means_no_limit_and_a_negative_share_is_refused() -> None:
    async def scenario() -> None:
        shares = FetchShares(max_fetches_per_key=0)
        holds = [shares.hold("k") for _ in range(100)]
        for hold in holds:
            await asyncio.wait_for(hold.__aenter__(), 5)
        assert shares.fetches_of("k") == 100
        for hold in holds:
            await hold.__aexit__(None, None, None)
        assert shares.fetches_of("k") == 0

    asyncio.run(scenario())
    with pytest.raises(ValueError):
        FetchShares(-1)


async def _enter_and_leave(shares: FetchShares, owner: str) -> None:
    async with shares.hold(owner):
        pass


async def _hold_until(shares: FetchShares, owner: str, entered: asyncio.Event, leave: asyncio.Event) -> None:
    async with shares.hold(owner):
        entered.set()
        await leave.wait()
