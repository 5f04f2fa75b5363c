"""The accelerator machine as the GPU bench finds it, and whether the service can run there. Prints JSON.

``python -m bench.gpu_env --device cuda --kit .gpu-kit/manifest.json --json OUT/env.json`` records the
Python, torch, CUDA and transformers versions, ``nvidia-smi``'s view of the GPU, and three checks:

- **kit**: every carried package imports at its pinned version, and every requirement of it is met by
  what the image and the kit hold together (the image's versions are not all known in advance);
- **imports**: each module the API and the worker import first;
- **git**: the embedded GIT model captions 64 drawings from a drawer it never trained on on ``--device``
  (exact match), and a prompt at the last text positions still captions: GIT's text positions exclude
  its image tokens, which the image's transformers (5.17 where this project pins 5.x) must also honour.

It exits 1 when a check fails, or when ``--device cuda`` sees no GPU: the steps after it would measure
nothing. It prints one line per figure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import shutil
import subprocess
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.version import Version

#: Modules the processes import first; one that fails shows which package the kit lacks.
MODULES = ("celery", "kombu", "redis", "hiredis", "pydantic", "pydantic_settings", "fastapi", "starlette",
           "uvicorn", "multipart", "fastapi_offline", "standardwebhooks", "aiohttp", "PIL", "prometheus_client",
           "httpx", "uvloop", "torch", "transformers", "api.main", "worker.celery_app")  # fmt: skip
_SMI_FIELDS = "name,memory.total,driver_version,clocks.max.sm,power.limit,temperature.gpu"
#: Exact matches on the independent drawer's drawings below which the model is broken, not merely half-precise.
GIT_EXACT_MATCH_FLOOR = 0.9


def nvidia_smi() -> list[dict[str, str]] | None:
    """One dict per GPU from ``nvidia-smi``; None where the command is missing."""
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", f"--query-gpu={_SMI_FIELDS}", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    names = _SMI_FIELDS.split(",")
    return [dict(zip(names, (cell.strip() for cell in line.split(",")), strict=False))
            for line in done.stdout.splitlines() if line.strip()]  # fmt: skip


def check_kit(manifest: dict[str, Any]) -> list[str]:
    """Problems with the carried packages: missing, another version, or a requirement nothing here meets."""
    problems = []
    environment = {"extra": ""}
    for name, pinned in manifest["carried"].items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed")
            continue
        if found != pinned:
            problems.append(f"{name}: {found}, kit pins {pinned}")
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            try:
                have = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                problems.append(f"{name} needs {requirement}: not installed")
                continue
            if not requirement.specifier.contains(Version(have), prereleases=True):
                problems.append(f"{name} needs {requirement}: {have} installed")
    return problems


def check_imports() -> dict[str, str]:
    """Module → error, for each of ``MODULES`` that fails to import."""
    failed = {}
    for module in MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:
            failed[module] = f"{type(exc).__name__}: {exc}"
    return failed


def check_git(device: str) -> dict[str, Any]:
    """The embedded GIT model on ``device``: exact match on 64 independent drawings, and a prompt at the limit."""
    from model import Captioner
    from model.evaluate import exact_match, independent

    captioner = Captioner.load(None, device=device)
    matched = exact_match(captioner, independent, 64, seed=4242, batch_size=64)
    # A prompt of all but one text position, then one new token: the last position GIT has for text.
    prompt = " ".join(["a"] * captioner.max_prompt_tokens)
    images, _ = independent(2, 7)
    at_limit = captioner.caption(images, prompt=prompt, max_new_tokens=30)
    return {
        "device": str(captioner.device),
        "dtype": str(captioner.dtype),
        "exact_match": matched["exact_match"],
        "misses": matched["misses"],
        "prompt_at_text_position_limit": {"prompt_tokens": captioner.max_prompt_tokens, "captions": at_limit},
        "ok": float(str(matched["exact_match"])) >= GIT_EXACT_MATCH_FLOOR and len(at_limit) == len(images),
    }


def collect(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "transformers": transformers.__version__,
        "huggingface_hub": metadata.version("huggingface-hub"),
        "nvidia_smi": nvidia_smi(),
        "redis_server": args.redis_version,
    }
    report["kit_problems"] = check_kit(json.loads(args.kit.read_text())) if args.kit else []
    report["import_failures"] = check_imports()
    report["git"] = None
    if cuda or args.device != "cuda":
        try:
            report["git"] = check_git(args.device)
        except Exception as exc:
            # Recorded, not raised: env.json is the evidence of what broke (transformers 5.17's GIT did here).
            report["git"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="where the GIT check runs; cuda also means: a GPU is needed")
    parser.add_argument("--kit", type=Path, help="the kit's manifest.json, to check the carried packages")
    parser.add_argument("--redis-version", default="", help="what `redis-server --version` printed")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    report = collect(args)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    git = report["git"] or {}
    print(f"python {report['python']}, torch {report['torch']} (CUDA {report['torch_cuda']}), "
          f"transformers {report['transformers']}, huggingface-hub {report['huggingface_hub']}")  # fmt: skip
    print(f"gpu: {report['gpu']} ({report['gpu_memory_gib']} GiB); nvidia-smi: {report['nvidia_smi']}")
    print(f"kit problems: {report['kit_problems'] or 'none'}; import failures: {report['import_failures'] or 'none'}")
    print(f"git check on {git.get('device')} {git.get('dtype')}: exact match {git.get('exact_match')}, "
          f"ok {git.get('ok')} {git.get('error', '')}")  # fmt: skip
    ok = not report["import_failures"] and git.get("ok", False)
    if args.device == "cuda" and not report["cuda_available"]:
        print("no CUDA device visible to torch", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
