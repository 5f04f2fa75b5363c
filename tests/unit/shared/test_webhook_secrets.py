"""Per-owner webhook secrets: made once on first use, rotated with a grace period, apart per owner."""

from __future__ import annotations

import asyncio
import base64

import fakeredis.aioredis
import pytest
from redis.asyncio import Redis

from shared.errors import QueueUnavailable
from shared.keys import Keys
from shared.webhooks.secrets import WebhookSecrets, new_secret

GRACE_S = 600


def make_secrets() -> WebhookSecrets:
    return WebhookSecrets(fakeredis.aioredis.FakeRedis(), Keys("t"), GRACE_S)


def test_a_new_secret_is_a_standard_webhooks_secret_of_24_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and len(base64.b64decode(first.removeprefix("whsec_"))) == 24
    assert first != second


def test_first_uses_racing_agree_on_one_secret() -> None:
    async def scenario() -> None:
        secrets = make_secrets()
        results = await asyncio.gather(*(secrets.current("a") for _ in range(20)))
        assert len(set(results)) == 1
        assert await secrets.signing_secrets("a") == [results[0]]
        assert await secrets.current("b") != results[0]

    asyncio.run(scenario())


def test_the_replaced_secret_signs_for_the_grace_period_only() -> None:
    async def scenario() -> None:
        secrets = make_secrets()
        old = await secrets.current("a")
        new = await secrets.rotate("a")
        assert await secrets.signing_secrets("a") == [new, old]
        ttl = await secrets.redis.ttl(secrets.keys.webhook_secret_previous("a"))
        assert 0 < ttl <= GRACE_S
        await secrets.redis.delete(secrets.keys.webhook_secret_previous("a"))  # the grace period ends
        assert await secrets.signing_secrets("a") == [new]

    asyncio.run(scenario())


def test_two_rotations_keep_only_the_last_replaced_secret() -> None:
    async def scenario() -> None:
        secrets = make_secrets()
        first = await secrets.current("a")
        second = await secrets.rotate("a")
        third = await secrets.rotate("a")
        assert await secrets.signing_secrets("a") == [third, second]
        assert first not in await secrets.signing_secrets("a")

    asyncio.run(scenario())


def test_redis_away_is_queue_unavailable() -> None:
    async def scenario() -> None:
        secrets = WebhookSecrets(Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5), Keys("t"), 60)
        with pytest.raises(QueueUnavailable):
            await secrets.current("a")

    asyncio.run(scenario())
