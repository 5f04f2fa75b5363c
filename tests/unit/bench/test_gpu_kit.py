"""The GPU kit's plan, read from this venv's installed metadata (no download): what travels, at which version,
and that the working tree leaves the kit its room under the device tool's 64 MiB."""

from __future__ import annotations

from importlib import metadata

import pytest

from bench.gpu_image import IMAGE_PACKAGES, PYTHON_VERSION, normalize
from bench.gpu_kit import CARRY_LIMIT_BYTES, KIT_BUDGET_BYTES, MODEL_STACK, plan_kit, working_tree_bytes


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
