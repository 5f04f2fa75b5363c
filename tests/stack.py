"""The real stack, once per test session: redis-server, a celery worker, uvicorn, an image server.

The worker loads the embedded model when it has been trained (``model/embedded``),
else a tiny random GIT saved for the session, so the pipeline is exercised either
way; tests of real captions need the embedded one. Redis is cleared of job data
between tests (not of Celery's queue bindings, which the worker made at start).

Loaded as a pytest plugin (``-p tests.stack`` in pyproject), so the integration and the
browser tests share one stack per session instead of starting one each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from redis import Redis

from api.http.auth import hash_key
from model.captioner import EMBEDDED_MODEL_DIR
from scripts.processes import free_port
from scripts.stack import LocalStack
from shared.settings import EMBEDDED_MODEL
from tests.integration.chaos import Chaos
from tests.integration.webhook_receiver import NEW_SECRET, OLD_SECRET, WebhookReceiver, running_receiver
from tests.servers import HostileServer

#: API keys of two tenants of the test stack (which also serves anonymous requests).
TENANT_A_KEY = "cap_tenant-a-0123456789abcdefghijklmnopqrstuvwxyz"
TENANT_B_KEY = "cap_tenant-b-0123456789abcdefghijklmnopqrstuvwxyz"
#: How many webhook deliveries one key may have in progress in the test stack (of its 4 webhook threads).
WEBHOOKS_PER_KEY = 2

#: True once the embedded model is trained; only then are captions checked word by word.
HAS_EMBEDDED_MODEL = (EMBEDDED_MODEL_DIR / "config.json").is_file()
needs_embedded_model = pytest.mark.skipif(not HAS_EMBEDDED_MODEL, reason="model/embedded is not trained yet")


#: The test stack's caption worker: its batch size and its pool threads (messages it holds at once).
STACK_BATCH_SIZE = 8
STACK_WORKER_THREADS = 24


@pytest.fixture(scope="session")
def image_server() -> Iterator[HostileServer]:
    """Drawn shapes (``/image/shape.png`` is a red circle) and misbehaving routes, on a free port."""
    with HostileServer() as server:
        yield server


@pytest.fixture(scope="session")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A webhook receiver on loopback that verifies every delivery with the newer of the stack's secrets."""
    with running_receiver(NEW_SECRET) as receiver:
        yield receiver


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The embedded model, or a tiny random GIT built for this session."""
    if HAS_EMBEDDED_MODEL:
        return EMBEDDED_MODEL
    from tests.fakes import build_tiny_git

    return str(build_tiny_git(tmp_path_factory.mktemp("tiny-git")))


@pytest.fixture(scope="session")
def metrics_port() -> int:
    """Where the worker serves Prometheus metrics."""
    return free_port()


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    image_server: HostileServer,
    webhook_receiver: WebhookReceiver,
    model_path: str,
    metrics_port: int,
) -> Iterator[LocalStack]:
    """Redis, a caption worker, a webhook worker and the API, started once; every process group is killed at the end."""
    # The API's own port is allowed too: the README's examples caption the sample images it serves.
    api_port = free_port()
    env = {
        "CAPTIONIZER_MODEL": model_path,
        "CAPTIONIZER_ALLOW_ANONYMOUS": "true",
        "CAPTIONIZER_ALLOW_PRIVATE_NETWORKS": "true",
        "CAPTIONIZER_ALLOWED_PORTS": f"80,443,{image_server.port},{webhook_receiver.port},{api_port}",
        "CAPTIONIZER_API_KEY_HASHES": f"{hash_key(TENANT_A_KEY)},{hash_key(TENANT_B_KEY)}",
        # Deployment-wide extra signatures beside each key's own; short retries so a retry arrives within a test.
        "CAPTIONIZER_WEBHOOK_SECRETS": f"{OLD_SECRET},{NEW_SECRET}",
        "CAPTIONIZER_WEBHOOK_MAX_CONCURRENT_PER_KEY": str(WEBHOOKS_PER_KEY),
        "CAPTIONIZER_WEBHOOK_RETRY_DELAYS_S": "1,2",
        "CAPTIONIZER_WEBHOOK_TIMEOUT_S": "5",
        "CAPTIONIZER_RATE_LIMIT_PER_MINUTE": "0",
        "CAPTIONIZER_WORKER_METRICS_PORT": str(metrics_port),
        # Long enough that a burst of jobs reliably shares a batch.
        "CAPTIONIZER_MAX_BATCH_WAIT_MS": "100",
        "CAPTIONIZER_MAX_BATCH_SIZE": str(STACK_BATCH_SIZE),
        # Fewer messages in hand than the default, so tests fill them: tests/integration/test_bulk.py.
        "CAPTIONIZER_WORKER_THREADS": str(STACK_WORKER_THREADS),
        "CAPTIONIZER_CAPTION_WAIT_S": "60",
    }
    stack = LocalStack(tmp_path_factory.mktemp("stack-logs"), env=env, api_port=api_port)
    try:
        stack.start(timeout_s=240)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    """An HTTP client of the running API; job data is flushed from Redis after each test."""
    with httpx.Client(base_url=stack.api_url, timeout=90) as client:
        yield client
    _flush_job_data(stack)


@contextlib.contextmanager
def standin_stack(
    log_dir: Path, image_server: HostileServer, env: Mapping[str, str], *, webhooks: bool = False
) -> Iterator[LocalStack]:
    """A small stack of one test module's own: the ``null`` model (quick to start), a webhook worker if asked.

    For tests that need settings the shared stack must not have (one pool thread, a tiny fetch share):
    ``env`` adds to or overrides the defaults here. Tenants A and B are served, and so are anonymous callers.
    """
    defaults = {
        "CAPTIONIZER_MODEL": "null",
        "CAPTIONIZER_ALLOW_ANONYMOUS": "true",
        "CAPTIONIZER_ALLOW_PRIVATE_NETWORKS": "true",
        "CAPTIONIZER_ALLOWED_PORTS": f"80,443,{image_server.port}",
        "CAPTIONIZER_API_KEY_HASHES": f"{hash_key(TENANT_A_KEY)},{hash_key(TENANT_B_KEY)}",
        "CAPTIONIZER_RATE_LIMIT_PER_MINUTE": "0",
        "CAPTIONIZER_WORKER_METRICS_PORT": "0",
    }
    stack = LocalStack(log_dir, env={**defaults, **env}, api_port=free_port(), webhooks=webhooks)
    try:
        stack.start(timeout_s=240)
        yield stack
    finally:
        stack.stop()


#: The reliability stack's limits: short, so crashes are recovered within a test.
RELIABILITY_TIME_LIMIT_S = 10
RELIABILITY_REDELIVERY_S = 12
RELIABILITY_MAX_ATTEMPTS = 3
#: Pool threads of the reliability stack's caption worker: messages it holds at once (test_lifecycle fills them).
RELIABILITY_WORKER_THREADS = 16


@pytest.fixture(scope="session")
def reliability_stack(
    tmp_path_factory: pytest.TempPathFactory, image_server: HostileServer, model_path: str
) -> Iterator[LocalStack]:
    """A stack of its own for tests that kill and restart its parts (tests/integration/test_crash_recovery.py...).

    Redis persists as docker-compose runs it (AOF, everysec); the caption worker is
    ``tests.integration.crashing_worker`` (a poison prompt kills it); redelivery after a
    worker death takes seconds, not minutes; uvicorn drains requests for up to 10 s.
    """
    env = {
        "CAPTIONIZER_MODEL": model_path,
        "CAPTIONIZER_KEY_PREFIX": "rel",
        "CAPTIONIZER_ALLOW_ANONYMOUS": "true",
        "CAPTIONIZER_ALLOW_PRIVATE_NETWORKS": "true",
        "CAPTIONIZER_ALLOWED_PORTS": f"80,443,{image_server.port}",
        "CAPTIONIZER_RATE_LIMIT_PER_MINUTE": "0",
        "CAPTIONIZER_WORKER_METRICS_PORT": "0",
        "CAPTIONIZER_JOB_TIME_LIMIT_S": str(RELIABILITY_TIME_LIMIT_S),
        "CAPTIONIZER_REDELIVERY_TIMEOUT_S": str(RELIABILITY_REDELIVERY_S),
        "CAPTIONIZER_MAX_DELIVERY_ATTEMPTS": str(RELIABILITY_MAX_ATTEMPTS),
        "CAPTIONIZER_WORKER_THREADS": str(RELIABILITY_WORKER_THREADS),
        # A dead worker's heartbeat expires within 3 s, so /readyz follows it quickly.
        "CAPTIONIZER_WORKER_HEARTBEAT_S": "1",
    }
    stack = LocalStack(
        tmp_path_factory.mktemp("reliability-logs"),
        env=env,
        api_port=free_port(),
        worker_app="tests.integration.crashing_worker",
        webhooks=False,
        redis_persistence=True,
        api_graceful_shutdown_s=10,
    )
    try:
        stack.start(timeout_s=240)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def chaos(reliability_stack: LocalStack) -> Iterator[Chaos]:
    """The reliability stack, whole again and its job data flushed after each test."""
    with httpx.Client(base_url=reliability_stack.api_url, timeout=60) as client:
        handle = Chaos(reliability_stack, client)
        try:
            yield handle
        finally:
            handle.restore()
            handle.close()
            _flush_job_data(reliability_stack)


def _flush_job_data(stack: LocalStack) -> None:
    client = Redis.from_url(stack.redis_url)
    try:
        # Worker state (heartbeats, the model's limits), refreshed by each heartbeat, is not job data.
        keep = (stack.keys.worker_heartbeat_pattern().rstrip("*"), stack.keys.model_limits())
        doomed = [key for key in client.scan_iter(match=f"{stack.keys.prefix}:*") if not key.decode().startswith(keep)]
        if doomed:
            client.delete(*doomed)
    finally:
        client.close()


def log_of(stack: LocalStack, name: str) -> str:
    """The output of one of the stack's processes (for assertion messages)."""
    return Path(stack.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
