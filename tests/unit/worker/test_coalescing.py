"""TurnCoalescer: the calls of one loop turn go in one send, and each caller gets its own reply or error."""

from __future__ import annotations

import asyncio

import pytest

from worker.coalescing import TurnCoalescer


def test_calls_of_one_turn_are_sent_together_and_each_gets_its_reply() -> None:
    sent: list[list[int]] = []

    async def send_all(calls: list[int]) -> list[int | Exception]:
        sent.append(calls)
        return [call * 10 for call in calls]

    async def scenario() -> None:
        turns = TurnCoalescer(send_all)
        assert await asyncio.gather(*(turns.call(n) for n in range(4))) == [0, 10, 20, 30]
        assert await turns.call(7) == 70

    asyncio.run(scenario())
    assert sent == [[0, 1, 2, 3], [7]]


def test_an_exception_among_the_replies_fails_only_its_call() -> None:
    async def send_all(calls: list[int]) -> list[int | Exception]:
        return [ValueError(call) if call == 1 else call for call in calls]

    async def scenario() -> list[int | BaseException]:
        turns = TurnCoalescer(send_all)
        return await asyncio.gather(*(turns.call(n) for n in range(3)), return_exceptions=True)

    first, second, third = asyncio.run(scenario())
    assert (first, third) == (0, 2) and isinstance(second, ValueError)


def test_a_failed_send_fails_every_call_of_the_turn() -> None:
    async def send_all(calls: list[int]) -> list[int | Exception]:
        raise ConnectionError("gone")

    async def scenario() -> list[int | BaseException]:
        turns = TurnCoalescer(send_all)
        return await asyncio.gather(*(turns.call(n) for n in range(3)), return_exceptions=True)

    assert all(isinstance(outcome, ConnectionError) for outcome in asyncio.run(scenario()))


def test_a_cancelled_send_cancels_every_waiting_caller() -> None:
    async def send_all(calls: list[int]) -> list[int | Exception]:
        raise asyncio.CancelledError

    async def scenario() -> None:
        turns = TurnCoalescer(send_all)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.gather(*(turns.call(n) for n in range(2)))

    asyncio.run(scenario())
