"""``make run``: Redis (the one at CAPTIONIZER_REDIS_URL, or a local redis-server), a caption worker,
a webhook worker and the API on http://127.0.0.1:8000, for local use: anonymous access and private-network
image URLs allowed.
Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from scripts.stack import LocalStack

API_PORT = 8000
# Local use only: no API keys, and images on this machine or LAN may be fetched, also from the
# ports local development servers usually take (production allows 80 and 443 only).
LOCAL_ENV = {
    "CAPTIONIZER_ALLOW_ANONYMOUS": "true",
    "CAPTIONIZER_ALLOW_PRIVATE_NETWORKS": "true",
    "CAPTIONIZER_ALLOWED_PORTS": "80,443,3000,5000,8000,8080,8888,9000",
}


def main() -> int:
    """Start the stack, print where to look, wait for Ctrl-C (or SIGTERM), stop it."""
    redis_url = os.environ.get("CAPTIONIZER_REDIS_URL", "redis://127.0.0.1:6379/0")
    log_dir = Path(tempfile.mkdtemp(prefix="captionizer-"))
    env = {**LOCAL_ENV, **{k: v for k, v in os.environ.items() if k.startswith("CAPTIONIZER_")}}
    stack = LocalStack(log_dir, env=env, api_port=API_PORT, redis_url=redis_url, access_log=True)
    stopping = threading.Event()
    # Ctrl-C and SIGTERM both stop the stack; SIGINT is set explicitly because a shell that starts
    # `make run` in the background hands it down ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    print(f"Starting Captionizer (Redis at {redis_url}; logs in {log_dir}) ...", flush=True)
    try:
        stack.start()
        _print_welcome(stack, log_dir)
        stopping.wait()
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError) as exc:
        print(f"\nCould not start: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\nStopping ...", flush=True)
        stack.stop()
    return 0


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
  Logs:          {log_dir}/api.log, {log_dir}/worker.log, {log_dir}/webhooks.log
Press Ctrl-C to stop.""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
