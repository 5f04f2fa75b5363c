"""Prometheus metrics of the caption worker: per-job stage timings, per-batch size and generate time.

The same timings are recorded on each job (``Job.timings``); these are their
aggregates, served on ``worker_metrics_port`` by the caption worker.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Seconds, from a cached image read (~1 ms) to a slow CPU batch (~minutes).
_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)

JOBS_FINISHED = Counter(
    "captionizer_jobs_finished_total", "Jobs this worker ended, by final status and error code.", ["status", "code"]
)
JOB_QUEUE_WAIT = Histogram(
    "captionizer_job_queue_wait_seconds", "From job creation until a worker started it.", buckets=_SECONDS_BUCKETS
)
JOB_FETCH = Histogram(
    "captionizer_job_fetch_seconds", "Download (or upload read) and decode of one image.", buckets=_SECONDS_BUCKETS
)
JOB_BATCH_WAIT = Histogram(
    "captionizer_job_batch_wait_seconds", "From an image being ready until its batch began.", buckets=_SECONDS_BUCKETS
)
JOB_DURATION = Histogram(
    "captionizer_job_duration_seconds", "From job creation until it ended.", buckets=_SECONDS_BUCKETS
)
BATCH_GENERATE = Histogram("captionizer_batch_generate_seconds", "One batched generate call.", buckets=_SECONDS_BUCKETS)
BATCH_SIZE = Histogram("captionizer_batch_size", "Images captioned per generate call.", buckets=_BATCH_BUCKETS)
MODEL_LOADED = Gauge("captionizer_worker_model_loaded", "1 once the model is loaded and warmed up.")
MODEL_LOAD_SECONDS = Gauge("captionizer_model_load_seconds", "How long this worker took to load and warm up its model.")
GENERATE_THREAD_CPU = Counter(
    "captionizer_generate_thread_cpu_seconds",
    "CPU time of the thread that calls the model, per batch call (stacking, generate, decoding the tokens).",
)
