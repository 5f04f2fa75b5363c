"""The API's ``/metrics``: what Redis knows about the whole service, read at each scrape.

Latency, queue-wait and batch-size histograms are observed where the work happens,
in each caption worker, which serves them on ``worker_metrics_port`` (Prometheus sums
them across workers). An API process sees none of that work, and several API replicas
must not each count it, so this module exports only what Redis holds for everyone:
jobs by status (kept by the store's transition script), queue depths, scheduled
webhook retries, webhook outcomes and the ready workers' heartbeats. Read at scrape
time, each replica reports the same numbers; aggregate with ``max``, not ``sum``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from shared.heartbeats import WorkerHeartbeats
from shared.jobs.model import FINAL_STATUSES, JobStatus
from shared.jobs.store import REDIS_ERRORS
from shared.keys import Keys

#: Content type of the Prometheus text format that :func:`render_metrics` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class ServiceSnapshot:
    """The numbers ``/metrics`` reports, as read from Redis."""

    redis_up: bool = True
    job_counts: dict[str, int] = field(default_factory=dict)
    caption_queue_depth: int = 0
    bulk_queue_depth: int = 0
    #: Batch chunk messages waiting in the keys' backlogs for their turn on the bulk queue.
    bulk_backlog_depth: int = 0
    #: Jobs the caption workers hold a task message for (running, or waiting in a chunk in hand).
    jobs_in_hand: int = 0
    webhook_queue_depth: int = 0
    #: Keys with webhook deliveries waiting for one of their delivery slots.
    webhook_keys_waiting: int = 0
    webhook_retries_scheduled: int = 0
    webhook_outcomes: dict[str, int] = field(default_factory=dict)
    #: The caption cache's counters (``hits``, ``misses``, ``deduplicated``, ``fresh_url_hits``, ``evictions``) and its entries.
    cache_counts: dict[str, int] = field(default_factory=dict)
    cache_entries: int = 0
    #: One entry per ready worker: its heartbeat (``worker_id``, ``model``, ``model_load_s``...).
    workers: list[dict[str, object]] = field(default_factory=list)


async def read_snapshot(redis: Redis, keys: Keys) -> ServiceSnapshot:
    """Read every number (the counters in one pipeline); ``redis_up`` is False when Redis does not answer."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.job_counts())
            pipe.llen(keys.caption_queue())
            pipe.llen(keys.bulk_queue())
            pipe.llen(keys.webhook_queue())
            pipe.zcard(keys.webhook_schedule())
            pipe.hgetall(keys.webhook_outcomes())
            pipe.hgetall(keys.cache_stats())
            pipe.zcard(keys.cache_lru())
            pipe.zcard(keys.webhook_waiting_owners())
            (
                counts,
                captions,
                bulk,
                webhooks,
                retries,
                outcomes,
                cache_counts,
                cache_entries,
                waiting,
            ) = await pipe.execute()
        workers = await WorkerHeartbeats(redis, keys).read_ready()
        in_hand = await read_jobs_in_hand(redis, keys)
        backlog = await read_backlog_depth(redis, keys)
    except REDIS_ERRORS:
        return ServiceSnapshot(redis_up=False)
    return ServiceSnapshot(
        job_counts=_int_values(counts),
        caption_queue_depth=int(captions),
        bulk_queue_depth=int(bulk),
        bulk_backlog_depth=backlog,
        jobs_in_hand=in_hand,
        webhook_queue_depth=int(webhooks),
        webhook_keys_waiting=int(waiting),
        webhook_retries_scheduled=int(retries),
        webhook_outcomes=_int_values(outcomes),
        cache_counts=_int_values(cache_counts),
        cache_entries=int(cache_entries),
        workers=workers,
    )


async def read_jobs_in_hand(redis: Redis, keys: Keys) -> int:
    """Jobs the caption workers hold a task message for, from their running-jobs sets (worker.recovery.running_jobs).

    A worker's set expires when it stops writing (it died), so only live holders count. Two round
    trips: the holder index, then one ZCARD per holder (a handful of replicas).
    """
    holders = await redis.zrange(keys.job_holders(), 0, -1)
    return await _sum_of_sizes(redis, "ZCARD", [keys.held_jobs(_text(holder)) for holder in holders])


async def read_backlog_depth(redis: Redis, keys: Keys) -> int:
    """Chunk messages in every key's bulk backlog (shared.broker.bulk_backlog): the ring, then one LLEN per key."""
    owners: list[bytes | str] = await redis.lrange(keys.bulk_ring(), 0, -1)  # type: ignore[misc]
    return await _sum_of_sizes(redis, "LLEN", [keys.bulk_backlog(_text(owner)) for owner in owners])


async def _sum_of_sizes(redis: Redis, size_command: str, names: list[str]) -> int:
    """The sum of ``size_command`` (ZCARD, LLEN) over the keys ``names``, in one round trip; 0 for none."""
    if not names:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.execute_command(size_command, name)
        sizes = await pipe.execute()
    return sum(int(size) for size in sizes)


def outstanding_work(snapshot: ServiceSnapshot) -> int:
    """Everything the caption workers have yet to finish: queued and backlogged messages, and jobs in hand.

    A bulk message is a chunk of several items and an interactive one a single job, so this counts
    messages waiting plus jobs in hand; what matters to the scaler is that it is above zero whenever
    any work is outstanding, and grows with it.
    """
    return (
        snapshot.caption_queue_depth + snapshot.bulk_queue_depth + snapshot.bulk_backlog_depth + snapshot.jobs_in_hand
    )


def render_metrics(snapshot: ServiceSnapshot) -> bytes:
    """This process's own metrics (``process_*``, ``python_*``) followed by the service's, in the text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(REGISTRY) + generate_latest(registry)


class _SnapshotCollector(Collector):
    """Turns one snapshot into metric families (made per scrape, never registered globally)."""

    def __init__(self, snapshot: ServiceSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        yield _gauge("captionizer_redis_up", "1 when the API reached Redis for this scrape.", int(snap.redis_up))
        if not snap.redis_up:
            return
        yield from _job_families(snap.job_counts)
        queues = GaugeMetricFamily("captionizer_queue_depth", "Tasks waiting in a Celery queue.", labels=["queue"])
        queues.add_metric(["captions"], snap.caption_queue_depth)
        queues.add_metric(["captions-bulk"], snap.bulk_queue_depth)
        queues.add_metric(["bulk-backlogs"], snap.bulk_backlog_depth)
        queues.add_metric(["webhooks"], snap.webhook_queue_depth)
        yield queues
        yield _gauge("captionizer_jobs_in_hand", "Jobs the caption workers hold a task message for.", snap.jobs_in_hand)
        yield _gauge(
            "captionizer_outstanding_work",
            "Caption queue messages waiting plus jobs in hand: what the scaler reads (GET /scaler).",
            outstanding_work(snap),
        )
        yield _gauge(
            "captionizer_webhook_keys_waiting",
            "Keys with webhook deliveries waiting for one of their delivery slots.",
            snap.webhook_keys_waiting,
        )
        yield _gauge(
            "captionizer_webhook_retries_scheduled",
            "Webhook retries waiting for their time.",
            snap.webhook_retries_scheduled,
        )
        outcomes = CounterMetricFamily(
            "captionizer_webhook_attempts", "Webhook delivery attempts by outcome.", labels=["outcome"]
        )
        for outcome, count in sorted(snap.webhook_outcomes.items()):
            outcomes.add_metric([outcome], count)
        yield outcomes
        yield from _cache_families(snap.cache_counts, snap.cache_entries)
        yield from _worker_families(snap.workers)


def _job_families(counts: dict[str, int]) -> Iterable[Metric]:
    active = GaugeMetricFamily("captionizer_jobs_active", "Jobs now queued or running.", labels=["status"])
    entered = CounterMetricFamily("captionizer_jobs", "Jobs that reached each status.", labels=["status"])
    for status in JobStatus:
        if status not in FINAL_STATUSES:
            # Final states only grow (records expire without telling anyone): the counter has them.
            active.add_metric([str(status)], max(0, counts.get(f"current:{status}", 0)))
        entered.add_metric([str(status)], counts.get(f"entered:{status}", 0))
    yield active
    yield entered
    yield CounterMetricFamily(
        "captionizer_job_redeliveries",
        "Deliveries of a job that was already running (its worker died, or its task timed out in Redis).",
        value=counts.get("redelivered", 0),
    )


def _cache_families(counts: dict[str, int], entries: int) -> Iterable[Metric]:
    lookups = CounterMetricFamily(
        "captionizer_cache_lookups",
        "Caption cache lookups of jobs: hit (an earlier result reused, no decode nor model) or miss (captioned).",
        labels=["result"],
    )
    for result, name in (("hit", "hits"), ("miss", "misses")):
        lookups.add_metric([result], counts.get(name, 0))
    yield lookups
    yield CounterMetricFamily(
        "captionizer_cache_deduplicated",
        "Jobs that waited for an identical job in flight and took its result instead of captioning again.",
        value=counts.get("deduplicated", 0),
    )
    yield CounterMetricFamily(
        "captionizer_cache_fresh_url_hits",
        "Hits answered without downloading the image: its URL's server had said the image stays fresh "
        "(Cache-Control max-age or Expires). Counted among the hits too.",
        value=counts.get("fresh_url_hits", 0),
    )
    yield CounterMetricFamily(
        "captionizer_cache_evictions",
        "Cache entries deleted to stay within cache_max_entries (least recently used first).",
        value=counts.get("evictions", 0),
    )
    yield _gauge(
        "captionizer_cache_entries", "Caption cache entries and fresh URLs' links (members of the LRU set).", entries
    )


def _worker_families(workers: list[dict[str, object]]) -> Iterable[Metric]:
    yield _gauge(
        "captionizer_workers_ready", "Caption workers with their model loaded (live heartbeats).", len(workers)
    )
    load = GaugeMetricFamily(
        "captionizer_model_load_seconds_max", "Slowest model load among the ready workers.", labels=["model"]
    )
    slowest: dict[str, float] = {}
    for worker in workers:
        model, seconds = str(worker.get("model", "")), worker.get("model_load_s")
        if isinstance(seconds, int | float):
            # Per model, not per worker: worker ids are host names, not for the public API.
            slowest[model] = max(slowest.get(model, 0.0), float(seconds))
    for model, seconds in sorted(slowest.items()):
        load.add_metric([model], seconds)
    yield load


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _int_values(raw: dict[bytes | str, bytes | str]) -> dict[str, int]:
    return {_text(name): int(value) for name, value in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
