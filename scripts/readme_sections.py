"""Rewrites the generated parts of README.md (the settings table) in place.

``python -m scripts.readme_sections`` after changing a setting; the README test
fails while the two differ.
"""

from __future__ import annotations

from pathlib import Path

from scripts.settings_table import BEGIN, END, settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def render(readme_text: str) -> str:
    """The README with the settings table between its markers replaced."""
    head, rest = readme_text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{settings_table()}\n{END}{tail}"


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
