"""git-base's architecture with random weights, built from code: saved for the pipeline, and timed raw on a GPU.

``python -m bench.gpu_model --folder DIR`` saves the stand-in to DIR (a checkpoint folder the worker loads);
with ``--batch-sizes 16,32,64,128,256`` it also times ``Captioner.generate_from_tensors`` in fp16 on
CUDA at each batch size (images already preprocessed: the accelerator's own rate) and the CPU
preprocessing rate of one thread, and prints JSON. Used by ``bench/gpu.sh``.

The model is :mod:`model.standin`'s (git-base: ViT-B/16 at 224 px, 6-layer decoder, BERT vocabulary
size, CLIP's processor at 224 px, random weights of seed 0) with no end token, so every caption is
exactly ``--new-tokens`` long.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from model import Captioner, shapes
from model.standin import build_standin


def time_generate(captioner: Captioner, batch_size: int, new_tokens: int, repeats: int) -> float:
    """Images/s of ``generate_from_tensors`` at ``batch_size`` (inputs prepared beforehand, best of ``repeats``)."""
    rng = random.Random(batch_size)
    images = [shapes.draw_sample(rng, image_size=(640, 480))[0] for _ in range(min(batch_size, 16))]
    rows = captioner.preprocess([images[i % len(images)] for i in range(batch_size)])
    captioner.generate_from_tensors(rows, None, [new_tokens] * batch_size)  # warm-up: kernels, allocator
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        began = time.perf_counter()
        captioner.generate_from_tensors(rows, None, [new_tokens] * batch_size)
        torch.cuda.synchronize()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="where to save the stand-in checkpoint")
    parser.add_argument("--batch-sizes", default="", help="comma-separated; empty: only save the checkpoint")
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    build_standin(args.folder)
    if not args.batch_sizes:
        return
    captioner = Captioner.load(args.folder, device="cuda", dtype="float16", warmup=True)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    report = {
        "model": "git-base architecture, random weights, fp16",
        "device": torch.cuda.get_device_name(0),
        "new_tokens": args.new_tokens,
        "images_per_s_by_batch": {
            size: time_generate(captioner, size, args.new_tokens, args.repeats) for size in sizes
        },
        "preprocess_images_per_s_one_thread": time_preprocess(captioner),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
