"""The whole system on one machine: Redis (started when none answers), a caption worker, a webhook worker and the API.

Each part is a :class:`~scripts.processes.ManagedProcess`; :meth:`LocalStack.start`
waits for each to be ready (Redis answers PING, the worker's heartbeat appears once
its model is loaded, the webhook worker says its retry mover started, the API's
``/readyz`` answers 200) and stops everything it started if any part fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from redis import Redis

from scripts.processes import ManagedProcess, free_port
from shared.keys import Keys

REPO_ROOT = Path(__file__).resolve().parents[1]
REDIS_INSTALL_HINT = (
    "redis-server is not installed: `sudo apt-get install redis-server` (Debian/Ubuntu) or `brew install redis`."
)
#: Seconds uvicorn keeps an idle connection open (its default is 5).
API_KEEP_ALIVE_S = 30

#: Scheduling niceness of the caption worker on a machine it shares with the API (nice(1)).
WORKER_NICENESS = 10
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: What the webhook worker logs once it consumes its queue (``worker.webhooks.tasks``).
WEBHOOK_WORKER_READY = "webhook retry mover started"


class PortTaken(RuntimeError):
    """The API's port is in use by another process, so the API could not listen on it."""


def bind_listening_socket(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A socket listening on ``host:port``, for uvicorn to take over with ``--fd``.

    Binding here rather than in uvicorn makes a taken port an error at once, and means the
    server that answers on the port afterwards is certainly the one this stack started:
    with ``--port``, uvicorn's failure shows only in its log while another server answers.

    Raises:
        PortTaken: something else listens on the port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # SO_REUSEADDR, as uvicorn sets it: connections of an earlier run in TIME_WAIT do not block
    # the port, while another listening socket still does (Linux socket(7)).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # uvicorn's --fd wraps the descriptor as AF_UNIX (socket.fromfd with a fixed family), so asyncio
    # never sets TCP_NODELAY on the connections it accepts, as it does for TCP: every answer after the
    # first on a kept-alive connection then waited out the client's delayed ACK, +40 ms
    # (bench/README.md, "Admission": idle /healthz p50 0.52 ms against 44). Linux copies the option
    # from the listener to them.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as exc:
        sock.close()
        raise PortTaken(
            f"port {port} on {host} is already in use ({exc.strerror}); stop what uses it, or pick another port (make run PORT=...)"
        ) from exc
    return sock


def redis_answers(url: str) -> bool:
    """True when a Redis server at ``url`` answers PING within half a second."""
    client = Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def http_ok(url: str) -> bool:
    """True when ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status) == 200
    except OSError:
        return False


class LocalStack:
    """Redis, a caption worker, a webhook worker and uvicorn, from this checkout's interpreter."""

    def __init__(
        self,
        log_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        api_port: int = 8000,
        redis_url: str | None = None,
        access_log: bool = False,
        webhooks: bool = True,
        worker_app: str = "worker",
        redis_persistence: bool = False,
        api_graceful_shutdown_s: float | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.webhooks = webhooks
        #: Celery app module of caption workers (crash tests pass one that can die on demand).
        self.worker_app = worker_app
        #: Append-only file synced every second, as docker-compose runs Redis (restart tests).
        self.redis_persistence = redis_persistence
        self.api_graceful_shutdown_s = api_graceful_shutdown_s
        self.api_port = api_port
        self.access_log = access_log
        self.redis_url = redis_url or f"redis://127.0.0.1:{free_port()}/0"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
        self.env["CAPTIONIZER_REDIS_URL"] = self.redis_url
        self.keys = Keys(self.env.get("CAPTIONIZER_KEY_PREFIX", "captionizer"))
        self.processes: list[ManagedProcess] = []
        self.worker: ManagedProcess | None = None
        self.webhook_worker: ManagedProcess | None = None
        self.redis: ManagedProcess | None = None
        self.api: ManagedProcess | None = None

    @property
    def api_url(self) -> str:
        """Base URL of the API."""
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, timeout_s: float = 180.0, before_api: Callable[[], None] | None = None) -> LocalStack:
        """Start what is missing, in order, each ready before the next; stop all on failure.

        ``before_api`` runs once Redis answers and before the API takes requests (``make run``
        puts the kept webhook secrets in place there). A taken API port fails first, in a second
        rather than after the model has loaded.
        """
        try:
            bind_listening_socket(self.api_port).close()
            self._start_redis_if_needed(timeout_s)
            if before_api is not None:
                before_api()
            self.worker = self.start_worker(timeout_s)
            if self.webhooks:
                self.webhook_worker = self.start_webhook_worker(timeout_s)
            self.api = self.start_api(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process this stack started, newest first."""
        while self.processes:
            self.processes.pop().stop()

    def start_worker(self, timeout_s: float = 180.0, name: str = "worker") -> ManagedProcess:
        """Start a caption worker and wait for its heartbeat (model loaded, warm)."""
        # Captions only: deliveries run in their own worker, so a hanging receiver never holds a caption thread.
        # Niced: here the API shares the cores with the model, and its requests are short and waited on,
        # while a batch only takes a little longer (`nice` execs, so the pid is the worker's). POST p99
        # under a saturated worker: 19.6 ms against 34-139 (bench/README.md, "End to end", embedded model).
        argv = [
            "nice", "-n", str(WORKER_NICENESS),
            sys.executable, "-m", "celery", "-A", self.worker_app, "worker",
            # Interactive jobs first: the worker consumes its queues in this order (worker.tasks).
            "-Q", f"{self.keys.caption_queue()},{self.keys.bulk_queue()}", "--loglevel", "INFO",
            "-n", f"{name}-{os.getpid()}@%h",
        ]  # fmt: skip
        worker = self._start(name, argv)
        heartbeat = self.keys.worker_heartbeat(f"{socket.gethostname()}:{worker.pid}")
        client = Redis.from_url(self.redis_url)
        try:
            worker.wait_until(lambda: bool(client.exists(heartbeat)), timeout_s=timeout_s, what="ready (model loaded)")
        finally:
            client.close()
        return worker

    def start_webhook_worker(self, timeout_s: float = 180.0, name: str = "webhooks") -> ManagedProcess:
        """Start the webhook worker (no model) and wait until it moves scheduled retries."""
        # Threads: deliveries wait on the network, and one process keeps the light worker light.
        argv = [
            sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", self.keys.webhook_queue(),
            "--pool", "threads", "--concurrency", "4", "--loglevel", "INFO",
            "-n", f"{name}-{os.getpid()}@%h",
        ]  # fmt: skip
        # Readiness is read from its log, so its log level must let that line through.
        worker = self._start(name, argv, env={"CAPTIONIZER_LOG_LEVEL": "INFO"})
        # The mover starts on Celery's worker_ready, once the worker consumes its queue.
        worker.wait_until(lambda: WEBHOOK_WORKER_READY in worker.log_tail(), timeout_s=timeout_s, what="ready")
        return worker

    def _start_redis_if_needed(self, timeout_s: float) -> None:
        if redis_answers(self.redis_url):
            return
        parts = urlsplit(self.redis_url)
        if parts.hostname not in _LOCAL_HOSTS:
            raise RuntimeError(f"nothing answers at {self.redis_url}, and it is not on this machine")
        self.start_redis(timeout_s)

    def start_redis(self, timeout_s: float = 60.0) -> ManagedProcess:
        """Start redis-server on this stack's port (again, after :meth:`stop_redis`) and wait for PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(REDIS_INSTALL_HINT)
        port = str(urlsplit(self.redis_url).port or 6379)
        argv = [binary, "--bind", "127.0.0.1", "--port", port, "--save", ""]
        if self.redis_persistence:
            data_dir = self.log_dir / "redis-data"
            data_dir.mkdir(parents=True, exist_ok=True)
            argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(data_dir)]
        else:
            argv += ["--appendonly", "no"]
        redis = self._start("redis", argv)
        # First in line, so stop() ends it last, after the processes that use it.
        self.processes.remove(redis)
        self.processes.insert(0, redis)
        redis.wait_until(lambda: redis_answers(self.redis_url), timeout_s=timeout_s, what="answering PING")
        self.redis = redis
        return redis

    def stop_redis(self) -> None:
        """Stop the Redis this stack started, as ``docker stop`` does (SIGTERM, so the AOF is flushed)."""
        if self.redis is None:
            raise RuntimeError("this stack did not start Redis")
        self.redis.stop()
        self.processes.remove(self.redis)
        self.redis = None

    def start_api(self, timeout_s: float = 60.0) -> ManagedProcess:
        """Start uvicorn on a socket bound here and wait until ``/readyz`` answers 200.

        Raises:
            PortTaken: the API's port is in use.
        """
        listener = bind_listening_socket(self.api_port)
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "api.main:create_app_from_env",
            "--fd",
            str(listener.fileno()),
            # Longer than clients keep an idle connection (httpx: 5 s, uvicorn's default too), so the client
            # drops it first. With equal timeouts a request sent as the server closes the connection is lost
            # ("Server disconnected without sending a response"), a flake seen in the integration tests.
            "--timeout-keep-alive",
            str(API_KEEP_ALIVE_S),
        ]
        if not self.access_log:
            argv.append("--no-access-log")
        if self.api_graceful_shutdown_s is not None:
            # uvicorn drains in-flight requests on SIGTERM, for at most this long.
            argv += ["--timeout-graceful-shutdown", str(self.api_graceful_shutdown_s)]
        try:
            api = self._start("api", argv, pass_fds=(listener.fileno(),))
        finally:
            # uvicorn holds its own copy now; keeping ours would let the port outlive the API.
            listener.close()
        api.wait_until(lambda: http_ok(f"{self.api_url}/readyz"), timeout_s=timeout_s, what="ready (/readyz)")
        return api

    def _start(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None, pass_fds: tuple[int, ...] = ()
    ) -> ManagedProcess:
        full_env = {**self.env, **(env or {})}
        process = ManagedProcess(
            name, argv, log_path=self.log_dir / f"{name}.log", env=full_env, cwd=REPO_ROOT, pass_fds=pass_fds
        )
        self.processes.append(process.start())
        return process
