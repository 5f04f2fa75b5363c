"""The Lua scripts behind JobStore, read from their files: creating jobs and changing a job's status.

Each script is a file beside this module (``create.lua``, ``transition.lua``) whose opening comment is
its KEYS/ARGV contract: a second language, kept readable as itself rather than spliced from strings.
"""

from __future__ import annotations

from importlib.resources import files


def _read(name: str) -> str:
    return files("shared.jobs").joinpath(name).read_text(encoding="utf-8")


#: Creates the jobs of one request (one job, or a batch's items) and counts its owner's quotas, atomically.
CREATE_LUA = _read("create.lua")
#: The one writer of ``status``; a batch item's batch counts change in the same step.
TRANSITION_LUA = _read("transition.lua")
