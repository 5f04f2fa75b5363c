"""Redelivery after a worker dies: the visibility timeout and how often kombu sweeps for expired messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.broker.config import celery_config, visibility_timeout_s
from shared.settings import Settings


def test_by_default_redelivery_waits_three_time_limits_and_at_least_five_minutes() -> None:
    assert visibility_timeout_s(Settings(job_time_limit_s=60)) == 300
    assert visibility_timeout_s(Settings(job_time_limit_s=200)) == 600


def test_the_redelivery_timeout_can_be_set_and_the_sweep_follows_it() -> None:
    options = celery_config(Settings(job_time_limit_s=5, redelivery_timeout_s=20))["broker_transport_options"]
    assert options["visibility_timeout"] == 20
    # Swept every tenth of the timeout, on every call: a dead worker's jobs are back within 1.1 x 20 s.
    assert options["unacked_restore_interval"] == 2 and options["unacked_restore_throttle"] == 1


def test_a_redelivery_timeout_within_the_job_time_limit_is_refused() -> None:
    with pytest.raises(ValidationError, match="redelivery_timeout_s must exceed job_time_limit_s"):
        Settings(job_time_limit_s=30, redelivery_timeout_s=30)


def test_tasks_are_acknowledged_late_and_requeued_when_their_worker_is_lost() -> None:
    config = celery_config(Settings())
    assert config["task_acks_late"] is True and config["task_reject_on_worker_lost"] is True


def test_task_events_are_off_unless_asked_for() -> None:
    assert celery_config(Settings())["worker_send_task_events"] is False
    assert celery_config(Settings())["task_send_sent_event"] is False
    on = celery_config(Settings(task_events=True))
    assert on["worker_send_task_events"] is True and on["task_send_sent_event"] is True
