"""One webhook POST: the signed Standard Webhooks headers, the egress-guarded session, and what the POST came to.

Never raises for network trouble: every outcome becomes an :class:`AttemptResult`, which
:mod:`worker.webhooks.deliverer` turns into the job's webhook record and the next retry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from standardwebhooks import Webhook

from shared.errors import UrlNotAllowed
from shared.settings import Settings
from shared.webhooks.delivery import WebhookDelivery
from worker.egress import make_egress_session

#: Makes the aiohttp session for one delivery; the egress guard's connect-time SSRF checks apply.
SessionFactory = Callable[[Settings], aiohttp.ClientSession]

#: Sent with every delivery, so receivers can tell our requests apart in their logs.
USER_AGENT = "Captionizer-Webhooks/0.1"
# Bounded: network errors can carry long messages, and the record is in every GET of the job.
_MAX_ERROR_CHARS = 200


def sign_headers(secrets: Sequence[str], webhook_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """Standard Webhooks headers for one attempt, signed with every secret.

    Several ``v1,<base64>`` signatures go space-separated in one header, as the
    specification prescribes for secret rotation; a receiver accepts any match.
    """
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
    }
    signatures = [Webhook(secret).sign(webhook_id, timestamp, body) for secret in secrets]
    if signatures:
        headers["webhook-signature"] = " ".join(signatures)
    return headers


@dataclass(frozen=True)
class AttemptResult:
    """What one POST came to: a status code, or an error before any answer."""

    status_code: int | None = None
    error: str | None = None
    #: The URL was refused by the SSRF checks; retrying would only be refused again.
    refused: bool = False

    @property
    def is_success(self) -> bool:
        """True for any 2xx answer."""
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def is_gone(self) -> bool:
        """True for 410 Gone: the receiver asks us to stop."""
        return self.status_code == 410


async def post_delivery(
    session: aiohttp.ClientSession, delivery: WebhookDelivery, headers: dict[str, str], timeout_s: float
) -> AttemptResult:
    """POST the delivery once and report what happened; never raises for network trouble."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        # Redirects are not followed: a receiver's Location would skip the checks
        # its URL passed at submit, and Standard Webhooks senders don't follow them.
        async with session.post(
            delivery.url, data=delivery.body.encode(), headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            return AttemptResult(status_code=response.status, error=None if response.ok else f"HTTP {response.status}")
    except UrlNotAllowed as exc:
        return AttemptResult(error=f"url_not_allowed: {exc.message}", refused=True)
    except TimeoutError:
        return AttemptResult(error=f"timed out after {timeout_s:g} s")
    except aiohttp.ClientError as exc:
        refusal = _find_refusal(exc)
        if refusal is not None:
            return AttemptResult(error=f"url_not_allowed: {refusal.message}", refused=True)
        return AttemptResult(error=f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS])


def _find_refusal(exc: BaseException) -> UrlNotAllowed | None:
    """The SSRF refusal aiohttp may have wrapped (a resolver's error becomes a connector error)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, UrlNotAllowed):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def make_webhook_session(settings: Settings) -> aiohttp.ClientSession:
    """The egress-guarded session one delivery POSTs through."""
    headers = {"user-agent": USER_AGENT, "accept": "*/*"}
    return make_egress_session(
        settings, headers=headers, timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_s)
    )
