"""A real webhook receiver for tests: aiohttp on loopback, in a thread, verifying every signature.

Each request is verified with the ``standardwebhooks`` library (the check the docs
tell users to run). What it answers is scripted per URL, so one receiver serves a
whole session without tests stepping on each other: ``url_for(503, 503)`` fails the
first two attempts of each event (counted by ``webhook-id``) and then answers 200;
``HANG`` holds the request until the receiver releases its hangs, or until the sender
gives up (its handler is cancelled then), so ``hanging`` counts attempts really in flight.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

#: Scripted answer that holds the request until :meth:`WebhookReceiver.release_hangs` (then 410).
HANG = "hang"
#: Scripted answer that holds the request like HANG, then answers 200 once released.
HOLD = "hold"
#: Signing secrets of the test stack: the receiver knows only the newer one (rotation in progress).
OLD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"

Answer = int | str


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    #: The verified, parsed payload; None when the signature did not verify.
    payload: dict[str, Any] | None
    answer: str
    #: Wall-clock arrival (epoch seconds): comparable with the due times the worker records.
    at_epoch_s: float


class WebhookReceiver:
    """Serves ``POST /hook`` on 127.0.0.1 from a background thread."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.received: list[Received] = []
        self.hanging = 0
        #: The most requests held at once since the last reset.
        self.peak_hanging = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped = asyncio.Event()
        self._released = asyncio.Event()
        self._thread = threading.Thread(target=self._serve, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def url_for(self, *answers: Answer, then: Answer = 200) -> str:
        """A URL whose n-th attempt of each event gets ``answers[n]``, and ``then`` after them."""
        query = {"answers": ",".join(str(answer) for answer in answers), "then": str(then)}
        return f"{self.url}?{urlencode(query)}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        try:
            payload = self.webhook.verify(body, headers)
        except WebhookVerificationError:
            payload = None
        answer = self._scripted_answer(request, headers.get("webhook-id", ""))
        self.received.append(Received(headers, body, payload, answer, time.time()))
        if answer in (HANG, HOLD):
            return await self._hang(200 if answer == HOLD else 410)
        return web.Response(status=int(answer))

    def _scripted_answer(self, request: web.Request, webhook_id: str) -> str:
        answers = [answer for answer in request.query.get("answers", "").split(",") if answer]
        attempt = sum(1 for r in self.received if r.headers.get("webhook-id") == webhook_id)
        return answers[attempt] if attempt < len(answers) else request.query.get("then", "200")

    async def _hang(self, then: int) -> web.Response:
        self.hanging += 1
        self.peak_hanging = max(self.peak_hanging, self.hanging)
        try:
            await self._released.wait()
        finally:
            self.hanging -= 1
        # HANG: gone, so the released deliveries stop instead of coming back to hang again.
        return web.Response(status=then)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        # handler_cancellation: a sender that times out ends its held request here too.
        runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        self._loop.run_until_complete(self._stopped.wait())
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the webhook receiver did not start within 60 s")

    def stop(self) -> None:
        self.release_hangs()
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)

    def release_hangs(self) -> None:
        """Answer every held request, and every later ``HANG``/``HOLD``, at once (410/200)."""
        self._loop.call_soon_threadsafe(self._released.set)

    def reset(self) -> None:
        """Forget what was received, and hang again on ``HANG``."""
        self.received = []
        self.peak_hanging = 0
        self._loop.call_soon_threadsafe(self._released.clear)

    def for_job(self, job_id: str) -> list[Received]:
        """Verified requests about one job (the session's receiver hears every test's jobs)."""
        return [r for r in self.received if r.payload is not None and r.payload["data"]["id"] == job_id]

    def wait_for(self, predicate: Callable[[], bool], deadline_s: float = 30.0) -> None:
        """Poll until ``predicate()`` holds (waits on state, with a deadline)."""
        end = time.monotonic() + deadline_s
        while not predicate():
            if time.monotonic() > end:
                raise AssertionError(f"condition not met in {deadline_s} s; received {len(self.received)} requests")
            time.sleep(0.05)


@contextmanager
def running_receiver(secret: str) -> Iterator[WebhookReceiver]:
    """A started receiver, stopped on exit."""
    receiver = WebhookReceiver(secret)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
