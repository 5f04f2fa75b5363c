"""Dockerfile.api and Dockerfile.worker: hadolint, what reaches the images, and what they run."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
from dockerfile_source import Dockerfile, Stage, is_in_build_context, key_values, parse_dockerfile, substitute
from infra_toolbox import REPO_ROOT, InfraTools, run_tool

from shared.keys import CAPTION_QUEUE
from shared.settings import EMBEDDED_MODEL, Settings

DOCKERFILES = ("Dockerfile.api", "Dockerfile.worker")
PROJECT_PACKAGES = {"api", "cli", "model", "shared", "worker"}

# Imports a module in a fresh interpreter where the named top-level packages cannot be found,
# as in an image that does not copy them (the project's venv would otherwise find them all).
_IMPORT_WITHOUT = """
import importlib, importlib.abc, sys
absent = set(sys.argv[1].split(","))
class NotInImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in absent:
            raise ModuleNotFoundError(f"{name} is not in the image", name=name)
        return None
sys.meta_path.insert(0, NotInImage())
importlib.import_module(sys.argv[2])
"""


def _dockerfile(name: str) -> Dockerfile:
    return parse_dockerfile(REPO_ROOT / name)


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        env.update(key_values(instruction))
    return env


def _torch_pin() -> str:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [dep for dep in pyproject["project"]["optional-dependencies"]["worker"] if dep.startswith("torch==")]
    assert len(pins) == 1, "the worker extra pins torch exactly once"
    return pins[0].removeprefix("torch==")


def test_hadolint_finds_nothing(infra_tools: InfraTools) -> None:
    # Any finding fails, info level included; the few ignores carry a reason in the Dockerfile.
    done = run_tool([infra_tools.hadolint, "--no-color", *DOCKERFILES])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_path_exists_and_is_in_the_build_context(name: str) -> None:
    dockerfile = _dockerfile(name)
    dockerignore = REPO_ROOT / ".dockerignore"
    copies = [copy for stage in dockerfile.stages for copy in stage.all("COPY") + stage.all("ADD")]
    assert copies
    for copy in copies:
        if "from" in copy.flags:
            continue  # from another stage, not the context
        for source in copy.words[:-1]:
            path = REPO_ROOT / source
            assert path.exists(), f"{name}:{copy.line} copies {source}, which is not in the repository"
            probes = [source]
            if path.is_dir():  # a folder reaches the image only if some file inside it does
                probes = [str(file.relative_to(REPO_ROOT)) for file in path.rglob("*.py")][:5] or [source]
            assert all(is_in_build_context(probe, dockerignore) for probe in probes), (
                f"{name}:{copy.line} copies {source}, but .dockerignore keeps it out of the context"
            )


def test_build_context_leaves_out_secrets_venvs_and_tests() -> None:
    dockerignore = REPO_ROOT / ".dockerignore"
    for path in (
        ".env",
        ".git/config",
        ".venv/bin/python",
        ".venv-infra/bin/python",
        "tests/conftest.py",
        "api/__pycache__/app.cpython-311.pyc",
    ):
        assert not is_in_build_context(path, dockerignore), path


def test_api_image_holds_only_api_and_shared_and_the_api_extra() -> None:
    dockerfile = _dockerfile("Dockerfile.api")
    copied = {source for copy in dockerfile.final.all("COPY") if "from" not in copy.flags for source in copy.words[:-1]}
    assert copied == {"api/", "shared/"}
    installs = " ".join(run.arguments for stage in dockerfile.stages for run in stage.all("RUN"))
    assert "['api']" in installs
    assert "worker" not in installs and "torch" not in installs


@pytest.mark.parametrize(
    ("name", "entry_point", "also_absent"),
    [("Dockerfile.api", "api.main", {"torch", "transformers"}), ("Dockerfile.worker", "worker.main", set())],
)
def test_entry_point_imports_with_only_the_packages_the_image_copies(
    name: str, entry_point: str, also_absent: set[str]
) -> None:
    copied = {
        source.strip("/")
        for copy in _dockerfile(name).final.all("COPY")
        if "from" not in copy.flags
        for source in copy.words[:-1]
    }
    absent = sorted((PROJECT_PACKAGES - copied) | also_absent)
    done = run_tool([sys.executable, "-c", _IMPORT_WITHOUT, ",".join(absent), entry_point], env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def test_api_image_serves_the_app_behind_proxies_with_a_healthcheck() -> None:
    final = _dockerfile("Dockerfile.api").final
    command = final.all("CMD")[-1].words
    # A factory: nothing is built at import (api.main).
    assert command[:3] == ["uvicorn", "--factory", "api.main:create_app_from_env"]
    assert "--proxy-headers" in command
    # uvicorn's --forwarded-allow-ips defaults to $FORWARDED_ALLOW_IPS.
    assert _env(final).get("FORWARDED_ALLOW_IPS")
    healthcheck = final.all("HEALTHCHECK")[-1].arguments
    assert "/healthz" in healthcheck and "urllib" in healthcheck  # python:slim has no curl


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_runs_as_a_numeric_non_root_user(name: str) -> None:
    users = _dockerfile(name).final.all("USER")
    assert users, f"{name} never leaves root"
    uid = users[-1].words[0].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric UID lets runAsNonRoot policies verify it"


def test_worker_torch_bases_match_the_pinned_torch() -> None:
    dockerfile = _dockerfile("Dockerfile.worker")
    pin = _torch_pin()
    tag = dockerfile.global_args["PYTORCH_IMAGE"].rpartition(":")[2]
    assert tag.startswith(f"{pin}-cuda"), f"pytorch image {tag} does not ship torch {pin}; pip would replace it"
    cpu_args: dict[str, str] = {}
    for arg in dockerfile.stage("torch-cpu").all("ARG"):
        cpu_args.update(key_values(arg))
    assert cpu_args["TORCH_VERSION"] == pin
    assert {stage.name for stage in dockerfile.stages} >= {"torch-cpu", "torch-cuda"}
    assert dockerfile.global_args["TORCH_VARIANT"] in {"cpu", "cuda"}


def test_worker_bakes_the_model_with_model_fetch_and_stays_offline() -> None:
    dockerfile = _dockerfile("Dockerfile.worker")
    runs = " ".join(run.arguments for stage in dockerfile.stages for run in stage.all("RUN"))
    assert "python -m model.fetch" in runs
    env = _env(dockerfile.final)
    assert env["HF_HUB_OFFLINE"] == "1"
    model_id_default = key_values(dockerfile.stage("model").all("ARG")[0])["MODEL_ID"]
    assert model_id_default == "microsoft/git-base-textcaps"


def test_worker_default_model_id_is_one_model_fetch_accepts() -> None:
    # Read model/fetch.py's list without importing it (that would import torch).
    tree = ast.parse((REPO_ROOT / "model" / "fetch.py").read_text(encoding="utf-8"))
    known: tuple[str, ...] = ()
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            if node.target.id == "KNOWN_CHECKPOINTS":
                known = ast.literal_eval(node.value)
        elif isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "KNOWN_CHECKPOINTS" for target in node.targets
        ):
            known = ast.literal_eval(node.value)
    assert "microsoft/git-base-textcaps" in known


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [("microsoft/git-base-textcaps", "/models/captioner"), ("", EMBEDDED_MODEL)],
)
def test_worker_model_setting_is_the_baked_folder_or_the_embedded_model(model_id: str, expected: str) -> None:
    variables = {"MODEL_ID": model_id}
    for instruction in _dockerfile("Dockerfile.worker").final.all("ENV"):
        for name, value in key_values(instruction).items():
            variables[name] = substitute(value, variables)
    assert variables["CAPTIONIZER_MODEL"] == expected
    assert Settings(model=variables["CAPTIONIZER_MODEL"]).model == expected


def test_worker_default_command_consumes_the_caption_queue_and_sizes_its_own_pool() -> None:
    command = _dockerfile("Dockerfile.worker").final.all("CMD")[-1].words
    assert command[:4] == ["celery", "-A", "worker", "worker"]
    assert command[command.index("-Q") + 1] == CAPTION_QUEUE
    assert "--concurrency" not in command


@pytest.mark.parametrize("name", DOCKERFILES)
def test_pip_installs_use_a_cache_mount(name: str) -> None:
    for stage in _dockerfile(name).stages:
        for run in stage.all("RUN"):
            if re.search(r"\bpip install\b", run.arguments):
                assert "type=cache" in run.flags.get("mount", ""), f"{name}:{run.line} installs without a cache mount"


def test_python_bases_are_pinned_to_a_python_release() -> None:
    for name in DOCKERFILES:
        image = _dockerfile(name).global_args["PYTHON_IMAGE"]
        assert re.fullmatch(r"python:3\.11-slim-\w+", image), image
        assert Path(REPO_ROOT / name).read_text(encoding="utf-8").startswith("# syntax=docker/dockerfile:1")
