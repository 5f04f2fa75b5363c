"""One line per figure of a ``bench/gpu.sh`` run, from the JSON its steps left in OUT (any of them may be missing).

``python -m bench.gpu_summary OUT`` writes ``OUT/summary.txt`` (the lines) and ``OUT/summary.json`` (the
same figures by name), including the end-to-end rate against the raw model's at the same batch size
and token count, and the mission's target: 1,000 images/s end to end per H100 for git-base in fp16.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: The mission's target for git-base in fp16 on one H100, end to end.
TARGET_IMAGES_PER_S = 1000


def _load(out: Path, name: str) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None
    return loaded


def env_figures(env: dict[str, Any]) -> dict[str, Any]:
    git = env.get("git") or {}
    return {
        "gpu": env.get("gpu"),
        "torch": env.get("torch"),
        "transformers": env.get("transformers"),
        "redis_server": env.get("redis_server"),
        "kit_problems": len(env.get("kit_problems", [])),
        "embedded_git_exact_match": git.get("exact_match"),
    }


def raw_figures(raw: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {
        f"raw_{raw['dtype']}_batch_{size}_images_per_s": rate for size, rate in raw["images_per_s_by_batch"].items()
    }
    figures["raw_best_batch_size"] = raw["best_batch_size"]
    figures.update({key: value for key, value in raw.items() if key.endswith("_at_best_batch")})
    figures["preprocess_images_per_s_one_thread"] = raw["preprocess_images_per_s_one_thread"]
    return figures


def pipeline_figures(pipeline: dict[str, Any], raw: dict[str, Any] | None) -> dict[str, Any]:
    bulk, singles = pipeline["bulk"], pipeline["baseline_singles"]
    figures: dict[str, Any] = {
        "pipeline_batch_size": pipeline["batch_size"],
        "e2e_bulk_images_per_s": bulk["items_per_s"],
        "accelerator_busy_fraction": bulk["accelerator_busy_fraction"],
        "interactive_start_delay_ms_p50": bulk["interactive_start_delay_ms"]["p50"],
        "interactive_start_delay_ms_p99": bulk["interactive_start_delay_ms"]["p99"],
        "interactive_p99_start_delay_in_batches": bulk["interactive_p99_start_delay_in_batches"],
        "cpu_ms_per_bulk_item": bulk["cpu_ms_per_item"],
        "single_jobs_per_s": singles["jobs_per_s"],
        "single_job_cpu_ms_api_worker_redis": singles["cpu_ms_per_job_api_worker_redis"],
        "decode_capacity_images_per_s": pipeline["decode_capacity"]["images_per_s"],
    }
    if raw is not None:
        same_batch = raw["images_per_s_by_batch"].get(str(pipeline["batch_size"]))
        if same_batch:
            figures["e2e_over_raw_at_same_batch"] = round(bulk["items_per_s"] / same_batch, 3)
    if raw is None or raw["device"] != "cpu":  # the target is a GPU's; the CPU dry run proves the procedure only
        figures[f"target_{TARGET_IMAGES_PER_S}_images_per_s_met"] = bulk["items_per_s"] >= TARGET_IMAGES_PER_S
    return figures


def summarize(out: Path) -> dict[str, Any]:
    """Every figure found in ``out``'s JSON files; a missing or broken file is named under ``missing``."""
    env, raw, pipeline = (_load(out, name) for name in ("env.json", "raw.json", "pipeline.json"))
    figures: dict[str, Any] = {}
    missing = [name for name, loaded in (("env", env), ("raw", raw), ("pipeline", pipeline)) if loaded is None]
    if env is not None:
        figures.update(env_figures(env))
    if raw is not None:
        figures.update(raw_figures(raw))
    if pipeline is not None:
        figures.update(pipeline_figures(pipeline, raw))
    figures["missing"] = missing
    return figures


def main() -> None:
    out = Path(sys.argv[1])
    figures = summarize(out)
    (out / "summary.json").write_text(json.dumps(figures, indent=2) + "\n")
    (out / "summary.txt").write_text("".join(f"{name}: {value}\n" for name, value in figures.items()))


if __name__ == "__main__":
    main()
