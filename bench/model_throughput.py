"""Captioning throughput of git-base's architecture by batch size, against loading the model per request.

``python -m bench.model_throughput [--batch-sizes 1,2,4,8,16,32] [--repeats 3]`` prints JSON. The model
has ``GitConfig()``'s defaults (git-base: ViT-B/16 at 224 px, 6-layer decoder) with random weights, built in
memory; the image processor is git-base's and the tokenizer has its vocabulary size (``model.standin``), so
preprocessing is real.
Every caption is exactly ``--new-tokens`` long (min = max), so batch sizes do equal work per image.

The baseline is measured in the same run: batch size 1 with the model kept in memory, and the original
blog's design, which loads the checkpoint from disk (``from_pretrained``) for every image. Repeats are
interleaved (every configuration once per round), so a burst of other work on the machine hits them all alike.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from transformers import GitForCausalLM

from model import Captioner, shapes
from model.checkpoints import resolve_device, resolve_dtype
from model.standin import build_config, build_processor

# Photo-like input size, so the processor's resize costs what it costs in production.
_IMAGE_SIZE = (640, 480)
_PER_REQUEST = "load_per_request"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--new-tokens", type=int, default=20, help="tokens generated per caption")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


def _seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _drawings(count: int) -> list[Image.Image]:
    rng = random.Random(0)
    return [shapes.draw_sample(rng, image_size=_IMAGE_SIZE)[0] for _ in range(count)]


def _build_captioner(device_name: str) -> Captioner:
    torch.manual_seed(0)
    device = resolve_device(device_name)
    model = GitForCausalLM(build_config()).to(device, resolve_dtype("auto", device))  # type: ignore[arg-type]
    captioner = Captioner(model, build_processor(), name="git-base (random weights)")
    captioner.model.train(False)
    captioner.warmup()
    return captioner


def _runs(
    captioner: Captioner, folder: str, batch_sizes: list[int], new_tokens: int
) -> dict[str, Callable[[], object]]:
    """One callable per configuration: each batch size in memory, and load-then-caption per request."""
    runs: dict[str, Callable[[], object]] = {}
    for batch_size in batch_sizes:
        runs[str(batch_size)] = functools.partial(
            captioner.caption, _drawings(batch_size), max_new_tokens=new_tokens, min_new_tokens=new_tokens
        )
    image = _drawings(1)
    dtype = str(captioner.dtype).removeprefix("torch.")

    def load_and_caption() -> None:
        fresh = Captioner.load(folder, device=str(captioner.device), dtype=dtype, warmup=False)
        fresh.caption(image, max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    runs[_PER_REQUEST] = load_and_caption
    return runs


def _summarise(timings: dict[str, list[float]], batch_sizes: list[int]) -> dict[str, object]:
    """Medians, and the fastest round (least disturbed by other work on a shared machine), per configuration."""

    def describe(name: str, images: int, baseline: tuple[float, float] | None) -> dict[str, object]:
        median, best = statistics.median(timings[name]), min(timings[name])
        described: dict[str, object] = {
            "seconds_median": round(median, 3),
            "seconds_best": round(best, 3),
            "images_per_s_median": round(images / median, 3),
            "images_per_s_best": round(images / best, 3),
        }
        if baseline is not None:
            described["ratio_vs_batch_1_median"] = round(images / median / baseline[0], 2)
            described["ratio_vs_batch_1_best"] = round(images / best / baseline[1], 2)
        described["seconds_each_round"] = [round(seconds, 3) for seconds in timings[name]]
        return described

    first = str(batch_sizes[0])
    baseline = (batch_sizes[0] / statistics.median(timings[first]), batch_sizes[0] / min(timings[first]))
    return {
        "batches": {str(size): describe(str(size), size, baseline) for size in batch_sizes},
        _PER_REQUEST: describe(_PER_REQUEST, 1, baseline),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Build the model, measure every configuration in interleaved rounds, print JSON."""
    args = _parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = sorted({int(size) for size in args.batch_sizes.split(",")})
    captioner = _build_captioner(args.device)
    load_average_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="captionizer-bench-") as folder:
        captioner.model.save_pretrained(folder)
        captioner.processor.save_pretrained(folder)
        runs = _runs(captioner, folder, batch_sizes, args.new_tokens)
        runs[_PER_REQUEST]()  # the first load reads the files into the page cache, as a busy server has them
        timings: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                timings[name].append(_seconds(run))
    report = {
        "model": captioner.name,
        "device": str(captioner.device),
        "dtype": str(captioner.dtype),
        "torch_threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens,
        "image_size": list(_IMAGE_SIZE),
        "repeats": args.repeats,
        **_summarise(timings, batch_sizes),
        "load_average_start_end": [round(load_average_start[0], 2), round(os.getloadavg()[0], 2)],
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
