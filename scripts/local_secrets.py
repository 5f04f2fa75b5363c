"""The webhook signing secrets ``make run`` keeps in this clone, so a receiver set up yesterday still verifies today.

``make run`` starts a Redis of its own each time, and the API makes each owner's secret on first
use, so without this every start would sign with a new secret. The secrets live in
``.captionizer/webhook-secrets.json`` (git ignores the folder; the file is readable by its owner
only), are written into Redis before the API starts, and are read back when the stack stops, so
a rotation through the API is kept too. ``make run RESET_WEBHOOK_SECRET=1`` (or deleting the
file) makes new ones on purpose.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from shared.keys import Keys
from shared.webhooks.secrets import SECRET_PREFIX, new_secret

#: Per-clone state of ``make run``, ignored by git.
STATE_DIR_NAME = ".captionizer"
SECRETS_FILE_NAME = "webhook-secrets.json"


class LocalWebhookSecrets:
    """Owner → secret, kept in one JSON file of the clone and copied to and from a Redis."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, str]:
        """The kept secrets; none when the file is missing or unreadable (then new ones are made)."""
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(stored, dict):
            return {}
        return {str(k): v for k, v in stored.items() if isinstance(v, str) and v.startswith(SECRET_PREFIX)}

    def save(self, secrets: dict[str, str]) -> None:
        """Write ``secrets``, readable and writable by this user only (0600)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(secrets, out, indent=1, sort_keys=True)
        # Renamed into place, so a stop cut short never leaves half a file.
        temporary.replace(self.path)

    def install(self, redis: Redis, keys: Keys, owners: Iterable[str], *, reset: bool = False) -> dict[str, str]:
        """Give each owner its kept secret in ``redis`` (a new one if none, or all new with ``reset``); return them.

        A secret the Redis already holds (one named by CAPTIONIZER_REDIS_URL, kept between runs)
        wins over the file unless ``reset``, and the file follows it.
        """
        kept = {} if reset else self.load()
        for owner in owners:
            key = keys.webhook_secret(owner)
            candidate = kept.get(owner) or new_secret()
            if reset:
                redis.set(key, candidate)
                redis.delete(keys.webhook_secret_previous(owner))
            else:
                redis.set(key, candidate, nx=True)
            value = redis.get(key)
            kept[owner] = value.decode() if isinstance(value, bytes) else str(value)
        self.save(kept)
        return kept

    def keep_current(self, redis: Redis, keys: Keys, owners: Iterable[str]) -> None:
        """Copy the owners' current secrets (a rotation through the API included) back into the file."""
        kept = self.load()
        # The Redis may already be gone (it crashed, or the stop began there): keep what the file has.
        with contextlib.suppress(RedisError, OSError):
            for owner in owners:
                value = redis.get(keys.webhook_secret(owner))
                if value is not None:
                    kept[owner] = value.decode() if isinstance(value, bytes) else str(value)
            self.save(kept)
