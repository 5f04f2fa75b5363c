"""The caption worker app for reliability tests: the real one, plus a job that kills its process.

Started as ``celery -A tests.integration.crashing_worker worker``. A job whose prompt is
:data:`POISON_PROMPT` ends the process with ``os._exit`` once it is running, as a native
crash or the OOM killer would, so production code carries no test backdoor.
"""

from __future__ import annotations

import os
from typing import Any

from worker.captioning import pipeline
from worker.main import celery_app

#: The prompt that makes a job kill its worker.
POISON_PROMPT = "poison: this job kills its worker"
#: Exit status of a worker the poison killed (SIGKILL's 128 + 9, as the OOM killer leaves it).
POISON_EXIT_CODE = 137

_caption = pipeline.JobRunner._caption


async def _caption_or_die(self: pipeline.JobRunner, job: Any, *args: Any) -> Any:
    if job.prompt == POISON_PROMPT:
        os._exit(POISON_EXIT_CODE)
    return await _caption(self, job, *args)


pipeline.JobRunner._caption = _caption_or_die  # type: ignore[method-assign]

#: What ``celery -A`` looks for.
app = celery_app
