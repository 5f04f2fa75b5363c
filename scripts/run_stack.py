"""``make run [PORT=8000]``: Redis, a caption worker, a webhook worker and the API on http://127.0.0.1:PORT,
for local use: anonymous access and private-network image URLs allowed.

Redis is a redis-server of its own on a free port, unless CAPTIONIZER_REDIS_URL names one: a Redis
that answers on 6379 may hold someone else's data, and Celery's queues would mix with theirs.
Whatever ends it (Ctrl-C, SIGTERM, SIGHUP when its terminal closes, or a SIGKILL of it or of
``make``), everything it started stops too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from scripts.processes import set_parent_death_signal
from scripts.stack import LocalStack

DEFAULT_API_PORT = 8000
#: Signals that stop the stack gracefully: Ctrl-C, `kill`, and the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Local use only: no API keys, and images on this machine or LAN may be fetched, also from the
# ports local development servers usually take (production allows 80 and 443 only).
LOCAL_ENV = {
    "CAPTIONIZER_ALLOW_ANONYMOUS": "true",
    "CAPTIONIZER_ALLOW_PRIVATE_NETWORKS": "true",
    "CAPTIONIZER_ALLOWED_PORTS": "80,443,3000,5000,8000,8080,8888,9000",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Start the stack, print where to look, wait for a stop signal, stop it."""
    args = _parse_args(argv)
    # The stop signals interrupt whatever runs, start-up included; SIGINT is set explicitly because
    # a shell that starts `make run` in the background hands it down ignored.
    interrupter = _Interrupter()
    for signum in STOP_SIGNALS:
        signal.signal(signum, interrupter)
    _stop_with_parent()
    redis_url = os.environ.get("CAPTIONIZER_REDIS_URL")
    log_dir = Path(tempfile.mkdtemp(prefix="captionizer-"))
    # The API's own port too, whatever PORT says: the banner's examples caption the samples it serves.
    local_env = {**LOCAL_ENV, "CAPTIONIZER_ALLOWED_PORTS": f"{LOCAL_ENV['CAPTIONIZER_ALLOWED_PORTS']},{args.port}"}
    env = {**local_env, **{k: v for k, v in os.environ.items() if k.startswith("CAPTIONIZER_")}}
    stack = LocalStack(log_dir, env=env, api_port=args.port, redis_url=redis_url, access_log=True)
    print(f"Starting Captionizer (logs in {log_dir}) ...", flush=True)
    try:
        stack.start()
        _print_welcome(stack, log_dir)
        _print_redis(stack, own=redis_url is None)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError) as exc:
        print(f"\nCould not start: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the stop short; a SIGKILL still can, and the children follow.
        interrupter.interrupted = True
        with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
            print("\nStopping ...", flush=True)
        stack.stop()
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=DEFAULT_API_PORT, help="the API's port on 127.0.0.1")
    return parser.parse_args(argv)


class _Interrupter:
    """The stop signals' handler: the first one interrupts the main thread, later ones are ignored.

    Closing a terminal sends SIGHUP to the group and, as ``make`` dies of it, SIGTERM (the parent-death
    signal) right after: the second must not interrupt the stop the first began.
    """

    def __init__(self) -> None:
        self.interrupted = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_with_parent() -> None:
    """Stop (gracefully, SIGTERM) when ``make`` or the shell that started this process dies, even by SIGKILL."""
    parent = os.getppid()
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        raise SystemExit("make run: its parent process is gone")


def _print_redis(stack: LocalStack, *, own: bool) -> None:
    whose = "its own redis-server, gone when it stops" if own else "from CAPTIONIZER_REDIS_URL"
    print(
        f"""  Redis:         {stack.redis_url} ({whose})
  Workers:       CAPTIONIZER_REDIS_URL={stack.redis_url} .venv/bin/celery -A worker inspect active""",
        flush=True,
    )


def _print_welcome(stack: LocalStack, log_dir: Path) -> None:
    url = stack.api_url
    print(
        f"""
Captionizer is running.
  Web page:      {url}/
  API docs:      {url}/docs
  Submit a job:  curl -s -X POST {url}/v1/jobs -H 'content-type: application/json' \\
                   -d '{{"image_url": "{url}/samples/red-circle.png"}}'
  Wait for it:   curl -s '{url}/v1/jobs/<id>?wait=30'
  Blog style:    curl -s '{url}/caption?url={url}/samples/red-circle.png'
  Webhooks:      signed with {local_webhook_secret(url)}
                 (verify with it; it is this machine's own, GET {url}/v1/webhooks/secret)
  Logs:          {log_dir}/api.log, {log_dir}/worker.log, {log_dir}/webhooks.log
Press Ctrl-C to stop.""",
        flush=True,
    )


def local_webhook_secret(api_url: str) -> str:
    """The anonymous owner's webhook signing secret, made on first use and kept in Redis."""
    with urllib.request.urlopen(f"{api_url}/v1/webhooks/secret", timeout=10) as response:
        secret: str = json.load(response)["key"]
    return secret


if __name__ == "__main__":
    sys.exit(main())
