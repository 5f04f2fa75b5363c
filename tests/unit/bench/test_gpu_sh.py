"""bench/gpu.sh's procedure, with its Python steps replaced by a stub: each step is bounded and reported, a
failing step leaves the others' JSON, and the summary prints one line per figure it finds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("timeout") is None, reason="coreutils' timeout is missing")

RAW = {
    "model": "git-base architecture, random weights", "device": "stub", "dtype": "float16", "new_tokens": 20,
    "images_per_s_by_batch": {"16": 100.0, "32": 180.0}, "best_batch_size": 32,
    "preprocess_images_per_s_one_thread": 400.0,
}  # fmt: skip

# The image's python3 as gpu.sh calls it: pip and the env step fail, the raw sweep writes its JSON, the
# pipeline fails; anything else (the summary, gpu.sh's one-liners) runs on the real interpreter.
STUB = """#!/usr/bin/env bash
case "$1 $2" in
  "-m pip") echo "pip: no wheels here" >&2; exit 1 ;;
  "-m bench.gpu_env") echo "env: no GPU" >&2; exit 3 ;;
  "-m bench.gpu_model") while [[ $# -gt 0 && $1 != --json ]]; do shift; done; cat RAW_FILE >"$2"; exit 0 ;;
  "-m bench.bulk") echo "bulk: broke" >&2; exit 5 ;;
esac
exec REAL_PYTHON "$@"
"""


def run_gpu_sh(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    raw_file = tmp_path / "raw-source.json"
    raw_file.write_text(json.dumps(RAW))
    stub = tmp_path / "python3"
    stub.write_text(STUB.replace("RAW_FILE", str(raw_file)).replace("REAL_PYTHON", sys.executable))
    stub.chmod(0o755)
    kit = tmp_path / "kit"
    (kit / "wheels").mkdir(parents=True)
    (kit / "manifest.json").write_text(json.dumps({"redis_binary": "bin/valkey-server", "carried": {}}))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(stub), "GPU_KIT": str(kit), "BUDGET_S": "200"}
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "bench" / "gpu.sh"), str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done, out


def test_a_failing_step_leaves_the_other_steps_json_and_the_run_fails(tmp_path: Path) -> None:
    done, out = run_gpu_sh(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert json.loads((out / "raw.json").read_text()) == RAW
    assert not (out / "env.json").exists() and not (out / "pipeline.json").exists()
    assert "failed steps: kit env pipeline" in done.stdout
    for step, code in (("kit", 1), ("env", 3), ("raw", 0), ("pipeline", 5), ("summary", 0)):
        assert f"step {step}: exit {code} in" in done.stdout


def test_the_summary_prints_one_line_per_figure_it_found(tmp_path: Path) -> None:
    done, out = run_gpu_sh(tmp_path)
    lines = (out / "summary.txt").read_text().splitlines()
    assert "raw_float16_batch_32_images_per_s: 180.0" in lines
    assert "raw_best_batch_size: 32" in lines
    assert "missing: ['env', 'pipeline']" in lines
    assert all(line in done.stdout for line in lines)
    # The pipeline ran at the batch the sweep did best at.
    assert "--batch-size 32" in (out / "log.txt").read_text()


def test_every_file_it_leaves_fits_the_device_tools_limits(tmp_path: Path) -> None:
    _done, out = run_gpu_sh(tmp_path)
    files = [path for path in out.rglob("*") if path.is_file()]
    # At most 8 files come back, each under 16 MiB, named in letters, digits, '.', '_' and '-'.
    assert 0 < len(files) <= 8
    assert all(path.parent == out and path.stat().st_size < 16 * 2**20 for path in files)
    assert all(set(path.name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
               for path in files)  # fmt: skip
