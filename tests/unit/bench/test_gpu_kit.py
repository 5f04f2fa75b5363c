"""The GPU kit's plan, read from this venv's installed metadata (no download): what travels, at which version,
and that the working tree leaves the kit its room under the device tool's 64 MiB."""

from __future__ import annotations

import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from bench.gpu_image import IMAGE_PACKAGES, PYTHON_VERSION, normalize
from bench.gpu_kit import (
    CARRY_LIMIT_BYTES,
    KIT_BUDGET_BYTES,
    MODEL_STACK,
    plan_kit,
    unmet_requirements,
    working_tree_bytes,
)


@pytest.fixture(scope="module")
def plan() -> tuple[dict[str, str], dict[str, str]]:
    return plan_kit(PYTHON_VERSION)


@pytest.mark.parametrize(
    "name", ["celery", "kombu", "redis", "hiredis", "fastapi", "starlette", "uvicorn", "pydantic-settings", "pydantic"]
)
def test_what_the_image_lacks_travels_at_this_venvs_version(
    plan: tuple[dict[str, str], dict[str, str]], name: str
) -> None:
    carried, _ = plan
    assert carried[name] == metadata.version(name)


@pytest.mark.parametrize("name", ["torch", "numpy"])
def test_the_images_cuda_torch_and_numpy_never_travel(plan: tuple[dict[str, str], dict[str, str]], name: str) -> None:
    carried, from_image = plan
    assert name not in carried and name in from_image


def test_the_model_stack_travels_because_the_images_transformers_breaks_git(
    plan: tuple[dict[str, str], dict[str, str]],
) -> None:
    carried, _ = plan
    assert carried[MODEL_STACK] == metadata.version(MODEL_STACK)
    assert carried["huggingface-hub"] == metadata.version("huggingface-hub")


def test_the_image_is_trusted_only_for_packages_it_has(plan: tuple[dict[str, str], dict[str, str]]) -> None:
    _, from_image = plan
    assert set(from_image) <= IMAGE_PACKAGES
    assert {"pillow", "aiohttp", "prometheus-client"} <= set(from_image)


def test_names_compare_as_pep_503_says() -> None:
    assert normalize("Typing_Extensions") == normalize("typing.extensions") == "typing-extensions"


def test_the_working_tree_leaves_the_kit_its_budget_under_the_carry_limit() -> None:
    assert working_tree_bytes() + KIT_BUDGET_BYTES < CARRY_LIMIT_BYTES


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    lines = [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {line}" for line in requires)]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


def test_a_requirement_neither_the_kit_nor_the_image_meets_is_reported(tmp_path: Path) -> None:
    wheels = [
        _wheel(
            tmp_path,
            "celery",
            "5.7.0",
            ["kombu>=5.6", "click>=8.1", "missing-thing>=1", 'tomli; python_version < "3.11"'],
        ),
        _wheel(tmp_path, "kombu", "5.5.0", []),
    ]
    problems = unmet_requirements(wheels, "3.12")
    # kombu is in the kit at a version too old; missing-thing is nowhere; click is on the image (version
    # unrecorded, checked on the device); tomli is not wanted on 3.12.
    assert problems == [
        "celery needs kombu>=5.6: 5.5.0",
        "celery needs missing-thing>=1: neither in the kit nor on the image",
    ]


def test_the_image_versions_that_are_known_are_checked(tmp_path: Path) -> None:
    wheels = [_wheel(tmp_path, "some-lib", "1.0", ["transformers>=5.25"])]
    assert unmet_requirements(wheels, "3.12") == ["some-lib needs transformers>=5.25: 5.17.0"]
