"""One Cityscapes-size training step per arm on a GPU: 512×1024 crops, batch 8, 19 classes, DeepLabV3-ResNet101 teacher
(forward only) and DeepLabV3-ResNet18 student at output stride 8, bf16 autocast and channels_last as the trainer
runs them (`fakd.train.loop.training_step`); seconds per step (median, CUDA-synchronised) and peak GPU memory.

Random weights and inputs: the cost of a step does not depend on them. Without a GPU it prints why it skips;
`FAKD_CITYSCAPES_SMOKE=1` runs it on the CPU at 128×256, batch 2, to check that the code runs (not a measurement).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import markdown
from fakd.config import LossConfig, ModelConfig, RunConfig, TeacherConfig, TrainConfig
from fakd.train.loop import Accelerator, training_step
from fakd.train.objective import SegmentationObjective
from fakd.train.optim import build_optimizer
from fakd.train.teacher import build_model, model_config
from fakd.vocab import ARM_TABLE, ARMS

NUM_CLASSES = 19
FULL = {"size": (512, 1024), "batch": 8, "repeats": 10}
SMOKE = {"size": (128, 256), "batch": 2, "repeats": 2}


def run_config(arm: str, size: tuple[int, int], batch: int, device: str) -> RunConfig:
    return RunConfig(
        teacher=TeacherConfig(backbone="resnet101", head="deeplabv3", output_stride=8, head_channels=256),
        student=ModelConfig(backbone="resnet18", head="deeplabv3", output_stride=8, head_channels=256),
        train=TrainConfig(batch_size=batch, amp=True, channels_last=True, device=device, lr=0.01),
        loss=LossConfig(), arm=arm, data={"name": "synthetic", "image_size": list(size), "num_classes": NUM_CLASSES},
    )


def make_step(cfg: RunConfig) -> Callable[[], None]:
    accelerator = Accelerator.for_run(cfg)
    teacher = None
    if cfg.distills:
        teacher = accelerator.model(build_model(model_config(cfg.teacher), NUM_CLASSES, seed=1)).eval()
        teacher.requires_grad_(False)
    student = accelerator.model(build_model(cfg.student, NUM_CLASSES, seed=0)).train()
    objective = SegmentationObjective(cfg.effective_loss, NUM_CLASSES, student.feature_dim, total_steps=100)
    objective = objective.to(accelerator.device)
    optimizer = build_optimizer(student, cfg.train)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(cfg.train.batch_size, 3, *cfg.data.crop_size, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (cfg.train.batch_size, *cfg.data.crop_size), generator=generator)
    return lambda: training_step(student, objective, optimizer, images, labels, 50, teacher, accelerator)


def measure(step: Callable[[], None], repeats: int, cuda: bool) -> float:
    def timed() -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(2):
        timed()
    return statistics.median(timed() for _ in range(repeats))


def main() -> list[dict]:
    cuda = torch.cuda.is_available()
    smoke = os.environ.get("FAKD_CITYSCAPES_SMOKE") == "1"
    if not cuda and not smoke:
        print("no GPU: skipped (a Cityscapes-size step needs one; FAKD_CITYSCAPES_SMOKE=1 runs the code on the CPU "
              "at 128×256, batch 2, as a check, not a measurement)")
        return []
    setting = FULL if cuda else SMOKE
    rows = []
    for arm in ARMS:
        cfg = run_config(arm, setting["size"], setting["batch"], "cuda" if cuda else "cpu")
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        step = make_step(cfg)
        seconds = measure(step, setting["repeats"], cuda)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        rows.append({"arm": arm, "s/step": seconds, "peak GiB": peak})
        del step
    times = {row["arm"]: row["s/step"] for row in rows}
    for row in rows:
        base = ARM_TABLE[row["arm"]].base
        row["vs base arm"] = row["s/step"] / times[base] if base else float("nan")
    device = torch.cuda.get_device_name(0) if cuda else "CPU (smoke run, not a measurement)"
    print(f"{device}: DeepLabV3-R101 teacher, DeepLabV3-R18 student, OS8, {setting['size'][0]}×{setting['size'][1]}, "
          f"batch {setting['batch']}, {NUM_CLASSES} classes, bf16 autocast on CUDA, median of {setting['repeats']} "
          "steps\n")
    print(markdown(rows, ["arm", "s/step", "vs base arm", "peak GiB"]))
    return rows


if __name__ == "__main__":
    main()
