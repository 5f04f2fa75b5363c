"""Per-tenant webhook signing secrets: one per owner, made on first use, stored in Redis, rotatable with a grace period.

Each API key's events are signed with that key's own secret, so a tenant who verifies
its deliveries holds nothing that could forge another tenant's. A rotation keeps the
replaced secret signing alongside the new one for ``webhook_secret_grace_s``: Standard
Webhooks puts several signatures in one header, and receivers accept any that matches.
"""

from __future__ import annotations

import base64
import secrets

from redis.asyncio import Redis

from shared.errors import QueueUnavailable
from shared.jobs.store import map_redis_errors
from shared.keys import Keys

# How QueueUnavailable names this store.
_WHAT = "the secret store (Redis)"
#: Standard Webhooks secrets are ``whsec_`` and the base64 of the key bytes.
SECRET_PREFIX = "whsec_"
# 24 random bytes (192 bits): the size Svix and Replicate hand out.
_SECRET_BYTES = 24

# KEYS[1] current, KEYS[2] previous. ARGV[1] the new secret, ARGV[2] grace in seconds.
# One script, so two rotations racing never lose the secret that was current.
_ROTATE_LUA = """
local old = redis.call('GET', KEYS[1])
if old then redis.call('SET', KEYS[2], old, 'EX', tonumber(ARGV[2])) end
redis.call('SET', KEYS[1], ARGV[1])
return old
"""


def new_secret() -> str:
    """A fresh random ``whsec_`` secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


class WebhookSecrets:
    """The signing secrets of every owner, in Redis."""

    def __init__(self, redis: Redis, keys: Keys, grace_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.grace_s = grace_s
        self._rotate = redis.register_script(_ROTATE_LUA)

    async def current(self, owner: str) -> str:
        """The owner's current secret, made (once, even under concurrent calls) on first use.

        Raises:
            QueueUnavailable: Redis cannot be reached.
        """
        key = self.keys.webhook_secret(owner)
        with map_redis_errors(_WHAT):
            # NX: of two first uses racing, one secret wins and both return it.
            await self.redis.set(key, new_secret(), nx=True)
            value = await self.redis.get(key)
        return _text(value)

    async def rotate(self, owner: str) -> str:
        """Replace the owner's secret; the replaced one keeps signing for ``grace_s``. Returns the new one."""
        secret = new_secret()
        keys = [self.keys.webhook_secret(owner), self.keys.webhook_secret_previous(owner)]
        with map_redis_errors(_WHAT):
            await self._rotate(keys=keys, args=[secret, self.grace_s])
        return secret

    async def signing_secrets(self, owner: str) -> list[str]:
        """Every secret that signs the owner's deliveries now: the current one, then any still in grace."""
        current = await self.current(owner)
        with map_redis_errors(_WHAT):
            previous = await self.redis.get(self.keys.webhook_secret_previous(owner))
        return [current] if previous is None else [current, _text(previous)]


def _text(value: bytes | str | None) -> str:
    if value is None:
        # Only if the key was deleted between SET NX and GET (an operator's FLUSHDB).
        raise QueueUnavailable("the webhook secret vanished while it was read; try again")
    return value.decode() if isinstance(value, bytes) else value
