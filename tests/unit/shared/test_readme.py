"""The README's settings table is generated from Settings and must not drift."""

from __future__ import annotations

from pathlib import Path

from scripts.readme_sections import README, render
from shared.settings import Settings


def test_readme_settings_table_matches_settings() -> None:
    text = README.read_text()
    assert render(text) == text, "run `python -m scripts.readme_sections` to regenerate the settings table"


def test_every_setting_is_documented_in_readme() -> None:
    text = README.read_text()
    for name in Settings.model_fields:
        assert f"`CAPTIONIZER_{name.upper()}`" in text


def test_readme_quick_start_has_exactly_the_two_commands() -> None:
    quick_start = Path(README).read_text().split("## Quick start", 1)[1].split("##", 1)[0]
    first_block = quick_start.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make run", "make test"]
