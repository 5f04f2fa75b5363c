"""bench/gpu_summary.py: the figures of a GPU run, end to end against raw at the same batch, and the target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.gpu_summary import summarize


def _pipeline(batch_size: int, items_per_s: float) -> dict[str, Any]:
    return {
        "batch_size": batch_size,
        "bulk": {
            "items_per_s": items_per_s, "accelerator_busy_fraction": 0.9,
            "interactive_start_delay_ms": {"p50": 10.0, "p99": 40.0, "max": 50.0},
            "interactive_p99_start_delay_in_batches": 0.5, "cpu_ms_per_item": {"worker": 1.0},
        },
        "baseline_singles": {"jobs_per_s": 50.0, "cpu_ms_per_job_api_worker_redis": 4.0},
        "decode_capacity": {"images_per_s": 3000.0},
    }  # fmt: skip


def _raw(device: str) -> dict[str, Any]:
    return {"device": device, "dtype": "float16", "images_per_s_by_batch": {"64": 1500.0, "128": 2000.0},
            "best_batch_size": 128, "preprocess_images_per_s_one_thread": 300.0}  # fmt: skip


def _write(out: Path, **files: dict[str, Any]) -> Path:
    for name, content in files.items():
        (out / f"{name}.json").write_text(json.dumps(content))
    return out


def test_end_to_end_is_compared_with_raw_at_the_same_batch(tmp_path: Path) -> None:
    figures = summarize(_write(tmp_path, raw=_raw("NVIDIA H100 80GB HBM3"), pipeline=_pipeline(128, 1200.0)))
    assert figures["e2e_over_raw_at_same_batch"] == 0.6
    assert figures["target_1000_images_per_s_met"] is True
    assert figures["missing"] == ["env"]


def test_below_the_target_is_reported_as_not_met(tmp_path: Path) -> None:
    figures = summarize(_write(tmp_path, raw=_raw("NVIDIA H100 80GB HBM3"), pipeline=_pipeline(64, 900.0)))
    assert figures["target_1000_images_per_s_met"] is False
    assert figures["e2e_over_raw_at_same_batch"] == 0.6


def test_the_cpu_dry_run_claims_nothing_about_the_gpu_target(tmp_path: Path) -> None:
    figures = summarize(_write(tmp_path, raw=_raw("cpu"), pipeline=_pipeline(128, 10.0)))
    assert not any(name.startswith("target_") for name in figures)


def test_a_broken_file_counts_as_missing(tmp_path: Path) -> None:
    (tmp_path / "raw.json").write_text("{not json")
    assert summarize(tmp_path)["missing"] == ["env", "raw", "pipeline"]
