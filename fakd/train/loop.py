"""The iteration-based training loop shared by teachers and students."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fakd.config import RunConfig
from fakd.metrics import ConfusionMatrix
from fakd.models import Segmenter, count_parameters
from fakd.train.checkpoint import (
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng,
    write_checkpoint,
)
from fakd.train.data import Splits, eval_loader, train_loader
from fakd.train.distributed import DistContext, sync_batchnorm
from fakd.train.objective import SegmentationObjective
from fakd.train.optim import build_optimizer, poly_schedule
from fakd.vocab import METRIC

Reporter = Callable[[dict[str, Any], "str | None"], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (detected at the end of the evaluation window `iteration`)."""

    def __init__(self, message: str, iteration: int) -> None:
        super().__init__(message)
        self.iteration = iteration


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
    return torch.device(name)


@dataclass
class Accelerator:
    """Device placement, bf16 autocast and channels_last, all switched on only on CUDA."""

    device: torch.device
    amp: bool
    channels_last: bool

    @classmethod
    def for_run(cls, cfg: RunConfig) -> Accelerator:
        device = resolve_device(cfg.train.device)
        cuda = device.type == "cuda"
        return cls(device, cfg.train.amp and cuda, cfg.train.channels_last and cuda)

    def model(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: Segmenter, loader: DataLoader, num_classes: int, accelerator: Accelerator, dist: DistContext | None = None
) -> dict[str, Any]:
    """mIoU and per-class IoU from one confusion matrix summed over the whole split (data-parallel: each process
    scores its part of the split, see `eval_loader`, and the matrices are summed over the processes)."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes)
    for images, labels in loader:
        with accelerator.autocast():
            logits = model(accelerator.images(images)).logits
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        matrix.update(logits.argmax(1).cpu(), labels)
    if dist is not None and dist.distributed:
        matrix.matrix = dist.all_reduce_sum(matrix.matrix)
    model.train(was_training)
    summary = matrix.summary()
    return {METRIC: summary["miou"], "val_pixel_acc": summary["pixel_acc"], "val_iou": summary["per_class_iou"]}


@dataclass
class TrainingState:
    """What a checkpoint holds besides the RNG streams."""

    model: nn.Module
    objective: SegmentationObjective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def state_dict(
        self, iteration: int, metrics: dict[str, Any], rng_by_rank: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """The checkpoint; data-parallel, with the world size and every process's RNG streams (`rng_by_rank`)."""
        state = {
            "iteration": iteration,
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "metrics": metrics,
            "rng": capture_rng() if rng_by_rank is None else rng_by_rank[0],
        }
        if rng_by_rank is not None:
            state.update(world_size=len(rng_by_rank), rng_by_rank=rng_by_rank)
        return state

    def load(self, state: dict[str, Any], dist: DistContext | None = None) -> int:
        """Restore a checkpoint in every process (each gets its own RNG streams back); the iteration it holds."""
        dist = dist or DistContext()
        saved_world = int(state.get("world_size", 1))
        if saved_world != dist.world_size:
            raise ValueError(f"the checkpoint was written by a run of {saved_world} worker(s) and this run has "
                             f"{dist.world_size}: the data stream would not continue where it stopped")
        self.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng_by_rank"][dist.rank] if dist.distributed else state["rng"])
        return int(state["iteration"])


def training_step(
    model: Segmenter,
    objective: SegmentationObjective,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    step: int,
    teacher: nn.Module | None = None,
    accelerator: Accelerator | None = None,
    dist: DistContext | None = None,
) -> dict[str, torch.Tensor | float]:
    """One update: student forward (and the frozen teacher's, when the objective distills), loss, backward,
    optimizer step. Returns the loss terms, left on the device."""
    return accumulated_step(model, objective, optimizer, [(images, labels)], step, teacher, accelerator, dist)


def accumulated_step(
    model: Segmenter,
    objective: SegmentationObjective,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    step: int,
    teacher: nn.Module | None = None,
    accelerator: Accelerator | None = None,
    dist: DistContext | None = None,
) -> dict[str, torch.Tensor | float]:
    """One optimizer update from the micro-batches `batches` (moved to the device one at a time): each is forwarded
    (with the frozen teacher's `teacher(images).logits` when the objective distills) and back-propagated with its
    loss divided by their number, so the update applies the mean of their gradients; every micro-batch updates
    the FAKD covariance. Returns the loss terms averaged over the micro-batches, left on the device.

    This equals one update on the concatenated batch only where the loss of the whole batch is the mean of the
    micro-batch losses and samples do not interact: KD and CWD terms (equal pixel and map counts per micro-batch)
    and CE without ignored pixels; BatchNorm in train mode normalises each micro-batch with its own statistics,
    and FAKD's bound for an early micro-batch uses a covariance that has not yet seen the later ones.

    Data-parallel (`dist` of W processes, each with its slice of the global micro-batches): the gradients are
    averaged over the processes before the optimizer step, and the objective's covariance pools every process's
    statistics before the bound uses it, so W processes × batch b make the update of one process × batch W·b under
    the conditions above, FAKD at any strength included (per-process train-mode BatchNorm aside: SyncBatchNorm,
    which `fit` switches on for GPU runs, normalises with the global batch). The returned terms are this
    process's own.
    """
    optimizer.zero_grad(set_to_none=True)
    count = len(batches)
    sums: dict[str, torch.Tensor | float] = {}
    for images, labels in batches:
        if accelerator is not None:
            images, labels = accelerator.images(images), labels.to(accelerator.device, non_blocking=True)
        with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
            output = model(images)
            taught = None
            if objective.needs_teacher:
                with torch.no_grad():
                    taught = teacher(images)
        loss, terms = objective(output, labels, step, model.classifier_weight,
                                None if taught is None else taught.logits, getattr(taught, "features", None))
        (loss if count == 1 else loss / count).backward()
        for name, value in terms.items():  # floats (the FAKD strength) are the same for every micro-batch
            sums[name] = sums[name] + value if isinstance(value, torch.Tensor) and name in sums else value
    if dist is not None:
        dist.average_gradients(model.parameters())
    optimizer.step()
    if count == 1:
        return sums
    return {name: value / count if isinstance(value, torch.Tensor) else value for name, value in sums.items()}


def _progress(total: int, start: int, enabled: bool | None, description: str) -> Any:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=description, dynamic_ncols=True, leave=False)


@dataclass
class Window:
    """The iterations since the last evaluation: their loss terms, summed where they are (tensors stay on the device:
    no sync per step), and when the window began."""

    dist: DistContext
    sums: dict[str, torch.Tensor | float] = field(default_factory=lambda: defaultdict(float))
    iters: int = 0
    began: float = field(default_factory=time.perf_counter)

    def add(self, terms: dict[str, torch.Tensor | float]) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums[name] + value
        self.iters += 1

    def seconds(self) -> float:
        return time.perf_counter() - self.began

    def averages(self) -> dict[str, float]:
        """Each term's mean over the window's iterations; data-parallel, also over the processes (floats, the FAKD
        strength, are the same in every process and stay as they are)."""
        sums, iters, dist = self.sums, self.iters, self.dist
        if not dist.distributed:
            return {name: float(value) / iters for name, value in sums.items()}
        names = sorted(name for name, value in sums.items() if isinstance(value, torch.Tensor))
        averages = {name: float(value) / iters for name, value in sums.items() if name not in names}
        if names:
            pooled = dist.all_reduce_sum(torch.stack([sums[name].detach().double() for name in names]))
            averages.update({name: float(value) / (iters * dist.world_size)
                             for name, value in zip(names, pooled.tolist(), strict=True)})
        return {name: averages[name] for name in sums}


class Training:
    """One `fit` of a model: it on its device, its objective, optimizer and schedule, the frozen teacher, and the
    directory of its checkpoints. Its methods are the loop's steps: resume, step, evaluate, checkpoint."""

    def __init__(self, cfg: RunConfig, model: Segmenter, splits: Splits, work_dir: Path,
                 teacher: nn.Module | None, dist: DistContext) -> None:
        self.cfg, self.splits, self.dist = cfg, splits, dist
        self.total = cfg.train.iters
        self.accelerator = Accelerator.for_run(cfg)
        model = self.accelerator.model(model)
        if dist.distributed and self.accelerator.device.type == "cuda":
            model = sync_batchnorm(model)
        self.model = model
        self.objective = SegmentationObjective(
            cfg.effective_loss, splits.num_classes, model.feature_dim, total_steps=self.total,
            all_reduce=dist.all_reduce_sum if dist.distributed else None, methods=cfg.arm_methods,
        ).to(self.accelerator.device)
        if self.objective.needs_teacher and teacher is None:
            raise ValueError(f"arm {cfg.arm!r} distills: pass a teacher")
        self.teacher = None if teacher is None else self.accelerator.model(teacher).eval().requires_grad_(False)
        optimizer = build_optimizer(model, cfg.train)
        self.state = TrainingState(model, self.objective, optimizer, poly_schedule(optimizer, self.total,
                                                                                    cfg.train.poly_power))
        self.checkpoints = work_dir / "checkpoints"

    def resume(self, resume_from: str | Path | None) -> tuple[int, dict[str, Any], str | None]:
        """The iteration training continues from, its metrics and its checkpoint: from `resume_from` (a checkpoint
        directory, or "latest" in this run's checkpoints), or from scratch (0, {}, None). Data-parallel, every
        process starts from rank 0's model, with RNG streams of its own."""
        dist = self.dist
        if resume_from == "latest":
            resume_from = dist.broadcast_object(latest_checkpoint(self.checkpoints) if dist.is_main else None)
        if dist.distributed:  # one model everywhere; per-process RNG streams (dropout masks differ between processes)
            dist.broadcast_module_(self.model)
            torch.manual_seed(self.cfg.train.seed * 1_000_003 + dist.rank)
        if not resume_from:
            return 0, {}, None
        saved = load_checkpoint(resume_from)
        return self.state.load(saved, self.dist), saved["metrics"], str(resume_from)

    def iterations(self, start: int) -> Iterator[tuple[int, list[Any]]]:
        """Each remaining iteration with its micro-batches: micro-batch j = step × accumulate + k is a pure function
        of (seed, j), so a resumed run sees the stream it would have seen."""
        accumulate = self.cfg.train.accumulate
        stream = iter(train_loader(self.cfg, self.splits.train, self.total * accumulate, start * accumulate,
                                   self.dist))
        for iteration in range(start + 1, self.total + 1):
            yield iteration, [next(stream) for _ in range(accumulate)]

    def step(self, iteration: int, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
             ) -> dict[str, torch.Tensor | float]:
        terms = accumulated_step(self.model, self.objective, self.state.optimizer, batches, iteration - 1,
                                 self.teacher, self.accelerator, self.dist)
        self.state.scheduler.step()
        return terms

    def evaluates_at(self, iteration: int) -> bool:
        return iteration % self.cfg.train.eval_every == 0 or iteration == self.total

    def evaluate(self, iteration: int, window: Window, evaluation: DataLoader, parameters: int) -> dict[str, Any]:
        """The window's metrics: its mean losses (a non-finite one stops the run), learning rate, speed, and the
        model's scores on the evaluation split."""
        averages = window.averages()
        if not math.isfinite(averages["loss"]):
            raise NonFiniteLossError(f"non-finite loss in iterations {iteration - window.iters + 1}-{iteration} "
                                     f"({self.cfg.arm}): {averages}", iteration)
        seconds = window.seconds()
        if self.dist.distributed:  # per-process BatchNorm statistics (CPU) differ: evaluate and save rank 0's
            self.dist.broadcast_buffers_(self.model)
        metrics = {
            "iteration": iteration,
            **averages,
            "lr": self.state.optimizer.param_groups[0]["lr"],
            "seconds_per_iter": seconds / window.iters,
            "params": parameters,
            **evaluate(self.model, evaluation, self.splits.num_classes, self.accelerator, self.dist),
        }
        metrics["window_seconds"] = window.seconds()
        return metrics

    def checkpoint(self, iteration: int, metrics: dict[str, Any]) -> str:
        """Write the full state (rank 0; with every process's RNG streams) and return its directory, once it is
        complete in every process."""
        dist = self.dist
        rng_by_rank = dist.all_gather_object(capture_rng()) if dist.distributed else None
        directory = None
        if dist.is_main:
            directory = write_checkpoint(self.state.state_dict(iteration, metrics, rng_by_rank), self.checkpoints,
                                         iteration)
        return str(dist.broadcast_object(directory))

    def prune(self, keep: str) -> None:
        if self.dist.is_main:
            prune_checkpoints(self.checkpoints, keep=Path(keep))


def fit(
    cfg: RunConfig,
    model: Segmenter,
    splits: Splits,
    work_dir: Path,
    *,
    teacher: nn.Module | None = None,
    report: Reporter | None = None,
    resume_from: str | Path | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    label: str | None = None,
    replay: bool = False,
    dist: DistContext | None = None,
) -> dict[str, Any]:
    """Train `model` for `cfg.train.iters` iterations (optimizer steps, each over `cfg.train.accumulate`
    micro-batches of `cfg.train.batch_size`) on `splits` with the arm's objective; `teacher` is frozen and called
    as `teacher(images).logits` (a `Segmenter`, or a `fakd.models.zoo.ZooTeacher`).

    Every `eval_every` iterations (and at the end) it evaluates, writes a full-state checkpoint under
    `work_dir/checkpoints` and calls `report(metrics, checkpoint_dir)`. With `resume_from` (a checkpoint
    directory, or "latest" for the newest one in `work_dir`), training continues exactly where it stopped;
    with `replay` the resumed checkpoint's metrics are reported once more first (for a consumer that may
    have missed them). `label` names the run in logs (default: the arm). Returns the last metrics.

    Data-parallel (`dist`, by default `DistContext.current()`: every process of an initialised `torch.distributed`
    group calls `fit` alike): each process trains on its slice of every global batch (`train_loader`), gradients
    and the FAKD covariance statistics are pooled over the processes, GPU runs use SyncBatchNorm, the metrics
    cover the whole evaluation split and the window's losses are averaged over the processes; rank 0 alone writes
    checkpoints and logs, every process reads a checkpoint it resumes from and calls `report` (after the checkpoint
    is complete). The effective batch is batch_size × accumulate × world size.
    """
    dist = dist if dist is not None else DistContext.current()
    run = Training(cfg, model, splits, work_dir, teacher, dist)
    start, metrics, resumed = run.resume(resume_from)
    if resumed and replay and report is not None:
        report(metrics, resumed)
    if start >= run.total:
        return metrics

    evaluation = eval_loader(cfg, splits.evaluation, dist)
    label = label or cfg.arm
    parameters = count_parameters(run.model)
    bar = _progress(run.total, start, progress, f"{label} {cfg.student.backbone}") if dist.is_main else None
    window = Window(dist)
    run.model.train()
    for iteration, batches in run.iterations(start):
        window.add(run.step(iteration, batches))
        if bar is not None:
            bar.update(1)
        if not run.evaluates_at(iteration):
            continue
        metrics = run.evaluate(iteration, window, evaluation, parameters)
        if bar is not None:
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        directory = run.checkpoint(iteration, metrics)
        if log is not None and dist.is_main:
            log(f"[{label}] iter {iteration}/{run.total} loss {metrics['loss']:.4f} val mIoU {metrics[METRIC]:.4f}")
        if report is not None:
            report(metrics, directory)
        run.prune(directory)
        window = Window(dist)
    if bar is not None:
        bar.close()
    return metrics
