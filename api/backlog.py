"""Admission beyond ``max_queue_depth``: POST answers 503 ``queue_full`` with Retry-After.

The check itself runs inside the job store's create script (:data:`shared.job_scripts.CREATE_LUA`),
so it costs a submission no round trip of its own and no job is stored past the limit;
:func:`shared.shares.queue_full` is the refusal.
"""

from __future__ import annotations

from shared.shares import QUEUE_FULL_RETRY_AFTER_S

__all__ = ["QUEUE_FULL_RETRY_AFTER_S"]
