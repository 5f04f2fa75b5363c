"""bench/gpu.sh, the one script a lent GPU machine runs on its first try: shellcheck finds nothing in it."""

from __future__ import annotations

from infra_toolbox import REPO_ROOT, InfraTools, run_tool

GPU_SH = REPO_ROOT / "bench" / "gpu.sh"


def test_shellcheck_finds_nothing_in_the_gpu_bench(infra_tools: InfraTools) -> None:
    done = run_tool([infra_tools.shellcheck, "--severity=style", GPU_SH])
    assert done.returncode == 0, done.stdout + done.stderr
