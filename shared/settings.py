"""The one settings object both processes read, from ``CAPTIONIZER_*`` variables.

Build it in the entry points (``create_app(settings)``, ``make_celery(settings)``)
and pass it in; library code never reads ``os.environ``. Every field has a
default that works on a laptop and a description the README's table is made from.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Where a blank ``model`` setting points: the small model shipped in the repo.
EMBEDDED_MODEL = "embedded"

_MIB = 1024 * 1024


def _split_csv(value: object) -> object:
    """Accept ``a,b,c`` from the environment as well as real lists."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Configuration of the API and the workers (env prefix ``CAPTIONIZER_``)."""

    model_config = SettingsConfigDict(env_prefix="CAPTIONIZER_", extra="ignore")

    # --- Redis, queue and records -------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis DSN (redis:// or rediss:// for TLS) for the queue, job records and results.",
    )
    key_prefix: str = Field(
        "captionizer",
        description="Prefix of every Redis key and queue name, so several deployments can share one Redis.",
    )
    job_ttl_s: int = Field(
        86_400, ge=60, description="How long job records and results are kept after creation, in seconds."
    )
    max_queue_depth: int = Field(
        10_000, ge=1, description="Jobs waiting in the caption queue beyond which POST answers 503 with Retry-After."
    )
    owner_queue_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Largest fraction of max_queue_depth one API key's queued jobs may take; past it that key's "
        "POSTs answer 429 owner_quota_exceeded while other keys are still served.",
    )
    max_pending_upload_bytes: int = Field(
        1024 * _MIB,
        ge=1024,
        description="Uploaded image bytes that all keys together may keep in Redis until their jobs end; past it "
        "uploads answer 503 queue_full.",
    )
    owner_upload_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Largest fraction of max_pending_upload_bytes one API key's uploads may take (429 "
        "owner_quota_exceeded past it).",
    )

    # --- Batches ----------------------------------------------------------------------
    max_batch_items: int = Field(
        10_000, ge=1, le=10_000, description="Most items one POST /v1/batches (or one append to a batch) may carry."
    )
    max_items_in_flight: int = Field(
        20_000,
        ge=1,
        description="Batch items one API key may have queued or running at once; beyond it a batch answers 429.",
    )
    bulk_queue_depth: int = Field(
        4,
        ge=1,
        description="Batch chunk messages the bulk queue holds at most; the rest wait in their key's backlog and "
        "are fed round-robin across keys, so a small batch waits behind at most this many chunks.",
    )
    bulk_chunks_per_key: int = Field(
        8,
        ge=1,
        description="Batch chunk messages one key may have out at once (on the bulk queue or held by a worker), per "
        "ready caption worker; the rest wait in the key's backlog, so a key whose chunks hang on a slow host leaves "
        "room in the workers for other keys' chunks. Keep it below the chunks a worker holds (12 by default).",
    )
    batch_chunk_items: int = Field(
        32, ge=1, le=1_024, description="Batch items per queue message (one chunk); size it to fill a model batch."
    )

    # --- OpenAI-compatible facade (/openai/v1) -----------------------------------------
    openai_wait_s: float = Field(
        60.0,
        gt=0,
        le=300,
        description="How long POST /openai/v1/chat/completions waits for its caption before answering 504 "
        "wait_timeout (the job goes on; the error names it).",
    )
    openai_max_file_bytes: int = Field(
        10 * _MIB,
        ge=1024,
        description="Largest batch input file POST /openai/v1/files takes, in bytes; a larger one answers 413 "
        "upload_too_large (max_request_bytes bounds the whole request further).",
    )
    openai_max_file_lines: int = Field(
        10_000,
        ge=1,
        le=100_000,
        description="Most request lines a batch input file may hold; a file with more answers 400 invalid_request.",
    )

    # --- Model ------------------------------------------------------------------------
    model: str = Field(
        EMBEDDED_MODEL,
        description="Model to load: 'embedded' (the small shipped model), a local checkpoint folder, or a Hugging Face id "
        "('null' and 'sleep:MS' are bench-only stand-ins, see bench/README.md).",
    )
    model_allow_download: bool = Field(
        False, description="Allow downloading `model` from the Hugging Face Hub when it is not a local folder."
    )
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto", description="Device for the model: auto picks CUDA, then Apple MPS, then CPU."
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="Model dtype: auto is float16 on CUDA and float32 elsewhere."
    )
    default_max_new_tokens: int = Field(30, ge=1, description="Caption length limit, in tokens, when a job names none.")
    max_new_tokens_limit: int = Field(100, ge=1, description="Largest max_new_tokens a job may ask for.")
    num_beams: int = Field(1, ge=1, le=8, description="Beam search width used for every caption (1 is greedy).")
    max_prompt_chars: int = Field(500, ge=1, description="Longest text prompt a job may give, in characters.")

    # --- Worker -----------------------------------------------------------------------
    task_events: bool = Field(False, description="Send Celery task events (Flower's task list): ~1 ms CPU per job.")
    max_batch_size: int | None = Field(
        None, ge=1, le=256, description="Most jobs captioned in one generate call; unset means 16 on GPU and 8 on CPU."
    )
    max_batch_wait_ms: int = Field(
        20, ge=0, description="Longest time the oldest job in hand waits for a batch to fill, in milliseconds."
    )
    job_time_limit_s: int = Field(
        120, ge=1, description="Time limit of one job (fetch, batch wait, generate) in seconds; then: job_timeout."
    )
    max_delivery_attempts: int = Field(
        3, ge=1, description="Deliveries of a job whose worker died before it ends failed with worker_crashed."
    )
    redelivery_timeout_s: int | None = Field(
        None,
        ge=1,
        description="How long a caption task whose worker died unacknowledged waits in Redis before it is delivered "
        "again, in seconds; unset means 3 x job_time_limit_s, at least 300. Must exceed job_time_limit_s.",
    )
    worker_max_memory_mb: int = Field(
        0, ge=0, description="Resident memory (MiB) past which a worker restarts gracefully after its task; 0 disables."
    )
    worker_metrics_port: int = Field(
        9100, ge=0, le=65535, description="Port of a caption worker's Prometheus /metrics endpoint; 0 disables it."
    )
    worker_heartbeat_s: int = Field(
        5, ge=1, description="How often a worker announces that its model is loaded, in seconds."
    )
    worker_threads: int = Field(
        64,
        ge=1,
        description="Celery pool threads of a caption worker when `celery worker -c` is not given: each holds one "
        "job or one batch chunk while it runs or waits, so jobs on slow image hosts cannot hold them all.",
    )
    prepare_threads: int = Field(
        0, ge=0, description="Threads of a caption worker decoding and preparing images in parallel; 0: one per core."
    )
    max_prompts_per_key: int = Field(
        4,
        ge=1,
        description="Distinct prompts one API key may have waiting for the model at once in a caption worker; "
        "its jobs with further prompts wait their turn, so they cannot split everyone's batches.",
    )
    bulk_items_in_hand: int = Field(
        0,
        ge=0,
        description="Batch items a caption worker holds at once (fetching, waiting for the model); 0: three batches.",
    )

    # --- Caption cache (docs/cache.md) -----------------------------------------------
    cache_enabled: bool = Field(
        True,
        description="Reuse a caption when the same image bytes, model and options were captioned before, and let "
        "identical jobs in flight wait for one another instead of captioning twice; jobs may opt out with cache=false.",
    )
    cache_max_entries: int = Field(
        100_000,
        ge=1,
        description="Most cache entries and fresh URLs' links kept; past it the least recently used are deleted (Redis runs noeviction, "
        "so the cache bounds itself). About 420 bytes of Redis each (bench/cache.py, docs/cache.md).",
    )
    cache_ttl_s: int = Field(
        7 * 86_400, ge=1, description="A cached caption is deleted after this many seconds without a hit."
    )
    cache_error_ttl_s: int = Field(
        300,
        ge=0,
        description="How long an image's deterministic input error (not_an_image, image_corrupt, too_many_pixels, "
        "image_aspect_ratio) is cached, in seconds; 0 caches no errors.",
    )
    cache_shared: bool = Field(
        False,
        description="Share cache entries between API keys. Off by default: each key has its own entries, so nothing "
        "(hit, timing, job id) tells a key what another captioned; on, a hit can reveal that someone sent the image.",
    )
    cache_lease_s: float = Field(
        10.0,
        gt=0,
        description="Lease of the job computing a cache key, renewed while it runs, in seconds: identical jobs wait "
        "for it, and take the work over when its worker dies and the lease lapses.",
    )
    cache_fresh_urls: bool = Field(
        True,
        description="While an image URL's server says its answer is fresh (Cache-Control max-age, or Expires; "
        "never a guess), a repeat of that URL is answered from the cache without downloading it again, for at most "
        "cache_ttl_s. Off: every job downloads its image.",
    )

    # --- Image intake -----------------------------------------------------------------
    allow_private_networks: bool = Field(
        False,
        description="Allow image and webhook URLs that reach loopback, private or link-local addresses (local development only).",
    )
    allowed_ports: Annotated[list[int], NoDecode] = Field(
        [80, 443], description="Ports image and webhook URLs may use (comma-separated)."
    )
    fetch_connect_timeout_s: float = Field(5.0, gt=0, description="Timeout to connect to an image server, in seconds.")
    fetch_timeout_s: float = Field(20.0, gt=0, description="Total timeout to download one image, in seconds.")
    max_fetches_per_key: int = Field(32, ge=0, description="Image fetches a worker runs at once per API key; 0: no cap")
    max_redirects: int = Field(
        3, ge=0, description="Most redirects followed when fetching an image; each hop is checked again."
    )
    max_image_bytes: int = Field(
        20 * _MIB, ge=1024, description="Largest image download, in bytes, enforced while streaming."
    )
    max_upload_bytes: int = Field(
        10 * _MIB, ge=1024, description="Largest uploaded image (multipart or base64), in bytes."
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="Largest image, in pixels, the decoder accepts (decompression-bomb guard)."
    )
    max_image_aspect_ratio: float = Field(
        20.0,
        ge=1.0,
        description="Longest side over shortest side the decoder accepts; beyond it the model sees only a sliver.",
    )
    max_jpeg_scans: int = Field(
        100,
        ge=1,
        description="Most scans a JPEG may have; each scan is a pass over the whole image, and encoders write "
        "about 10, so more is refused before decoding (image_too_complex).",
    )
    decode_cpu_budget_s: int = Field(
        10,
        ge=0,
        description="CPU seconds one image may take to decode, in a child process killed past it "
        "(image_too_complex); the costliest legitimate images take a second or two (a 21 MB WebP of noise: "
        "1.4 s). 0 decodes in the worker's threads with no budget beyond the structural limits.",
    )
    upload_ttl_s: int = Field(
        3_600, ge=60, description="How long an uploaded image waits in Redis for a worker to read it, in seconds."
    )

    # --- Webhooks ---------------------------------------------------------------------
    webhook_secrets: Annotated[list[str], NoDecode] = Field(
        [],
        description="Extra deployment-wide signing secrets (comma-separated whsec_ values) added to every delivery "
        "for the operator's own verifier; never give them to a tenant. Each key's own secret is in GET /v1/webhooks/secret.",
    )
    webhook_secret_grace_s: int = Field(
        86_400,
        ge=0,
        description="How long a key's replaced webhook secret keeps signing after a rotation, in seconds.",
    )
    webhook_max_concurrent_per_key: int = Field(
        2,
        ge=0,
        description="Most webhook deliveries one key may have in progress at once (its receiver's share of the "
        "webhook threads); 0 means no limit.",
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Timeout of one webhook delivery attempt, in seconds.")
    webhook_retry_delays_s: Annotated[list[float], NoDecode] = Field(
        [5, 30, 120, 600, 1800, 3600, 7200, 14400],
        description="Delays before each retry of a failed webhook delivery, in seconds (comma-separated); jitter is added.",
    )

    # --- API --------------------------------------------------------------------------
    api_key_hashes: Annotated[list[str], NoDecode] = Field(
        [],
        description="SHA-256 hex digests of the accepted API keys (comma-separated); keys themselves are never stored.",
    )
    api_key_hashes_file: str | None = Field(
        None, description="File with one API key hash per line (e.g. a mounted secret), added to api_key_hashes."
    )
    allow_anonymous: bool = Field(
        False, description="Serve requests without an API key (local use only; `make run` turns it on)."
    )
    anonymous_hosts: Annotated[list[str], NoDecode] = Field(
        [],
        description="Host names, besides 127.0.0.1, localhost and [::1], that the API answers while allow_anonymous "
        "is on (comma-separated; a DNS rebinding guard: any other Host header gets 421 host_not_allowed).",
    )
    rate_limit_per_minute: int = Field(
        120, ge=0, description="Requests per minute each key may make; 0 disables limiting."
    )
    rate_limit_burst: int = Field(
        60, ge=1, description="Requests a key may make at once before the rate limit applies."
    )
    rate_limit_reads_per_minute: int = Field(
        600,
        ge=0,
        description="Reads of one's own jobs (GET /v1/jobs..., long-polls included) per minute each key may make, "
        "on a budget of their own so polling never spends the submit budget; 0 disables limiting reads.",
    )
    rate_limit_reads_burst: int = Field(
        120, ge=1, description="Reads of one's own jobs a key may make at once before their rate limit applies."
    )
    max_request_bytes: int = Field(
        15 * _MIB, ge=1024, description="Largest request body the API reads, in bytes (uploads included)."
    )
    max_wait_s: float = Field(
        60.0, ge=0, le=300, description="Longest long-poll a client may ask for with ?wait=, in seconds."
    )
    caption_wait_s: float = Field(
        30.0, ge=0, description="How long GET /caption waits for its job before answering 504."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        [], description="Origins allowed by CORS (comma-separated); empty means same origin only."
    )
    front_door_id: str | None = Field(
        None, description="When set, requests must carry this X-Azure-FDID header (Azure Front Door's id) or get 403."
    )
    ready_requires_worker: bool = Field(
        True,
        description="/readyz answers 503 until a caption worker has its model loaded; turn off where workers scale "
        "to zero on queue length, or the API would never take the jobs that wake them.",
    )
    log_level: str = Field("INFO", description="Log level of every process (logs are JSON, one event per line).")

    @field_validator(
        "allowed_ports",
        "webhook_secrets",
        "webhook_retry_delays_s",
        "api_key_hashes",
        "cors_origins",
        "anonymous_hosts",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_dsn(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return value

    @field_validator("webhook_secrets")
    @classmethod
    def _whsec(cls, value: list[str]) -> list[str]:
        for secret in value:
            if not secret.startswith("whsec_"):
                raise ValueError("every webhook secret must be a whsec_ value (Standard Webhooks)")
        return value

    @field_validator("api_key_hashes")
    @classmethod
    def _sha256_hex(cls, value: list[str]) -> list[str]:
        for digest in value:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError("api_key_hashes must be SHA-256 hex digests, never keys in plain text")
        return [digest.lower() for digest in value]

    @model_validator(mode="after")
    def _limits_consistent(self) -> Settings:
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError("default_max_new_tokens must not exceed max_new_tokens_limit")
        if self.max_upload_bytes > self.max_request_bytes:
            raise ValueError("max_upload_bytes must not exceed max_request_bytes")
        if self.redelivery_timeout_s is not None and self.redelivery_timeout_s <= self.job_time_limit_s:
            # A running job's message would be delivered a second time while it still runs.
            raise ValueError("redelivery_timeout_s must exceed job_time_limit_s")
        return self

    def batch_size_for(self, on_gpu: bool) -> int:
        """The batch size to use: the setting, or 16 on GPU and 8 on CPU."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        return 16 if on_gpu else 8


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, built once (entry points and FastAPI dependency only)."""
    return Settings()
