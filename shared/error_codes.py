"""From a stable ``code`` back to its error class: for the API's problem responses and for jobs that failed.

A job records only ``code`` and ``message``; the API rebuilds the error here to answer
with its status. Every code is read from the classes in :mod:`shared.errors`.
"""

from __future__ import annotations

from typing import Any

from shared.error_families import CaptionizerError, is_concrete
from shared.errors import InternalError


def all_error_classes() -> list[type[CaptionizerError]]:
    """Every concrete error class (those with a code), for documentation and the code lookup."""
    seen: list[type[CaptionizerError]] = []
    pending: list[type[CaptionizerError]] = [CaptionizerError]
    while pending:
        cls = pending.pop()
        if is_concrete(cls):
            seen.append(cls)
        pending.extend(cls.__subclasses__())
    return seen


def _classes_by_code(classes: list[type[CaptionizerError]]) -> dict[str, type[CaptionizerError]]:
    """Each code's class; a code claimed twice is a bug, caught when this module loads."""
    by_code: dict[str, type[CaptionizerError]] = {}
    for cls in classes:
        if cls.code in by_code:
            raise TypeError(f"{cls.__name__} reuses the code {cls.code!r} of {by_code[cls.code].__name__}")
        by_code[cls.code] = cls
    return by_code


#: Each code's class, built once; the lookup cannot depend on the order of a class walk.
CLASSES_BY_CODE: dict[str, type[CaptionizerError]] = _classes_by_code(all_error_classes())


def error_for_code(code: str, message: str, **extra: Any) -> CaptionizerError:
    """Rebuild the error a job recorded (by its code), so the API can answer with its status; unknown codes are internal."""
    return CLASSES_BY_CODE.get(code, InternalError)(message, **extra)
