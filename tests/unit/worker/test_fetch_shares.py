"""FetchShares: a key's downloads in progress are bounded; other keys never wait; shares come back however a fetch ends."""

from __future__ import annotations

import asyncio

import pytest

from worker.intake.fetch_shares import FetchShares, origin_of


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


# --- per host: a fetch waiting for a busy host's connection holds nothing ------------------------------


def test_a_fetch_waiting_for_a_busy_host_does_not_hold_its_key_s_share_from_another_host() -> None:
    async def scenario() -> None:
        shares = FetchShares(max_fetches_per_key=4, per_host=2)
        tarpit, good = "http://tarpit.test", "http://good.test"
        held = [shares.hold("k", tarpit) for _ in range(2)]
        for hold in held:
            await hold.__aenter__()
        # Ten more of the key's fetches on the tarpit wait for its connections, holding no share.
        waiting = [asyncio.create_task(_enter_and_leave_host(shares, "k", tarpit)) for _ in range(10)]
        await asyncio.sleep(0)
        assert shares.fetches_of("k") == 2 and shares.fetches_to(tarpit) == 2
        # The key's image on another host goes straight in.
        await asyncio.wait_for(_enter_and_leave_host(shares, "k", good), 5)
        assert not any(task.done() for task in waiting)
        for hold in held:
            await hold.__aexit__(None, None, None)
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert shares.fetches_of("k") == 0 and shares.fetches_to(tarpit) == 0

    asyncio.run(scenario())


def test_a_host_s_slots_are_shared_by_keys_and_a_freed_one_goes_to_the_first_waiter_with_room() -> None:
    async def scenario() -> None:
        shares = FetchShares(max_fetches_per_key=1, per_host=1)
        first = shares.hold("a", "http://h.test")
        await first.__aenter__()
        order: list[str] = []
        # a's second fetch waits for a's share and the host; b's waits for the host only.
        a_next = asyncio.create_task(_record(shares, "a", "http://h.test", order))
        b_next = asyncio.create_task(_record(shares, "b", "http://h.test", order))
        await asyncio.sleep(0)
        assert order == []
        await first.__aexit__(None, None, None)
        await asyncio.wait_for(asyncio.gather(a_next, b_next), 5)
        assert order == ["a", "b"]  # arrival order once each had room

    asyncio.run(scenario())


def test_a_cancelled_wait_for_a_host_leaves_nothing_held() -> None:
    async def scenario() -> None:
        shares = FetchShares(max_fetches_per_key=0, per_host=1)
        first = shares.hold("a", "http://h.test")
        await first.__aenter__()
        waiting = asyncio.create_task(_enter_and_leave_host(shares, "b", "http://h.test"))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await first.__aexit__(None, None, None)
        assert shares.fetches_of("b") == 0 and shares.fetches_to("http://h.test") == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://img.test:8080/a/b.png?x=1", "http://img.test:8080"),
        ("https://IMG.test/a.png", "https://img.test"),
        ("not a url", None),
    ],
)
def test_the_origin_is_what_connections_are_pooled_by(url: str, origin: str | None) -> None:
    assert origin_of(url) == origin


async def _enter_and_leave_host(shares: FetchShares, owner: str, host: str) -> None:
    async with shares.hold(owner, host):
        pass


async def _record(shares: FetchShares, owner: str, host: str, order: list[str]) -> None:
    async with shares.hold(owner, host):
        order.append(owner)
