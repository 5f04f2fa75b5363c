"""Download a real GIT checkpoint from the Hugging Face Hub into a folder, and check a folder's layout.

``python -m model.fetch microsoft/git-base-coco models/git-base-coco`` downloads and checks;
``python -m model.fetch --check-only models/git-base-coco`` only checks.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError

from model.errors import CaptionerError

logger = logging.getLogger(__name__)

#: Microsoft's image GIT checkpoints; the video ones (vatex, msrvtt) take frame stacks the captioner does not build.
KNOWN_CHECKPOINTS: tuple[str, ...] = (
    "microsoft/git-base",
    "microsoft/git-base-coco",
    "microsoft/git-base-textcaps",
    "microsoft/git-base-vqav2",
    "microsoft/git-base-textvqa",
    "microsoft/git-large",
    "microsoft/git-large-coco",
    "microsoft/git-large-textcaps",
    "microsoft/git-large-vqav2",
    "microsoft/git-large-textvqa",
    "microsoft/git-large-r",
    "microsoft/git-large-r-coco",
    "microsoft/git-large-r-textcaps",
)

#: Only what loading needs: no pytorch_model.bin (pickle), no TF/Flax weights, no README images.
ALLOW_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "*.safetensors",
    "model.safetensors.index.json",
)

_EXIT_USAGE = 2
_EXIT_FAILED = 1


class CheckpointLayoutError(CaptionerError):
    """A checkpoint folder lacks a file that loading needs, or holds something that is not GIT."""


def check_checkpoint_folder(folder: str | Path) -> None:
    """Check that ``folder`` looks like a loadable GIT checkpoint, without loading the weights.

    Raises:
        CheckpointLayoutError: listing every problem found, with the folder's path.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointLayoutError(f"{root}: not a folder")
    problems = [*_config_problems(root), *_weights_problems(root), *_processor_problems(root)]
    if problems:
        raise CheckpointLayoutError(f"{root}: " + "; ".join(problems))


def _config_problems(root: Path) -> list[str]:
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ["config.json is missing"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"config.json is unreadable ({exc})"]
    model_type = config.get("model_type") if isinstance(config, dict) else None
    return [] if model_type == "git" else [f'config.json has model_type {model_type!r}, expected "git"']


def _weights_problems(root: Path) -> list[str]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as exc:
            return [f"model.safetensors.index.json is unreadable ({exc})"]
        missing = sorted(shard for shard in shards if not (root / shard).is_file())
        return [f"weight shards are missing: {', '.join(missing)}"] if missing else []
    if (root / "model.safetensors").is_file():
        return []
    # Some Hub repositories publish only pytorch_model.bin; we do not load pickles.
    return ["no model.safetensors (or sharded index): try --revision with a safetensors conversion"]


def _processor_problems(root: Path) -> list[str]:
    problems = []
    if not (root / "tokenizer.json").is_file() and not (root / "vocab.txt").is_file():
        problems.append("no tokenizer (tokenizer.json or vocab.txt)")
    if not (root / "tokenizer_config.json").is_file():
        problems.append("tokenizer_config.json is missing")
    if not (root / "preprocessor_config.json").is_file() and not _has_nested_image_processor(root):
        problems.append("no image processor (preprocessor_config.json, or processor_config.json with one)")
    return problems


def _has_nested_image_processor(root: Path) -> bool:
    # transformers 5 saves a processor's image settings inside processor_config.json instead.
    try:
        config = json.loads((root / "processor_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and isinstance(config.get("image_processor"), dict)


def download_checkpoint(hub_id: str, folder: str | Path, *, revision: str | None = None) -> Path:
    """Download the files of ``hub_id`` that loading needs into ``folder``, then check the layout.

    Raises:
        CheckpointLayoutError: the download finished but the folder is not a usable checkpoint.
        huggingface_hub.errors.HfHubHTTPError, OSError: the download failed.
    """
    target = Path(folder)
    logger.info("downloading %s (revision %s) to %s", hub_id, revision or "main", target)
    snapshot_download(repo_id=hub_id, revision=revision, local_dir=target, allow_patterns=list(ALLOW_PATTERNS))
    check_checkpoint_folder(target)
    return target


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.fetch",
        description=__doc__,
        epilog="known checkpoints: " + ", ".join(KNOWN_CHECKPOINTS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("hub_id", nargs="?", help="Hub repository id, e.g. microsoft/git-base-coco")
    parser.add_argument("folder", nargs="?", type=Path, help="folder to download into")
    parser.add_argument("--check-only", metavar="FOLDER", type=Path, help="only check FOLDER's layout")
    parser.add_argument("--any", action="store_true", help="accept a Hub id outside the known list")
    parser.add_argument("--force", action="store_true", help="download into a non-empty folder, overwriting")
    parser.add_argument("--revision", help="branch, tag or commit (default: main)")
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad combinations with argparse's usage message and exit status 2."""
    if args.check_only is not None:
        if args.hub_id is not None:
            parser.error("--check-only takes a folder and no hub id")
        return
    if args.hub_id is None or args.folder is None:
        parser.error("a hub id and a folder are required (or --check-only FOLDER)")
    if args.hub_id not in KNOWN_CHECKPOINTS and not args.any:
        parser.error(f"unknown checkpoint {args.hub_id!r}; known: {', '.join(KNOWN_CHECKPOINTS)} (or pass --any)")
    if args.folder.exists() and not args.folder.is_dir():
        parser.error(f"{args.folder} exists and is not a folder")
    if args.folder.is_dir() and any(args.folder.iterdir()) and not args.force:
        parser.error(f"{args.folder} is not empty; pass --force to download into it")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 ok, 1 download or check failed, 2 bad arguments)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.check_only is not None:
            check_checkpoint_folder(args.check_only)
            folder = args.check_only
        else:
            folder = download_checkpoint(args.hub_id, args.folder, revision=args.revision)
    except CheckpointLayoutError as exc:
        logger.error("not a usable GIT checkpoint: %s", exc)
        return _EXIT_FAILED
    # HF_HUB_OFFLINE and unreachable hosts surface as OSError subclasses; 401/404 as HfHubHTTPError.
    except (HfHubHTTPError, OSError, ValueError) as exc:
        logger.error("download of %s failed: %s", args.hub_id, exc)
        return _EXIT_FAILED
    logger.info("%s is a GIT checkpoint; load it with Captioner.load(%r)", folder, str(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
