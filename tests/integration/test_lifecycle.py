"""A job's life on the real stack: canceled, expired, observed through /metrics and the JSON logs."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from shared.jobs.model import JobStatus
from tests.integration.chaos import Chaos, wait_until
from tests.servers import HostileServer
from tests.stack import RELIABILITY_WORKER_THREADS

#: Slow jobs that fill every pool thread of the worker.
WORKER_SLOTS = RELIABILITY_WORKER_THREADS


def occupy_worker(chaos: Chaos, image_server: HostileServer) -> list[str]:
    """Jobs that hold every thread of the worker for a few seconds, so the next job waits in Redis."""
    busy = [chaos.submit(image_url=image_server.url("/delayed/3")) for _ in range(WORKER_SLOTS)]
    wait_until(lambda: chaos.count_in(busy, "running") == WORKER_SLOTS, timeout_s=60, what="a fully busy worker")
    return busy


def cancel(api: httpx.Client, job_id: str) -> httpx.Response:
    return api.post(f"/v1/jobs/{job_id}/cancel")


def test_canceled_jobs_never_run_or_have_their_result_discarded(chaos: Chaos, image_server: HostileServer) -> None:
    busy = occupy_worker(chaos, image_server)
    waiting = chaos.submit(image_url=image_server.url("/image/shape.png"))
    running = busy[0]
    assert cancel(chaos.api, waiting).json()["status"] == "canceled"
    assert cancel(chaos.api, running).json()["status"] == "canceled"
    jobs = chaos.wait_all_final([*busy, waiting], timeout_s=60)
    wait_until(
        lambda: any(r["job_id"] == waiting for r in chaos.log_events("worker", "job skipped")),
        timeout_s=30,
        what="the canceled job's task to be skipped",
    )
    never_ran = jobs[waiting]
    assert never_ran.status is JobStatus.CANCELED and never_ran.started_at is None and never_ran.attempts == 0
    discarded = jobs[running]
    assert discarded.status is JobStatus.CANCELED and discarded.caption is None and discarded.started_at is not None
    assert any(r["job_id"] == running for r in chaos.log_events("worker", "result discarded"))
    finished = cancel(chaos.api, busy[1])
    assert finished.status_code == 409 and finished.json()["code"] == "job_not_cancelable"


def test_a_job_not_started_by_its_deadline_expires_without_running(chaos: Chaos, image_server: HostileServer) -> None:
    busy = occupy_worker(chaos, image_server)
    # Its webhook URL is never called here (no webhook worker); the event is queued for one.
    late = chaos.submit(
        image_url=image_server.url("/image/shape.png"), deadline_s=1, webhook_url=image_server.url("/status/204")
    )
    jobs = chaos.wait_all_final([*busy, late], timeout_s=60)
    expired = jobs[late]
    assert expired.status is JobStatus.EXPIRED and expired.started_at is None and expired.attempts == 0
    assert expired.caption is None and expired.finished_at is not None
    assert expired.deadline_at is not None and expired.finished_at > expired.deadline_at
    assert expired.webhook is not None and expired.webhook.event == "job.expired"
    assert chaos.redis.llen(chaos.stack.keys.webhook_queue()) >= 1


def test_every_process_logs_json_lines_and_metrics_count_the_jobs(chaos: Chaos, image_server: HostileServer) -> None:
    job_ids = [chaos.submit(image_url=image_server.url("/image/shape.png")) for _ in range(3)]
    chaos.wait_all_final(job_ids, timeout_s=60)
    for process, events in (("api", {"job queued"}), ("worker", {"job started", "job ended"})):
        log = (chaos.stack.log_dir / f"{process}.log").read_text()
        lines = [line for line in log.splitlines() if job_ids[0] in line]
        records = [json.loads(line) for line in lines]  # every line about the job is one JSON event
        assert events <= {record["event"] for record in records if record.get("job_id") == job_ids[0]}
    [ended] = [r for r in chaos.log_events("worker", "job ended") if r["job_id"] == job_ids[0]]
    assert ended["status"] == "succeeded" and ended["model_batch_id"] and ended["duration_s"] > 0
    metrics = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(chaos.api.get("/metrics").text)
        for sample in family.samples
    }
    assert metrics[("captionizer_jobs_total", (("status", "succeeded"),))] >= 3
    assert metrics[("captionizer_workers_ready", ())] == 1
    assert next(value for (name, _), value in metrics.items() if name == "captionizer_model_load_seconds_max") > 0
