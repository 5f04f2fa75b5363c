"""A caption worker started with another pool than threads ends at once, saying why (it never consumes)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scripts.stack import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_caption_worker_asked_for_another_pool_exits_with_the_reason(pool: str) -> None:
    env = {
        **os.environ,
        # The stand-in model, and a Redis nothing answers at: the worker must end before it needs either.
        "CAPTIONIZER_MODEL": "null",
        "CAPTIONIZER_REDIS_URL": "redis://127.0.0.1:9/0",
    }
    argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "captions", "-P", pool,
            "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
    done = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert "threads pool only (-P threads)" in done.stderr
