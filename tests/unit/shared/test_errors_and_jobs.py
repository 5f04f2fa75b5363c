"""Error codes are unique, stable and in one family each; job transitions never leave a final state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared import error_codes, errors
from shared.error_codes import all_error_classes, error_for_code
from shared.error_families import (
    FAMILIES,
    CapacityError,
    CaptionizerError,
    ConflictError,
    FetchError,
    InputError,
    ServiceFault,
)
from shared.jobs.model import ALLOWED_TRANSITIONS, FINAL_STATUSES, Job, JobPublic, JobStatus, new_job_id

# Each family's statuses: one handling per family, so one range each.
_FAMILY_STATUSES: dict[type[CaptionizerError], set[int]] = {
    InputError: {400, 401, 403, 404, 410, 413, 415, 422},
    FetchError: {502, 504},
    CapacityError: {429, 503, 504},
    ConflictError: {409},
    ServiceFault: {500, 504},
}

# The public codes and statuses as they were before the tree was regrouped (#16): codes are API.
_PUBLISHED = {
    "invalid_request": 422, "url_not_allowed": 400, "upload_too_large": 413, "unsupported_media_type": 415,
    "upload_expired": 410, "not_an_image": 415, "fetch_timeout": 504, "fetch_failed": 502, "image_too_large": 413,
    "image_corrupt": 422, "too_many_pixels": 413, "job_not_found": 404, "job_not_cancelable": 409,
    "idempotency_conflict": 422, "unauthorized": 401, "forbidden": 403, "rate_limited": 429,
    "queue_unavailable": 503, "queue_full": 503, "model_not_ready": 503, "worker_crashed": 500,
    "job_timeout": 504, "wait_timeout": 504, "internal_error": 500, "job_error": 409,
}  # fmt: skip


def test_every_published_code_keeps_its_status() -> None:
    for code, status in _PUBLISHED.items():
        assert error_codes.CLASSES_BY_CODE[code].status == status, code


def test_each_code_has_exactly_one_class() -> None:
    classes = all_error_classes()
    assert len({cls.code for cls in classes}) == len(classes)
    assert set(error_codes.CLASSES_BY_CODE.values()) == set(classes)


def test_a_second_class_with_a_taken_code_is_refused() -> None:
    class Impostor(InputError):
        code = "job_not_found"
        status = 404
        title = "x"

    with pytest.raises(TypeError, match="reuses the code 'job_not_found'"):
        error_codes._classes_by_code([errors.JobNotFound, Impostor])


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.code)
def test_each_class_is_in_exactly_one_family_with_that_familys_statuses(cls: type[CaptionizerError]) -> None:
    families = [family for family in FAMILIES if issubclass(cls, family)]
    assert len(families) == 1, families
    assert cls.status in _FAMILY_STATUSES[families[0]]
    assert cls.__doc__ and cls.title


@pytest.mark.parametrize("family", [CaptionizerError, *FAMILIES], ids=lambda cls: cls.__name__)
def test_families_are_never_raised(family: type[CaptionizerError]) -> None:
    with pytest.raises(TypeError, match="family"):
        family("x")


def test_capacity_errors_carry_a_retry_after_unless_told_to_poll() -> None:
    assert errors.QueueUnavailable().extra["retry_after_s"] == 5
    assert errors.QueueFull().extra["retry_after_s"] == 10
    assert errors.RateLimited(retry_after_s=3).extra["retry_after_s"] == 3
    assert "retry_after_s" not in errors.WaitTimedOut().extra


def test_a_recorded_code_rebuilds_its_class_and_an_unknown_one_is_internal() -> None:
    rebuilt = error_for_code("fetch_failed", "404 upstream", upstream_status=404)
    assert type(rebuilt) is errors.FetchFailed and rebuilt.extra == {"upstream_status": 404}
    assert type(error_for_code("no_such_code", "x")) is errors.InternalError


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


def test_every_code_is_documented_with_its_status_in_the_pipeline_docs() -> None:
    docs = (Path(__file__).resolve().parents[3] / "docs" / "pipeline.md").read_text(encoding="utf-8")
    rows = {match[0]: match[1] for match in re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", docs, flags=re.M)}
    for cls in all_error_classes():
        assert rows.get(cls.code) == str(cls.status), f"{cls.code} ({cls.status}) is not in docs/pipeline.md"
