"""Refusing, at submit, a prompt the loaded model surely cannot take (limits published by the workers)."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from shared.intake.model_limits import check_prompt_fits, read_model_limits
from shared.jobs.store import REDIS_ERRORS, JobStore

logger = logging.getLogger(__name__)


async def check_prompt_against_model(store: JobStore, prompt: str | None) -> None:
    """Raise PromptTooLong when ``prompt`` surely exceeds the published model limits.

    Without published limits (no worker up yet) or without Redis, the job goes on: the worker checks the
    prompt with the real tokenizer and fails the job with the same code, and a Redis outage fails the
    submission a moment later where it writes.
    """
    if not prompt:
        return
    try:
        limits = await read_model_limits(store.redis, store.keys)
    except (*REDIS_ERRORS, RedisError):
        logger.warning("could not read the model limits; the worker will check the prompt", exc_info=True)
        return
    check_prompt_fits(prompt, limits)
