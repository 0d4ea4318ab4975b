"""Seconds per training step (teacher forward + student forward/backward + update) per arm, on the
quickstart models; and FAKD's overhead over the term alone (kd+fakd / kd, cwd+fakd / cwd, and dist+fakd / dist with
`loss.fakd.samples` sampled augmentations), at the quickstart's classes and at 19. `plugin` is DIST declared as a
spec's plug-in method (by import path), so its rows show what the plug-in path costs next to the built-in one."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import markdown, median_seconds
from fakd.spec import load_spec
from fakd.train.loop import training_step
from fakd.train.objective import SegmentationObjective
from fakd.train.optim import build_optimizer
from fakd.train.teacher import build_model, model_config
from fakd.vocab import ARMS, arm_named

SPEC = Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml"
PLUGIN = ("methods.plugin.loss=fakd.losses.methods:dist",)
ALL_ARMS = (*ARMS, "plugin", "plugin+fakd")


def make_step(arm: str, num_classes: int) -> Callable[[], None]:
    spec = load_spec(SPEC, [f"data.num_classes={num_classes}", f"arms=[{', '.join(ALL_ARMS)}]", *PLUGIN])
    cfg = spec.run_config(arm)
    teacher = build_model(model_config(cfg.teacher), num_classes, seed=1).eval().requires_grad_(False)
    student = build_model(cfg.student, num_classes, seed=0).train()
    objective = SegmentationObjective(cfg.effective_loss, num_classes, student.feature_dim, total_steps=100,
                                      methods=cfg.arm_methods)
    optimizer = build_optimizer(student, cfg.train)
    size = cfg.data.crop_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(cfg.train.batch_size, 3, *size, generator=generator)
    labels = torch.randint(0, num_classes, (cfg.train.batch_size, *size), generator=generator)

    return lambda: training_step(student, objective, optimizer, images, labels, 50, teacher)


def interleaved_medians(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median step time per arm, the arms taking turns so that machine noise hits all of them alike."""
    for step in steps.values():
        median_seconds(step, repeats=1, warmup=3)
    times: dict[str, list[float]] = {arm: [] for arm in steps}
    for _ in range(repeats):
        for arm, step in steps.items():
            times[arm].append(median_seconds(step, repeats=1, warmup=0))
    return {arm: statistics.median(values) for arm, values in times.items()}


def main(repeats: int = 40) -> list[dict]:
    spec = load_spec(SPEC)
    rows = []
    for num_classes in (spec.defaults.data.num_classes, 19):
        times = interleaved_medians({arm: make_step(arm, num_classes) for arm in ALL_ARMS}, repeats)
        for arm, seconds in times.items():
            base = arm_named(arm).base if arm_named(arm).fakd else None  # FAKD's cost over the term alone
            rows.append({"classes": num_classes, "arm": arm, "s/step": seconds,
                         "vs base arm": seconds / times[base] if base else float("nan")})
    print(f"teacher {spec.defaults.teacher.backbone}, student {spec.defaults.student.backbone}, "
          f"batch {spec.defaults.train.batch_size}, {spec.defaults.data.crop_size} px, "
          f"median of {repeats} interleaved steps\n")
    print(markdown(rows, ["classes", "arm", "s/step", "vs base arm"]))
    return rows


if __name__ == "__main__":
    main()
