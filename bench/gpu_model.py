"""git-base's architecture with random weights, built from code: saved for the pipeline, and timed raw.

``python -m bench.gpu_model --folder DIR`` saves the stand-in to DIR (a checkpoint folder the worker loads);
with ``--batch-sizes 16,32,64,128,256`` it also times ``Captioner.generate_from_tensors`` on ``--device``
in ``--dtype`` at each batch size (images already preprocessed: the accelerator's own rate), then the
other half-precision dtype at the best batch size, and the CPU preprocessing rate of one thread. It
prints one line per figure and writes the JSON to ``--json``. Used by ``bench/gpu.sh``.

The model is :mod:`model.standin`'s (git-base: ViT-B/16 at 224 px, 6-layer decoder, BERT vocabulary
size, CLIP's processor at 224 px, random weights of seed 0) with no end token, so every caption is
exactly ``--new-tokens`` long. ``--config tiny`` keeps the processor, vocabulary and 197 image tokens
but shrinks every layer: the CPU dry run's model, which proves the procedure, not the speed.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from transformers import GitConfig

from model import Captioner, shapes
from model.standin import build_config, build_standin

#: The other half-precision dtype, timed at the best batch size for comparison.
_OTHER_HALF = {"float16": "bfloat16", "bfloat16": "float16"}


def tiny_config() -> GitConfig:
    """git-base's shapes where they touch the pipeline (224 px, 16 px patches, vocabulary), 2 narrow layers each."""
    vision = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 224, "patch_size": 16}  # fmt: skip
    return GitConfig(vision_config=vision, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=2)  # fmt: skip


def _synchronize(captioner: Captioner) -> None:
    if captioner.device.type == "cuda":
        torch.cuda.synchronize(captioner.device)


def time_generate(captioner: Captioner, batch_size: int, new_tokens: int, repeats: int) -> float:
    """Images/s of ``generate_from_tensors`` at ``batch_size`` (inputs prepared beforehand, best of ``repeats``)."""
    rng = random.Random(batch_size)
    images = [shapes.draw_sample(rng, image_size=(640, 480))[0] for _ in range(min(batch_size, 16))]
    rows = captioner.preprocess([images[i % len(images)] for i in range(batch_size)])
    captioner.generate_from_tensors(rows, None, [new_tokens] * batch_size)  # warm-up: kernels, allocator
    best = float("inf")
    for _ in range(repeats):
        _synchronize(captioner)
        began = time.perf_counter()
        captioner.generate_from_tensors(rows, None, [new_tokens] * batch_size)
        _synchronize(captioner)
        best = min(best, time.perf_counter() - began)
    return round(batch_size / best, 1)


def time_preprocess(captioner: Captioner, count: int = 64) -> float:
    """Images/s of one thread running the processor on 640x480 drawings."""
    rng = random.Random(1)
    images = [shapes.draw_sample(rng, image_size=(640, 480))[0] for _ in range(count)]
    began = time.perf_counter()
    for image in images:
        captioner.preprocess([image])
    return round(count / (time.perf_counter() - began), 1)


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """The raw figures: images/s by batch size, the other dtype at the best one, one thread's preprocessing."""
    captioner = Captioner.load(args.folder, device=args.device, dtype=args.dtype, warmup=True)
    by_batch: dict[int, float] = {}
    for size in (int(size) for size in args.batch_sizes.split(",")):
        by_batch[size] = time_generate(captioner, size, args.new_tokens, args.repeats)
        print(f"raw {args.dtype} batch {size}: {by_batch[size]} images/s", flush=True)
    best = max(by_batch, key=by_batch.__getitem__)
    report: dict[str, Any] = {
        "model": f"{args.config} architecture, random weights",
        "device": torch.cuda.get_device_name(0) if captioner.device.type == "cuda" else str(captioner.device),
        "dtype": args.dtype,
        "new_tokens": args.new_tokens,
        "images_per_s_by_batch": by_batch,
        "best_batch_size": best,
        "preprocess_images_per_s_one_thread": time_preprocess(captioner),
    }
    print(f"raw best batch: {best} ({by_batch[best]} images/s)", flush=True)
    print(f"preprocess, one thread: {report['preprocess_images_per_s_one_thread']} images/s", flush=True)
    other = _OTHER_HALF.get(args.dtype)
    if other and captioner.device.type == "cuda":
        del captioner
        torch.cuda.empty_cache()
        captioner = Captioner.load(args.folder, device=args.device, dtype=other, warmup=True)
        report[f"images_per_s_{other}_at_best_batch"] = rate = time_generate(
            captioner, best, args.new_tokens, args.repeats
        )
        print(f"raw {other} batch {best}: {rate} images/s", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="where to save the stand-in checkpoint")
    parser.add_argument("--batch-sizes", default="", help="comma-separated; empty: only save the checkpoint")
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cuda, cpu, ... (a torch device)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--config", default="git-base", choices=["git-base", "tiny"])
    parser.add_argument("--json", type=Path, help="write the report here (else to stdout)")
    args = parser.parse_args()
    build_standin(args.folder, config=tiny_config() if args.config == "tiny" else build_config())
    if not args.batch_sizes:
        return
    text = json.dumps(sweep(args), indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
