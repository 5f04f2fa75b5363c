"""``make run [PORT=8000]``: Redis, a caption worker, a webhook worker and the API on http://127.0.0.1:PORT,
for local use: anonymous access (unless CAPTIONIZER_ALLOW_ANONYMOUS=false) and private-network image URLs allowed.

Image and webhook URLs may use :data:`LOCAL_PORTS` and the API's own port; the ports in
CAPTIONIZER_ALLOWED_PORTS are added to those. Each owner's webhook signing secret is kept in this
clone (:mod:`scripts.local_secrets`), so it stays the same from one start to the next.

Redis is a redis-server of its own on a free port, unless CAPTIONIZER_REDIS_URL names one: a Redis
that answers on 6379 may hold someone else's data, and Celery's queues would mix with theirs.
Whatever ends it (Ctrl-C, SIGTERM, SIGHUP when its terminal closes, or a SIGKILL of it or of
``make``), everything it started stops too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from pydantic import ValidationError
from redis import Redis

from api.http.auth import ANONYMOUS_OWNER, owner_of, read_key_hashes_file
from scripts.local_secrets import SECRETS_FILE_NAME, STATE_DIR_NAME, LocalWebhookSecrets
from scripts.processes import set_parent_death_signal
from scripts.stack import REPO_ROOT, LocalStack
from shared.settings import Settings

DEFAULT_API_PORT = 8000
#: Signals that stop the stack gracefully: Ctrl-C, `kill`, and the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Ports image and webhook URLs may use under ``make run``: the web defaults and those local
#: development servers usually take (production allows 80 and 443 only). The API's own port and
#: CAPTIONIZER_ALLOWED_PORTS are added to them.
LOCAL_PORTS = (80, 443, 3000, 5000, 8000, 8080, 8888, 9000)
# Local use only: no API keys, and images on this machine or LAN may be fetched.
LOCAL_ENV = {
    "CAPTIONIZER_ALLOW_ANONYMOUS": "true",
    "CAPTIONIZER_ALLOW_PRIVATE_NETWORKS": "true",
}
#: Where the clone keeps ``make run``'s state (git ignores it).
STATE_DIR = REPO_ROOT / STATE_DIR_NAME


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
    env = stack_env(os.environ, args.port)
    try:
        settings = _settings_of(env)
    except (ValidationError, ValueError) as exc:
        print(f"Could not start: the CAPTIONIZER_ settings are not valid:\n{exc}", file=sys.stderr)
        return 1
    log_dir = Path(tempfile.mkdtemp(prefix="captionizer-"))
    stack = LocalStack(log_dir, env=env, api_port=args.port, redis_url=redis_url, access_log=True)
    secrets = LocalWebhookSecrets(args.state_dir / SECRETS_FILE_NAME)
    owners = _owners(settings)
    print(f"Starting Captionizer (logs in {log_dir}) ...", flush=True)
    try:
        stack.start(before_api=lambda: _install_secrets(stack, secrets, owners, reset=args.reset_webhook_secret))
        _print_welcome(stack, log_dir, settings, secrets)
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
        if stack.api is not None:  # it started: keep a rotation made through the API
            _keep_secrets(stack, secrets, owners)
        stack.stop()
    return 0


def stack_env(environ: Mapping[str, str], port: int) -> dict[str, str]:
    """The CAPTIONIZER_ environment of the stack: :data:`LOCAL_ENV`, then the caller's, with the ports added up."""
    env = {**LOCAL_ENV, **{k: v for k, v in environ.items() if k.startswith("CAPTIONIZER_")}}
    extra = [int(p) for p in env.get("CAPTIONIZER_ALLOWED_PORTS", "").replace(" ", "").split(",") if p]
    # The API's own port always: the banner's examples caption the samples it serves.
    env["CAPTIONIZER_ALLOWED_PORTS"] = ",".join(str(p) for p in sorted({*LOCAL_PORTS, *extra, port}))
    return env


def _settings_of(env: Mapping[str, str]) -> Settings:
    """The Settings the stack's processes will build from ``env`` (to learn its keys and key prefix)."""
    fields = {name[len("CAPTIONIZER_") :].lower(): value for name, value in env.items()}
    return Settings.model_validate({name: value for name, value in fields.items() if name in Settings.model_fields})


def _owners(settings: Settings) -> list[str]:
    """The owners whose webhook secrets the clone keeps: ``anonymous`` where served, and each configured key."""
    digests = list(settings.api_key_hashes)
    if settings.api_key_hashes_file:
        digests += read_key_hashes_file(settings.api_key_hashes_file)
    owners = [ANONYMOUS_OWNER] if settings.allow_anonymous else []
    return owners + sorted({owner_of(digest) for digest in digests})


def _install_secrets(stack: LocalStack, secrets: LocalWebhookSecrets, owners: list[str], *, reset: bool) -> None:
    client = Redis.from_url(stack.redis_url)
    try:
        secrets.install(client, stack.keys, owners, reset=reset)
    finally:
        client.close()


def _keep_secrets(stack: LocalStack, secrets: LocalWebhookSecrets, owners: list[str]) -> None:
    client = Redis.from_url(stack.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        secrets.keep_current(client, stack.keys, owners)
    finally:
        client.close()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=DEFAULT_API_PORT, help="the API's port on 127.0.0.1")
    parser.add_argument(
        "--reset-webhook-secret",
        action="store_true",
        help="sign webhooks with new secrets from now on (and keep those)",
    )
    parser.add_argument(
        "--state-dir", type=Path, default=STATE_DIR, help=argparse.SUPPRESS
    )  # tests: a clone of its own
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


def _print_welcome(stack: LocalStack, log_dir: Path, settings: Settings, secrets: LocalWebhookSecrets) -> None:
    url = stack.api_url
    # With keys on, every example needs one; the banner never holds a key itself.
    auth = "" if settings.allow_anonymous else " -H 'Authorization: Bearer <your key>'"
    if settings.allow_anonymous:
        webhooks = f"""signed with {secrets.load()[ANONYMOUS_OWNER]}
                 (kept in {secrets.path}; the same at every start, new with make run RESET_WEBHOOK_SECRET=1)"""
    else:
        webhooks = f"""each key signs with its own secret: curl -s{auth} {url}/v1/webhooks/secret
                 (kept in {secrets.path}; the same at every start, new with make run RESET_WEBHOOK_SECRET=1)"""
    whose = "its own redis-server, gone when it stops" if stack.redis is not None else "from CAPTIONIZER_REDIS_URL"
    print(
        f"""
Captionizer is running{"" if settings.allow_anonymous else " with API keys (CAPTIONIZER_ALLOW_ANONYMOUS=false)"}.
  Web page:      {url}/
  API docs:      {url}/docs
  Submit a job:  curl -s -X POST {url}/v1/jobs{auth} -H 'content-type: application/json' \\
                   -d '{{"image_url": "{url}/samples/red-circle.png"}}'
  Wait for it:   curl -s{auth} '{url}/v1/jobs/<id>?wait=30'
  Blog style:    curl -s{auth} '{url}/caption?url={url}/samples/red-circle.png'
  Webhooks:      {webhooks}
  Image URLs:    private networks, ports {", ".join(str(port) for port in settings.allowed_ports)}
  Logs:          {log_dir}/api.log, {log_dir}/worker.log, {log_dir}/webhooks.log
  Redis:         {stack.redis_url} ({whose})
  Workers:       CAPTIONIZER_REDIS_URL={stack.redis_url} .venv/bin/celery -A worker inspect active
Press Ctrl-C to stop.""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
