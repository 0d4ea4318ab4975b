"""Teachers: trained once per configuration, cached under a hash of that configuration, then frozen."""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fakd.config import ModelConfig, RunConfig, config_hash
from fakd.errors import UserError
from fakd.models import Segmenter, build_segmenter
from fakd.train.checkpoint import atomic_save, latest_checkpoint
from fakd.train.data import build_splits
from fakd.train.loop import Reporter, fit

TEACHER_FILE = "teacher.pt"


@dataclass(frozen=True)
class TeacherArtifact:
    path: Path
    key: str
    metrics: dict[str, Any]


def teacher_key(cfg: RunConfig) -> str:
    """Hash of everything that determines the teacher's weights."""
    run = cfg.teacher_run()
    return config_hash(
        cfg.teacher.model_dump(exclude={"checkpoint"}),
        run.train.model_dump(exclude={"device", "eval_batch_size"}),
        run.data.model_dump(exclude={"num_workers", "holdout_fraction"}),
    )


def model_config(cfg: ModelConfig) -> ModelConfig:
    return ModelConfig(**cfg.model_dump(include=set(ModelConfig.model_fields)))


def build_model(cfg: ModelConfig, num_classes: int, seed: int, pretrained: bool | str | None = None) -> Segmenter:
    """A segmenter initialised from `seed` (and from pretrained weights where the config names them)."""
    torch.manual_seed(seed)
    return build_segmenter(
        cfg.backbone, num_classes, head=cfg.head, output_stride=cfg.output_stride,
        pretrained=cfg.pretrained if pretrained is None else pretrained, head_channels=cfg.head_channels,
    )


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """One process at a time trains a given teacher; the others wait and then reuse it."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_teacher(
    cfg: RunConfig,
    cache_root: Path,
    *,
    report: Reporter | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> TeacherArtifact:
    """The teacher of `cfg`: the named checkpoint, the cached one, or one trained now and cached."""
    if cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint)
        payload = _read(path)
        return TeacherArtifact(path, payload.get("key", "external"), payload.get("metrics", {}))
    key = teacher_key(cfg)
    directory = cache_root / key
    path = directory / TEACHER_FILE
    with _exclusive(directory):
        if not path.is_file():
            _train(cfg, directory, key, report=report, progress=progress, log=log)
    return TeacherArtifact(path, key, _read(path).get("metrics", {}))


def _train(
    cfg: RunConfig, directory: Path, key: str, *, report: Reporter | None, progress: bool | None,
    log: Callable[[str], None] | None,
) -> None:
    run = cfg.teacher_run()
    splits = build_splits(run)
    model = build_model(run.student, splits.num_classes, run.train.seed)
    work = directory / "work"
    if log is not None:
        log(f"training teacher {run.student.backbone} ({key}) for {run.train.iters} iterations")
    resume = "latest" if latest_checkpoint(work / "checkpoints") else None
    metrics = fit(run, model, splits, work, report=report, resume_from=resume, progress=progress, log=log,
                  label="teacher")
    payload = {
        "key": key,
        "model": {k: v.cpu() for k, v in model.state_dict().items()},
        "model_config": run.student.model_dump(mode="json"),
        "num_classes": splits.num_classes,
        "metrics": metrics,
    }
    atomic_save(payload, directory / TEACHER_FILE)
    (directory / "meta.json").write_text(json.dumps(
        {"key": key, "config": cfg.teacher_run().model_dump(mode="json"), "metrics": metrics}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def _read(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise UserError(f"cannot read teacher checkpoint {path}: {exc}", key="teacher.checkpoint") from None
    return payload if isinstance(payload, dict) and "model" in payload else {"model": payload}


def load_teacher(artifact: TeacherArtifact, cfg: RunConfig, num_classes: int) -> Segmenter:
    """The frozen teacher network in eval mode."""
    model = build_model(model_config(cfg.teacher), num_classes, seed=0, pretrained=False)
    try:
        model.load_state_dict(_read(artifact.path)["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise UserError(
            f"{artifact.path} does not fit a {cfg.teacher.backbone} {cfg.teacher.head} teacher with "
            f"{num_classes} classes ({first})", key="teacher.checkpoint") from None
    return model.eval().requires_grad_(False)
