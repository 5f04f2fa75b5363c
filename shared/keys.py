"""Every Redis key, channel, Celery queue and task name, in one place.

Both processes build names only through :class:`Keys`, so a deployment's
``key_prefix`` moves all of them together.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Celery queue the caption workers consume (KEDA scales the GPU workers on its length).
CAPTION_QUEUE = "captions"
#: Celery queue of bulk work: chunks of a batch's items, consumed after the interactive caption queue.
BULK_QUEUE = "captions-bulk"
#: Celery queue the light webhook worker consumes; it never loads the model.
WEBHOOK_QUEUE = "webhooks"
#: Celery task name of captioning one job (the worker may batch several).
CAPTION_TASK = "captionizer.caption"
#: Celery task name of captioning one chunk of a batch: one message, a list of job ids, acknowledged late.
CAPTION_CHUNK_TASK = "captionizer.caption_chunk"
#: Celery task name of delivering one webhook event.
WEBHOOK_TASK = "captionizer.deliver_webhook"


@dataclass(frozen=True)
class Keys:
    """Redis key names under one prefix."""

    prefix: str = "captionizer"

    def job(self, job_id: str) -> str:
        """Hash holding one job record (fields JSON-encoded)."""
        return f"{self.prefix}:job:{job_id}"

    def job_events(self, job_id: str) -> str:
        """Pub/sub channel announcing each status change of one job."""
        return f"{self.prefix}:job-events:{job_id}"

    def job_events_pattern(self) -> str:
        """Pattern matching every job's events channel (one subscriber per API process)."""
        return f"{self.prefix}:job-events:*"

    def job_id_from_events_channel(self, channel: str) -> str:
        """The job id an events channel belongs to."""
        return channel.rsplit(":", 1)[-1]

    def job_counts(self) -> str:
        """Hash of job counts by status (``entered:<status>``, ``current:<status>``, ``redelivered``), for /metrics."""
        return f"{self.prefix}:job-counts"

    def queued_jobs(self) -> str:
        """Sorted set of queued jobs (score: when queued, epoch seconds), for the orphan sweeper."""
        return f"{self.prefix}:queued-jobs"

    def owner_queued_jobs(self) -> str:
        """Hash of each owner's jobs in ``queued`` that count against its share of the queue."""
        return f"{self.prefix}:owner-queued-jobs"

    def owner_upload_bytes(self) -> str:
        """Hash of each owner's uploaded bytes waiting in Redis (field ``*``: every owner's together)."""
        return f"{self.prefix}:owner-upload-bytes"

    def orphan_sweep_lock(self) -> str:
        """Lock held by the one caption worker sweeping for orphaned jobs this round."""
        return f"{self.prefix}:orphan-sweep"

    def held_jobs(self, holder: str) -> str:
        """Sorted set of the job ids one caption worker process holds a message for (score: written at, epoch s)."""
        return f"{self.prefix}:held-jobs:{holder}"

    def job_holders(self) -> str:
        """Sorted set of caption worker processes with a held-jobs set (score: their last write, epoch s)."""
        return f"{self.prefix}:job-holders"

    def webhook_outcomes(self) -> str:
        """Hash counting webhook attempts by outcome (delivered, retrying, failed, gone), for /metrics."""
        return f"{self.prefix}:webhook-outcomes"

    def upload(self, job_id: str) -> str:
        """Uploaded image bytes, kept until a worker has read them."""
        return f"{self.prefix}:upload:{job_id}"

    def idempotency(self, owner: str, key: str) -> str:
        """Maps an owner's Idempotency-Key to its job id and request fingerprint."""
        return f"{self.prefix}:idem:{owner}:{key}"

    def owner_jobs(self, owner: str) -> str:
        """Sorted set of one owner's recent job ids (score: creation time), for GET /v1/jobs."""
        return f"{self.prefix}:owner-jobs:{owner}"

    def batch(self, batch_id: str) -> str:
        """Hash holding one batch: its options, item total and counts per status (shared.batches.store)."""
        return f"{self.batch_prefix()}{batch_id}"

    def batch_prefix(self) -> str:
        """What every batch hash's name starts with; the transition script appends the job's batch id."""
        return f"{self.prefix}:batch:"

    def batch_results(self, batch_id: str, chunk: int) -> str:
        """One results chunk of a batch, compacted once its items have all ended (shared.batches.results)."""
        return f"{self.prefix}:batch-results:{batch_id}:{chunk}"

    def batches_ended(self) -> str:
        """List of batch ids whose last item just ended, waiting for the API to close them."""
        return f"{self.prefix}:batches-ended"

    def batches_closing(self) -> str:
        """List of batch ids an API process is closing now (moved from batches_ended, so none is lost)."""
        return f"{self.prefix}:batches-closing"

    def result_chunks_ended(self) -> str:
        """List of ``<batch_id>:<chunk>`` whose items have all ended, waiting for the API to compact them."""
        return f"{self.prefix}:result-chunks-ended"

    def result_chunks_compacting(self) -> str:
        """List of results chunks an API process is compacting now (moved from result_chunks_ended)."""
        return f"{self.prefix}:result-chunks-compacting"

    def items_in_flight(self, owner: str) -> str:
        """Counter of one owner's batch items not yet ended (the max_items_in_flight cap)."""
        return f"{self.prefix}:items-in-flight:{owner}"

    def openai_file(self, file_id: str) -> str:
        """Hash of one batch input file of the OpenAI-compatible facade (owner, name, content)."""
        return f"{self.prefix}:openai-file:{file_id}"

    def openai_files(self, owner: str) -> str:
        """Sorted set of one owner's facade files (score: creation, epoch seconds)."""
        return f"{self.prefix}:openai-files:{owner}"

    def openai_batch(self, batch_id: str) -> str:
        """Hash of what the facade adds to a native batch: its input file, line errors, metadata."""
        return f"{self.prefix}:openai-batch:{batch_id}"

    def openai_batches(self, owner: str) -> str:
        """Sorted set of one owner's facade batches (score: creation, epoch seconds)."""
        return f"{self.prefix}:openai-batches:{owner}"

    def rate_limit(self, owner: str) -> str:
        """Token bucket of one API key."""
        return f"{self.prefix}:rate:{owner}"

    def worker_heartbeat(self, worker_id: str) -> str:
        """Expiring key a worker refreshes while its model is loaded."""
        return f"{self.prefix}:worker:{worker_id}"

    def ready_workers(self) -> str:
        """Sorted set of ready caption workers' ids (score: when their heartbeat expires, epoch seconds)."""
        # Under "worker:", with the heartbeats, so whatever keeps or clears those treats it alike.
        return f"{self.prefix}:worker:ready-set"

    def worker_heartbeat_pattern(self) -> str:
        """Pattern matching every worker's heartbeat key."""
        return f"{self.prefix}:worker:*"

    def model_limits(self) -> str:
        """The loaded model's limits (``shared.intake.model_limits``), refreshed by the caption workers' heartbeat."""
        return f"{self.prefix}:model-limits"

    def webhook_schedule(self) -> str:
        """Sorted set of webhook retries waiting for their time (score: due time, epoch seconds)."""
        return f"{self.prefix}:webhook-schedule"

    def webhook_secret(self, owner: str) -> str:
        """One owner's current webhook signing secret (no expiry; rotated in place)."""
        return f"{self.prefix}:webhook-secret:{owner}"

    def webhook_secret_previous(self, owner: str) -> str:
        """One owner's previous signing secret, kept for the grace period after a rotation."""
        return f"{self.prefix}:webhook-secret-previous:{owner}"

    def webhook_slots(self, owner: str) -> str:
        """Sorted set of one owner's deliveries in progress (score: lease end, epoch seconds)."""
        return f"{self.prefix}:webhook-slots:{owner}"

    def cache_entry(self, digest: str) -> str:
        """One cached caption or input error (``worker.caching``), by its key's hex digest."""
        return f"{self.prefix}:cache:e:{digest}"

    def cache_entry_prefix(self) -> str:
        """What :meth:`cache_entry` puts before the digest (the eviction script builds names from it)."""
        return f"{self.prefix}:cache:e:"

    def cache_lease(self, digest: str) -> str:
        """The lease of the job computing one cache key; identical jobs wait while it lives."""
        return f"{self.prefix}:cache:l:{digest}"

    def cache_lru(self) -> str:
        """Sorted set of cache entries' digests and links' ``u:`` digests (score: last use, epoch ms): eviction order, bound."""
        return f"{self.prefix}:cache:lru"

    def cache_stats(self) -> str:
        """Hash of cache counters (``hits``, ``misses``, ``deduplicated``, ``fresh_url_hits``, ``evictions``), for /metrics."""
        return f"{self.prefix}:cache:stats"

    def bulk_backlog(self, owner: str) -> str:
        """List of one key's batch chunk messages waiting for their turn on the bulk queue (shared.broker.bulk_backlog)."""
        return f"{self.prefix}:bulk-backlog:{owner}"

    def bulk_out(self, owner: str) -> str:
        """Sorted set of one key's chunk message ids fed to the bulk queue and not yet ended (score: when fed)."""
        return f"{self.prefix}:bulk-out:{owner}"

    def bulk_ring(self) -> str:
        """List of the keys with a bulk backlog, in round-robin order (each once)."""
        return f"{self.prefix}:bulk-ring"

    def webhook_waiting(self, owner: str) -> str:
        """Sorted set of one owner's deliveries waiting for a free slot (score: when they began waiting)."""
        return f"{self.prefix}:webhook-waiting:{owner}"

    def webhook_waiting_owners(self) -> str:
        """Sorted set of owners with deliveries waiting for a slot (score: when to look at them again at the latest)."""
        return f"{self.prefix}:webhook-waiting-owners"

    def caption_queue(self) -> str:
        """Name of the Celery caption queue (a Redis list of the same name)."""
        return CAPTION_QUEUE if self.prefix == "captionizer" else f"{self.prefix}-{CAPTION_QUEUE}"

    def bulk_queue(self) -> str:
        """Name of the Celery queue of batch chunks (interactive jobs keep the caption queue)."""
        return BULK_QUEUE if self.prefix == "captionizer" else f"{self.prefix}-{BULK_QUEUE}"

    def webhook_queue(self) -> str:
        """Name of the Celery webhook queue."""
        return WEBHOOK_QUEUE if self.prefix == "captionizer" else f"{self.prefix}-{WEBHOOK_QUEUE}"
