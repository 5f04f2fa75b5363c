"""``/v1/webhooks/secret``: the caller's own webhook signing secret, and rotating it.

Replicate's convention: ``GET /v1/webhooks/secret`` answers ``{"key": "whsec_..."}``.
Each API key gets its own secret, made on first use, so one tenant can never
verify, or forge, another tenant's deliveries (docs/webhooks.md).
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import CurrentCaller, WebhookSecretStore
from api.http.auth import CALLER_ERRORS
from api.http.problems import problem_responses
from api.http.security import EDGE_ERRORS
from shared import errors

router = APIRouter(
    prefix="/v1/webhooks",
    tags=["webhooks"],
    responses=problem_responses(*CALLER_ERRORS, *EDGE_ERRORS, errors.QueueUnavailable),
)


class WebhookSecret(BaseModel):
    """The caller's current signing secret."""

    key: str = Field(description="Standard Webhooks secret (whsec_...): verify deliveries of your jobs with it.")


class RotatedWebhookSecret(WebhookSecret):
    """The new signing secret, and how long the replaced one keeps signing beside it."""

    previous_valid_for_s: int = Field(
        description="Seconds during which deliveries still carry a signature by the replaced secret too."
    )


@router.get("/secret", summary="Get your webhook signing secret")
async def get_webhook_secret(caller: CurrentCaller, secrets: WebhookSecretStore) -> WebhookSecret:
    """The secret that signs the webhooks of the caller's jobs (made on first use, then stable)."""
    return WebhookSecret(key=await secrets.current(caller.owner))


@router.post("/secret/rotate", summary="Rotate your webhook signing secret")
async def rotate_webhook_secret(caller: CurrentCaller, secrets: WebhookSecretStore) -> RotatedWebhookSecret:
    """Replace the caller's secret; deliveries are signed with both until the grace period ends."""
    key = await secrets.rotate(caller.owner)
    return RotatedWebhookSecret(key=key, previous_valid_for_s=secrets.grace_s)
