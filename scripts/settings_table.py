"""Prints the README's settings table from the Settings field descriptions.

Run ``python -m scripts.settings_table`` and paste between the README markers;
``tests/unit/shared/test_readme.py`` fails when the two drift apart.
"""

from __future__ import annotations

import json

from pydantic_core import PydanticUndefined

from shared.settings import Settings

BEGIN = "<!-- settings-table:begin -->"
END = "<!-- settings-table:end -->"


def _default(value: object) -> str:
    if value is None or value is PydanticUndefined:
        return "—"
    if isinstance(value, list):
        return ",".join(str(item) for item in value) or "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) else str(value)


def settings_table() -> str:
    """The Markdown table of every setting: variable, default, description."""
    rows = ["| Variable | Default | What it does |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        variable = f"CAPTIONIZER_{name.upper()}"
        rows.append(f"| `{variable}` | `{_default(field.default)}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
