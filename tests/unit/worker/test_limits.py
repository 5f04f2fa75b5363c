"""The worker's own bounds: the memory ceiling asks for one warm shutdown, and the Celery settings it applies."""

from __future__ import annotations

import pytest
from celery import Celery, signals

from shared.settings import Settings
from worker.limits import MemoryCeiling, apply_worker_limits, resident_memory_mb


class Readings:
    def __init__(self, *values_mb: float | None) -> None:
        self.values = list(values_mb)
        self.shutdowns = 0

    def read(self) -> float | None:
        return self.values.pop(0)

    def shut_down(self) -> None:
        self.shutdowns += 1


def test_below_the_ceiling_nothing_happens() -> None:
    readings = Readings(100.0, 199.9)
    ceiling = MemoryCeiling(200, read_memory_mb=readings.read, shut_down=readings.shut_down)
    assert not ceiling.check() and not ceiling.check()
    assert readings.shutdowns == 0


def test_past_the_ceiling_one_warm_shutdown_is_requested() -> None:
    readings = Readings(250.0, 300.0)
    ceiling = MemoryCeiling(200, read_memory_mb=readings.read, shut_down=readings.shut_down)
    assert ceiling.check()
    assert not ceiling.check()  # the shutdown is under way; the next task's end changes nothing
    assert readings.shutdowns == 1


@pytest.mark.parametrize("reading", [None, 10_000.0])
def test_a_zero_ceiling_or_no_reading_never_shuts_down(reading: float | None) -> None:
    readings = Readings(reading)
    assert not MemoryCeiling(0, read_memory_mb=readings.read, shut_down=readings.shut_down).check()
    assert not MemoryCeiling(1, read_memory_mb=lambda: None, shut_down=readings.shut_down).check()
    assert readings.shutdowns == 0


def test_this_process_memory_is_read_from_proc() -> None:
    used_mb = resident_memory_mb()
    assert used_mb is not None and 10 < used_mb < 100_000


def test_worker_limits_retry_redis_forever() -> None:
    app = Celery("t", set_as_current=False)
    ceiling = apply_worker_limits(app, Settings(worker_max_memory_mb=512))
    try:
        assert app.conf.broker_connection_max_retries is None
        assert ceiling.limit_mb == 512
    finally:
        signals.task_postrun.disconnect(ceiling.check)
