"""Where finished batch results live: one interface, and its compact Redis implementation.

While an item runs, its result is on its job record (about 1.5 KB of Redis). Once every
item of a results chunk (``RESULTS_CHUNK_ITEMS`` consecutive items) has ended, while the
batch still runs, or when the batch ends, the API compacts the chunk: one record of
zlib-compressed JSON rows, and the job records go (``shared.batches.item_results``). A blob or
table store can take finished results over by implementing :class:`FinishedResults`;
nothing else reads them.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

from redis.asyncio import Redis

from shared.batches.model import BatchItemResult
from shared.keys import Keys

#: Items per compacted record: a results page of the maximum size reads one or two records.
RESULTS_CHUNK_ITEMS = 500


def chunk_of(index: int) -> int:
    """The results chunk holding item ``index``."""
    return index // RESULTS_CHUNK_ITEMS


class FinishedResults(Protocol):
    """Stores finished batch results, one chunk of ``RESULTS_CHUNK_ITEMS`` items at a time."""

    async def save_chunk(self, batch_id: str, chunk: int, rows: Sequence[BatchItemResult], ttl_s: int) -> None:
        """Store chunk ``chunk`` (items ``chunk * RESULTS_CHUNK_ITEMS`` onwards), kept for ``ttl_s``."""
        ...

    async def load_chunks(self, batch_id: str, chunks: Sequence[int]) -> dict[int, list[BatchItemResult]]:
        """The chunks that exist among ``chunks``, by number."""
        ...


def encode_rows(rows: Sequence[BatchItemResult]) -> bytes:
    """Rows as compressed JSON arrays: ``[status, caption, ref, error, usage]``; the index is implied."""
    packed = [
        [
            str(row.status),
            row.caption,
            row.ref,
            row.error.model_dump(mode="json") if row.error else None,
            row.usage.model_dump(mode="json") if row.usage else None,
        ]
        for row in rows
    ]
    return zlib.compress(json.dumps(packed, separators=(",", ":"), ensure_ascii=False).encode(), 6)


def decode_rows(batch_id: str, chunk: int, data: bytes) -> list[BatchItemResult]:
    """The rows :func:`encode_rows` made for chunk ``chunk`` of ``batch_id``."""
    packed: list[list[Any]] = json.loads(zlib.decompress(data))
    first = chunk * RESULTS_CHUNK_ITEMS
    return [_row(batch_id, first + offset, fields) for offset, fields in enumerate(packed)]


def _row(batch_id: str, index: int, fields: list[Any]) -> BatchItemResult:
    # Rows compacted before usage was recorded have four fields.
    status, caption, ref, error, usage = (*fields, None)[:5]
    return BatchItemResult.of_item(batch_id, index, status, caption, ref, error, usage)


class RedisFinishedResults:
    """:class:`FinishedResults` in Redis: one string per chunk, compressed."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def save_chunk(self, batch_id: str, chunk: int, rows: Sequence[BatchItemResult], ttl_s: int) -> None:
        """Store one chunk (callers map Redis errors)."""
        await self.redis.set(self.keys.batch_results(batch_id, chunk), encode_rows(rows), ex=max(1, ttl_s))

    async def load_chunks(self, batch_id: str, chunks: Sequence[int]) -> dict[int, list[BatchItemResult]]:
        """The stored chunks among ``chunks``, in one round trip."""
        if not chunks:
            return {}
        raws = await self.redis.mget([self.keys.batch_results(batch_id, chunk) for chunk in chunks])
        return {chunk: decode_rows(batch_id, chunk, raw) for chunk, raw in zip(chunks, raws, strict=True) if raw}
