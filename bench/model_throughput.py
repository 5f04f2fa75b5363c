"""Captioning throughput of git-base's architecture by batch size, against loading the model per request.

``python -m bench.model_throughput [--batch-sizes 1,2,4,8,16,32] [--repeats 3]`` prints JSON. The model
has ``GitConfig()``'s defaults (git-base: ViT-B/16 at 224 px, 6-layer decoder) with random weights, built in
memory; the tokenizer and image processor are git-base-textcaps' from ../shared, so preprocessing is real.
Every caption is exactly ``--new-tokens`` long (min = max), so batch sizes do equal work per image.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, GitConfig, GitForCausalLM

from model import Captioner, shapes
from model.captioner import resolve_device, resolve_dtype

SHARED_TEXTCAPS_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "git-base-textcaps"
# Photo-like input size, so the processor's resize costs what it costs in production.
_IMAGE_SIZE = (640, 480)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size (median reported)")
    parser.add_argument("--load-repeats", type=int, default=3, help="images captioned with a load each")
    parser.add_argument("--new-tokens", type=int, default=20, help="tokens generated per caption")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    return parser.parse_args(argv)


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def _drawings(count: int) -> list[Image.Image]:
    rng = random.Random(0)
    return [shapes.draw_sample(rng, image_size=_IMAGE_SIZE)[0] for _ in range(count)]


def measure_batches(captioner: Captioner, batch_sizes: list[int], repeats: int, new_tokens: int) -> dict[str, object]:
    """Seconds per batch and images per second for each batch size, with batch size 1 as the baseline."""
    results: dict[str, object] = {}
    baseline_images_per_s = None
    for batch_size in batch_sizes:
        images = _drawings(batch_size)
        run = functools.partial(captioner.caption, images, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        seconds = _median_seconds(run, repeats)
        images_per_s = batch_size / seconds
        baseline_images_per_s = baseline_images_per_s or images_per_s
        results[str(batch_size)] = {
            "seconds_per_batch": round(seconds, 3),
            "images_per_s": round(images_per_s, 3),
            "speedup_vs_batch_1": round(images_per_s / baseline_images_per_s, 2),
        }
    return results


def measure_load_per_request(captioner: Captioner, repeats: int, new_tokens: int) -> dict[str, float]:
    """Cost of one image when every request loads the checkpoint from disk first (the blog's design)."""
    image = _drawings(1)[0]
    with tempfile.TemporaryDirectory(prefix="captionizer-bench-") as folder:
        captioner.model.save_pretrained(folder)
        captioner.processor.save_pretrained(folder)

        def load_and_caption() -> None:
            dtype = str(captioner.dtype).removeprefix("torch.")
            fresh = Captioner.load(folder, device=str(captioner.device), dtype=dtype, warmup=False)
            fresh.caption([image], max_new_tokens=new_tokens, min_new_tokens=new_tokens)

        load_and_caption()  # first load reads the files into the page cache; a busy server has them cached
        seconds = _median_seconds(load_and_caption, repeats)
    return {"seconds_per_image": round(seconds, 3), "images_per_s": round(1 / seconds, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    """Build the model, measure, print JSON."""
    args = _parse_args(argv)
    batch_sizes = sorted({int(size) for size in args.batch_sizes.split(",")})
    torch.manual_seed(0)
    model = GitForCausalLM(GitConfig())
    processor = AutoProcessor.from_pretrained(SHARED_TEXTCAPS_DIR, local_files_only=True)
    device = resolve_device(args.device)
    model = model.to(device, resolve_dtype("auto", device)).eval()
    captioner = Captioner(model, processor, name="git-base (random weights)")
    captioner.warmup()
    batches = measure_batches(captioner, batch_sizes, args.repeats, args.new_tokens)
    per_request = measure_load_per_request(captioner, args.load_repeats, args.new_tokens)
    baseline = batches[str(batch_sizes[0])]
    assert isinstance(baseline, dict)
    per_request["ratio_vs_smallest_batch"] = round(per_request["images_per_s"] / baseline["images_per_s"], 3)
    report = {
        "model": captioner.name,
        "device": str(device),
        "dtype": str(captioner.dtype),
        "torch_threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens,
        "image_size": list(_IMAGE_SIZE),
        "repeats": args.repeats,
        "batches": batches,
        "load_per_request": per_request,
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
