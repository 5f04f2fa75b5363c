"""Train the tiny embedded GIT captioner on drawn shapes, save it as a checkpoint, and measure it.

``python -m model.train [--out model/embedded] [--steps N] [--drawings N] [--train-seed S]`` draws a fixed training set
(``model.shapes``, all the variety the world's rules allow), trains on it and saves;
``python -m model.train --evaluate [--out DIR] [--n 100] [--seed S] [--json]`` prints exact-match accuracy
in every stratum of the world (aspect ratio, span band, position, format), worst first, on the trainer's
drawer and on an independent one (``model.evaluate``). Figures and commands: README, "The model".
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import multiprocessing
import random
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import distributed
from torch.multiprocessing.spawn import spawn
from transformers import (
    GitForCausalLM,
    GitProcessor,
)

from model import shapes
from model.captioner import EMBEDDED_MODEL_DIR, Captioner
from model.embedded_architecture import MODEL_IMAGE_SIZE, PATCH_SIZE, build_model, build_processor
from model.evaluate import EVAL_SEED, evaluate
from model.shape_supervision import SUB_CELLS, SUPERVISION_WEIGHT, ShapeHeads, mirror, shape_masks

logger = logging.getLogger(__name__)

#: Seed of the training set; evaluation defaults to others so its images are unseen.
TRAIN_SEED = 1234
DEFAULT_STEPS = 2_000
#: Drawings in the training set (drawn once, then sampled with replacement and mirrored).
DEFAULT_DRAWINGS = 56_000
PEAK_LEARNING_RATE = 2e-3
DEFAULT_BATCH_SIZE = 256
#: Share of each batch drawn in proportion to the rows' last losses (``RowSampler``).
DEFAULT_FOCUS = 0.5
#: Longest side training draws an image at (see ``shapes.draw_varied_batch``).
TRAINING_MAX_SIDE = 256

_CHUNK = 500  # drawings per seed: the unit of work the drawing processes share


class DrawnChunk(NamedTuple):
    """Drawings as training keeps them: uint8 pixels ``(N, 3, S, S)``, captions, ``(N, 4)`` boxes, uint8 masks."""

    pixels: np.ndarray
    captions: list[str]
    boxes: np.ndarray
    masks: np.ndarray


class TrainingSet(NamedTuple):
    """The whole drawn set: pixels, caption tokens, and the shape supervision's boxes and masks."""

    pixels: torch.Tensor
    input_ids: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor


def draw_pixels(processor: GitProcessor, seed: int, count: int, evenly: bool = False) -> DrawnChunk:
    """``count`` drawings from ``seed``, resized as the processor resizes them, with their shapes' boxes and masks.

    ``evenly``: each corner of the world gets its share (``shapes.draw_varied_batch``).
    """
    drawings = shapes.draw_training_set(random.Random(seed), count, max_side=TRAINING_MAX_SIDE, evenly=evenly)
    images = [drawing.image for drawing in drawings]
    # Resized only: normalising later, in float, turns 7 KB of bytes per drawing into 28 KB. NumPy, not
    # torch, in the drawing processes: torch's thread pool does not survive a fork.
    resized = processor.image_processor(images=images, do_rescale=False, do_normalize=False, return_tensors="np")
    boxes = np.asarray([drawing.box for drawing in drawings], dtype=np.float32).reshape(-1, 4)
    masks = shape_masks([drawing.shape for drawing in drawings], boxes, MODEL_IMAGE_SIZE // PATCH_SIZE * SUB_CELLS)
    pixels = np.clip(np.rint(resized.pixel_values), 0, 255).astype(np.uint8)
    return DrawnChunk(pixels, [drawing.caption for drawing in drawings], boxes, masks)


def build_dataset(processor: GitProcessor, count: int, seed: int, processes: int, evenly: bool = False) -> TrainingSet:
    """Draw the training set in fixed chunks, each from its own seed, so any number of processes draws the same set."""
    chunks = [
        (seed * 1_000_003 + index, min(_CHUNK, count - start)) for index, start in enumerate(range(0, count, _CHUNK))
    ]
    draw = functools.partial(draw_pixels, processor, evenly=evenly)
    if processes == 1:
        drawn = [draw(*chunk) for chunk in chunks]
    else:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            drawn = pool.starmap(draw, chunks)
    captions = [caption for chunk in drawn for caption in chunk.captions]
    # Every caption has the same number of words, so no row needs padding.
    input_ids = processor.tokenizer(captions, padding=True, return_tensors="pt").input_ids
    return TrainingSet(
        pixels=torch.from_numpy(np.concatenate([chunk.pixels for chunk in drawn])),
        input_ids=input_ids,
        boxes=torch.from_numpy(np.concatenate([chunk.boxes for chunk in drawn])),
        masks=torch.from_numpy(np.concatenate([chunk.masks for chunk in drawn])),
    )


def normalise(processor: GitProcessor, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 resized pixels to the model's input, as the image processor rescales and normalises them."""
    image_processor = processor.image_processor
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    rescale_factor = float(image_processor.rescale_factor)
    return (pixels.float() * rescale_factor - mean) / std


def train(
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = TRAIN_SEED,
    drawings: int = DEFAULT_DRAWINGS,
    processes: int = 2,
    init_from: Path | None = None,
    peak_lr: float = PEAK_LEARNING_RATE,
    bf16: bool = True,
    focus: float = DEFAULT_FOCUS,
    evenly: bool = True,
) -> tuple[GitForCausalLM, GitProcessor]:
    """Train on a fixed deterministic set of drawings (mirrored at random); returns the model in eval mode.

    Args:
        processes: draw the set, then train on shares of each batch (averaging gradients), in this many
            processes; the result is deterministic for a given number.
        init_from: start from this checkpoint's weights (same config) rather than from scratch.
        peak_lr: the one-cycle schedule's highest learning rate.
        bf16: run forward and backward under bfloat16 autocast (weights and optimiser stay float32).
        focus: share of each batch drawn by loss (``RowSampler``); 0 draws every row uniformly.
        evenly: draw the set with each aspect-ratio range and centred shapes given their share
            (``shapes.draw_varied_batch``) rather than as the world's images fall.
    """
    if batch_size % processes:
        raise ValueError(f"batch_size {batch_size} must be a multiple of processes {processes}")
    torch.manual_seed(seed)
    processor = build_processor()
    started = time.perf_counter()
    drawn = build_dataset(processor, drawings, seed, processes, evenly)
    logger.info("drew %d training images in %.1f s", len(drawn.pixels), time.perf_counter() - started)
    model = build_model(processor.tokenizer)
    if init_from is not None:
        model.load_state_dict(GitForCausalLM.from_pretrained(init_from).state_dict())
    run = _Run(processor, drawn, steps, batch_size, seed, bf16, peak_lr, focus)
    if processes == 1:
        fit(model, run)
    else:
        # Spawned, not forked: a fork after torch has started its thread pool can hang the child.
        with tempfile.TemporaryDirectory() as folder:
            spawn(_fit_share, args=(processes, folder, model, run), nprocs=processes)  # type: ignore[no-untyped-call]
            model.load_state_dict(torch.load(Path(folder) / "weights.pt"))
    model.train(False)
    return model, processor


@dataclass(frozen=True)
class _Run:
    """What every training process needs: the drawn set and the schedule."""

    processor: GitProcessor
    drawn: TrainingSet
    steps: int
    batch_size: int
    seed: int
    bf16: bool
    peak_lr: float
    focus: float


def fit(model: GitForCausalLM, run: _Run, rank: int = 0, world: int = 1) -> None:
    """Optimise ``model`` in place; process ``rank`` of ``world`` takes every ``world``-th row of each batch.

    The loss is the captions' plus the training-only ``ShapeHeads``' (``model.shape_supervision``), whose
    weights are optimised beside the model's and dropped at the end.
    """
    heads = ShapeHeads(model, torch.Generator().manual_seed(run.seed))
    model.train()
    try:
        _optimise(model, heads, run, rank, world)
    finally:
        heads.detach()


def _optimise(model: GitForCausalLM, heads: ShapeHeads, run: _Run, rank: int, world: int) -> None:
    parameters = [*model.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=run.peak_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=run.peak_lr, total_steps=run.steps, pct_start=0.1)
    order = torch.Generator().manual_seed(run.seed)  # the same batches in every process
    sampler = RowSampler(len(run.drawn.pixels), run.focus)
    for step in range(run.steps):
        rows = sampler.draw(run.batch_size, order)
        # A mirrored drawing has the same caption: every shape is upright and left-right symmetric.
        mirrored = (torch.rand(run.batch_size, generator=order) < 0.5)[rank::world]
        caption_losses, supervision_loss = _losses(model, heads, run, rows[rank::world], mirrored)
        optimizer.zero_grad(set_to_none=True)
        (caption_losses.mean() + SUPERVISION_WEIGHT * supervision_loss).backward()  # type: ignore[no-untyped-call]
        every_loss = torch.zeros(run.batch_size)
        every_loss[rank::world] = caption_losses.detach().float()
        if world > 1:
            _average_gradients(parameters, world)
            distributed.all_reduce(every_loss)  # each process's rows, so every sampler learns the same
        sampler.learn(rows, every_loss)
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if rank == 0 and (step % 100 == 0 or step == run.steps - 1):
            losses = f"caption loss {caption_losses.mean().item():.4f} shape loss {supervision_loss.item():.4f}"
            logger.info("step %d/%d %s (%.0f CPU-s)", step, run.steps, losses, time.process_time())


def _losses(
    model: GitForCausalLM, heads: ShapeHeads, run: _Run, rows: torch.Tensor, mirrored: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's rows: each caption's loss, and the shape heads' loss on the same forward pass."""
    batch = normalise(run.processor, run.drawn.pixels[rows])
    batch[mirrored] = batch[mirrored].flip(-1)
    boxes, masks = mirror(run.drawn.boxes[rows], run.drawn.masks[rows], mirrored)
    # bfloat16 matmuls (AMX / AVX-512 BF16 where the CPU has them) make a step about a fifth cheaper;
    # the loss, the weights and Adam's state stay float32.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.bf16):
        caption_losses = _caption_losses(model, batch, run.drawn.input_ids[rows])
        return caption_losses, heads.loss(boxes, masks)


def _caption_losses(model: GitForCausalLM, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Each caption's cross-entropy, averaged over its tokens (what ``labels=`` averages over the batch)."""
    logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
    image_tokens = logits.shape[1] - input_ids.shape[1]
    # Each text position predicts the next token; no caption is padded, so every token counts.
    predicted = logits[:, image_tokens:-1].float().transpose(1, 2)
    return torch.nn.functional.cross_entropy(predicted, input_ids[:, 1:], reduction="none").mean(dim=1)


class RowSampler:
    """Picks each batch's rows: a ``focus`` share of them in proportion to each row's last loss, the rest uniformly.

    Once colour, size and background are learnt, most drawings cost nothing; the loss that is left sits on
    the few that are hard (small shapes in wide images). Drawing those more often spends the steps where
    they teach something. A row never drawn keeps the loss it starts with, higher than any learnt row's.
    """

    def __init__(self, rows: int, focus: float, initial_loss: float = 1.0) -> None:
        self.focus = focus
        self.losses = torch.full((rows,), initial_loss)

    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        if self.focus == 0.0:
            return torch.randint(len(self.losses), (count,), generator=generator)
        weights = (1 - self.focus) / len(self.losses) + self.focus * self.losses / self.losses.sum()
        return torch.multinomial(weights, count, replacement=True, generator=generator)

    def learn(self, rows: torch.Tensor, losses: torch.Tensor) -> None:
        # A row drawn twice in a batch keeps its higher loss, whatever the order (index_put would not say).
        self.losses.scatter_reduce_(0, rows, losses, "amax", include_self=False)


def _fit_share(rank: int, world: int, folder: str, model: GitForCausalLM, run: _Run) -> None:
    """One training process: its own copy of the model, gradients averaged with the others' every step."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        model = copy.deepcopy(model)  # the parent's tensors arrive in shared memory
        fit(model, run, rank, world)
        if rank == 0:
            torch.save(model.state_dict(), Path(folder) / "weights.pt")
    finally:
        distributed.destroy_process_group()


def _average_gradients(parameters: list[torch.nn.Parameter], world: int) -> None:
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    flat = torch.cat([grad.flatten() for grad in grads])
    distributed.all_reduce(flat)
    flat /= world
    sizes = [grad.numel() for grad in grads]
    for grad, averaged in zip(grads, torch.split(flat, sizes), strict=True):
        grad.copy_(averaged.view_as(grad))


def save(model: GitForCausalLM, processor: GitProcessor, out: Path) -> None:
    """Save as a Hugging Face checkpoint folder (safetensors) that ``from_pretrained`` loads."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.info("saved checkpoint to %s", out)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__)
    parser.add_argument("--out", type=Path, default=EMBEDDED_MODEL_DIR, help="checkpoint folder")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps")
    parser.add_argument(
        "--train-seed",
        type=int,
        default=TRAIN_SEED,
        help="seed of the training set, the weights' start and the data order (judge a recipe over several)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="drawings per step")
    parser.add_argument("--drawings", type=int, default=DEFAULT_DRAWINGS, help="drawings in the training set")
    parser.add_argument("--processes", type=int, default=2, help="processes that draw and train")
    parser.add_argument("--init-from", type=Path, default=None, help="start from this checkpoint's weights")
    parser.add_argument("--lr", type=float, default=PEAK_LEARNING_RATE, help="peak learning rate")
    parser.add_argument("--focus", type=float, default=DEFAULT_FOCUS, help="share of each batch drawn by loss")
    parser.add_argument(
        "--evenly",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw each aspect range and centred shapes by their set shares, shapes.ASPECT_WEIGHTS and "
        "shapes.CENTRED_SHARE (--no-evenly: as the world's images fall)",
    )
    parser.add_argument("--fp32", action="store_true", help="train in float32 rather than bfloat16 autocast")
    parser.add_argument("--evaluate", action="store_true", help="only measure the checkpoint in --out")
    parser.add_argument("--n", type=int, default=100, help="drawings per stratum and drawer in the evaluation")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the evaluation's drawings")
    parser.add_argument("--json", action="store_true", help="print the report as JSON rather than a table")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: train and save, then evaluate (or only evaluate with ``--evaluate``)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    report: dict[str, object] = {}
    if not args.evaluate:
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        model, processor = train(
            steps=args.steps,
            seed=args.train_seed,
            batch_size=args.batch_size,
            drawings=args.drawings,
            processes=args.processes,
            init_from=args.init_from,
            peak_lr=args.lr,
            bf16=not args.fp32,
            focus=args.focus,
            evenly=args.evenly,
        )
        report["train_wall_s"] = round(time.perf_counter() - started, 1)
        report["train_cpu_s"] = round(_cpu_seconds() - cpu_started, 1)
        save(model, processor, args.out)
    # One thread: the model is tiny, and on a busy machine a second thread spins more than it computes
    # (4 times the CPU per caption, measured under load).
    torch.set_num_threads(1)
    cpu_started = _cpu_seconds()
    scores = evaluate(Captioner.load(args.out, device="cpu"), n=args.n, seed=args.seed)
    report["evaluate_cpu_s"] = round(_cpu_seconds() - cpu_started, 1)
    if args.json:
        sys.stdout.write(json.dumps({**report, **scores.as_json()}, indent=2) + "\n")
    else:
        sys.stdout.write("".join(f"{key}: {value}\n" for key, value in report.items()) + scores.table() + "\n")
    return 0


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the drawing processes), user and system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    sys.exit(main())
