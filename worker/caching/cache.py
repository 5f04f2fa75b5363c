"""The caption cache as the job pipeline sees it: claim a job's key, reuse a hit, record a miss.

:meth:`CaptionCache.claim` is entered once the image's bytes are read, with their SHA-256 (taken as they
arrived, ``worker.intake.images.ImageBytes``). It ends in one of three ways:

- **hit**: an entry exists; the job ends with it, before any decode or model work;
- **miss**: the key is leased to this job, which computes and records the result (:meth:`Claim.record`);
  leaving the block any other way ends the lease, so a waiting job takes the work over at once;
- **wait**: another job holds the key's lease; this one claims again until it finds the entry (a
  de-duplicated hit) or the lease gone (that job failed, was canceled, or its worker died and the
  lease lapsed): then it computes itself. When the holder runs in this worker the waiter is woken the
  moment it records or gives up; otherwise it claims again after a pause that grows to a quarter
  second. The job's own time limit bounds the wait.

:meth:`CaptionCache.fresh_hit` comes first, before any download: a URL whose server said its answer stays
fresh (``worker.intake.freshness``) was linked to its image's entry when it was last fetched, and a
repeat within that time is a hit without downloading the image again.

Leases last ``cache_lease_s`` and are renewed for the jobs still computing, every third of that, in
one script call per worker; a worker that dies stops renewing, so its leases lapse within one length.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from shared.error_codes import error_for_code
from shared.error_families import CaptionizerError
from shared.errors import ImageAspectRatio, ImageCorrupt, NotAnImage, TooManyPixels
from shared.jobs.model import CacheOutcome, Job
from shared.jobs.store import REDIS_ERRORS
from shared.settings import Settings
from worker.caching.identity import CacheKey, make_key, make_url_key
from worker.caching.store import LEASED, WAIT, CacheStore, Entry, Link

logger = logging.getLogger(__name__)

#: Input errors that the image's bytes alone decide, under the limits the key covers: cached briefly.
CACHEABLE_ERRORS: tuple[type[CaptionizerError], ...] = (NotAnImage, ImageCorrupt, TooManyPixels, ImageAspectRatio)
# Pauses between claims of a waiting job, in seconds: quick at first (identical jobs of one chunk
# usually wait a batch), then a few claims per second, which cost Redis next to nothing.
_FIRST_WAIT_S = 0.01
_LONGEST_WAIT_S = 0.25


@dataclass
class Claim:
    """One job's claim on its cache key: a hit's entry, or the lease to compute under."""

    key: CacheKey | None
    job_id: str
    #: A short digest of the job's owner (see :func:`owner_tag`), stored with what it records.
    owner_tag: str
    outcome: CacheOutcome
    #: On a hit: the cached result.
    entry: Entry | None = None
    #: On a hit: the producing job, when it belongs to the same owner (never another key's job).
    cached_from: str | None = None
    #: The fresh URL's link to write with the entry (its job downloaded an image its server said stays fresh).
    link: Link | None = None
    recorded: bool = field(default=False, repr=False)

    def hit_caption(self) -> str:
        """The cached caption; for a cached input error, raises it as the job's own failure.

        Raises:
            CaptionizerError: the cached error (its ``extra`` says ``cache="hit"`` and ``cached_from``).
        """
        entry = self.entry
        if entry is None:
            raise RuntimeError("not a cache hit")
        if entry.caption is not None:
            return entry.caption
        raise error_for_code(
            entry.error_code or "internal_error", entry.error_message or "", cache="hit", cached_from=self.cached_from
        )


class CaptionCache:
    """One per caption worker: keys jobs, claims keys through :class:`CacheStore`, renews its leases."""

    def __init__(self, store: CacheStore, settings: Settings, *, model: str) -> None:
        self.store = store
        self.settings = settings
        self.model = model
        # The leases this worker's jobs hold now (digest → job id), renewed together.
        self._leases: dict[str, str] = {}
        # Set when the local job holding a digest's lease has recorded or released it: this worker's
        # identical jobs wake at once instead of claiming again on a timer.
        self._settled: dict[str, asyncio.Event] = {}
        self._renewer: asyncio.Task[None] | None = None

    def key_for(self, job: Job, image_sha256: str) -> CacheKey | None:
        """The job's cache key from its image's SHA-256, or None when the deployment or the job turned the cache off."""
        if not self.settings.cache_enabled or not job.use_cache:
            return None
        return make_key(job.owner, image_sha256, job.options, model=self.model, settings=self.settings)

    async def fresh_hit(self, job: Job) -> Claim | None:
        """A hit for ``job`` without its download, when its URL is still fresh and linked to an entry; else None.

        Raises:
            QueueUnavailable: Redis cannot be reached.
        """
        url_key = self._url_key_for(job)
        if url_key is None:
            return None
        entry = await self.store.peek(url_key.digest)
        if entry is None:
            return None
        tag = owner_tag(job.owner)
        return Claim(None, job.id, tag, "hit", entry, entry.job_id if entry.owner_tag == tag else None)

    @contextlib.asynccontextmanager
    async def claim(self, job: Job, image_sha256: str, *, fresh_s: float = 0.0) -> AsyncIterator[Claim]:
        """Claim ``job``'s key for the block: a hit, or a lease held until the block records or leaves.

        ``fresh_s``: how long the image's server said its answer stays fresh; the job's URL is then
        linked to the entry for that long (at most ``cache_ttl_s``), for :meth:`fresh_hit`.

        Raises:
            QueueUnavailable: Redis cannot be reached.
        """
        key = self.key_for(job, image_sha256)
        if key is None:
            yield Claim(None, job.id, owner_tag(job.owner), "off")
            return
        claim = await self._claim(key, job)
        claim.link = self._link_for(job, fresh_s)
        if claim.outcome == "hit":
            if claim.link is not None:
                await self._write_link(key.digest, claim.link, job.id)
            yield claim
            return
        self._hold(key.digest, job.id)
        try:
            yield claim
        except CACHEABLE_ERRORS as exc:
            await self._record_error(claim, exc)
            raise
        finally:
            self._leases.pop(key.digest, None)
            if not claim.recorded:
                await self._release(key.digest, job.id)
            settled = self._settled.pop(key.digest, None)
            if settled is not None:
                settled.set()

    async def record(self, claim: Claim, caption: str) -> None:
        """Store the caption the claim's job computed, and end its lease (waiting jobs then hit)."""
        if claim.key is None or claim.outcome != "miss":
            return
        entry = Entry(job_id=claim.job_id, owner_tag=claim.owner_tag, caption=caption)
        links = [claim.link] if claim.link is not None else []
        await self.store.store(claim.key.digest, entry, ttl_s=self.settings.cache_ttl_s, links=links)
        claim.recorded = True

    async def close(self) -> None:
        """Stop renewing leases (a stopping worker's jobs have ended or will be redelivered)."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None

    async def _claim(self, key: CacheKey, job: Job) -> Claim:
        pause_s, waited, tag = _FIRST_WAIT_S, False, owner_tag(job.owner)
        while True:
            reply = await self.store.claim(key.digest, job.id, waited=waited)
            if isinstance(reply, Entry):
                # Under cache_shared the entry may be another key's: its job id is never shown.
                return Claim(key, job.id, tag, "hit", reply, reply.job_id if reply.owner_tag == tag else None)
            if reply == LEASED:
                return Claim(key, job.id, tag, "miss")
            if reply != WAIT:
                raise RuntimeError(f"unexpected cache claim reply {reply!r}")
            waited = True
            settled = self._settled.get(key.digest)
            if settled is not None:
                # Held by a job of this worker: woken when it records or gives up (within its time limit).
                await settled.wait()
                continue
            # Held by another worker: claim again after a pause, which grows; the job's time limit bounds it.
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, _LONGEST_WAIT_S)

    def _url_key_for(self, job: Job) -> CacheKey | None:
        settings = self.settings
        if not (settings.cache_enabled and settings.cache_fresh_urls and job.use_cache) or job.image_url is None:
            return None
        return make_url_key(job.owner, job.image_url, job.options, model=self.model, settings=settings)

    def _link_for(self, job: Job, fresh_s: float) -> Link | None:
        """The link to write for a job whose image its server said stays fresh for ``fresh_s``; None otherwise."""
        ttl_ms = int(1000 * min(fresh_s, self.settings.cache_ttl_s))
        url_key = self._url_key_for(job) if ttl_ms > 0 else None
        return Link(url_key.digest, ttl_ms) if url_key is not None else None

    async def _write_link(self, digest: str, link: Link, job_id: str) -> None:
        try:
            await self.store.link(digest, [link])
        except CaptionizerError:
            # Only a later repeat's download is at stake, not this job's result.
            logger.warning("could not link a fresh URL to its cache entry", extra={"job_id": job_id})

    async def _record_error(self, claim: Claim, exc: CaptionizerError) -> None:
        if claim.key is None or not self.settings.cache_error_ttl_s:
            return
        entry = Entry(job_id=claim.job_id, owner_tag=claim.owner_tag, error_code=exc.code, error_message=exc.message)
        error_ttl_s = self.settings.cache_error_ttl_s
        # A link never outlives the entry it names by much: a cached error lives minutes, not the URL's freshness.
        links = [replace(claim.link, ttl_ms=min(claim.link.ttl_ms, 1000 * error_ttl_s))] if claim.link else []
        try:
            await self.store.store(claim.key.digest, entry, ttl_s=error_ttl_s, links=links)
            claim.recorded = True
        except CaptionizerError:
            logger.warning("could not cache an input error", extra={"job_id": claim.job_id, "code": exc.code})

    def _hold(self, digest: str, job_id: str) -> None:
        self._leases[digest] = job_id
        self._settled[digest] = asyncio.Event()
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever(), name="cache-leases")

    async def _release(self, digest: str, job_id: str) -> None:
        try:
            await self.store.release({digest: job_id})
        except CaptionizerError:
            # The lease lapses by itself within cache_lease_s; waiting jobs take over then.
            logger.warning("could not end a cache lease", extra={"job_id": job_id})

    async def _renew_forever(self) -> None:
        period_s = self.settings.cache_lease_s / 3
        while self._leases:
            # A timer, not a wait on state: a lease must be renewed before it lapses.
            await asyncio.sleep(period_s)
            try:
                await self.store.renew(dict(self._leases))
            except (CaptionizerError, *REDIS_ERRORS):
                logger.warning("could not renew cache leases", extra={"leases": len(self._leases)})


def owner_tag(owner: str) -> str:
    """A short digest of the owner: enough to tell owners apart, without storing the key's name."""
    return hashlib.sha256(owner.encode()).hexdigest()[:16]
