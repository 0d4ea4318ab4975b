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
from fakd.train.checkpoint import atomic_save, latest_checkpoint, safe_load
from fakd.train.data import build_splits
from fakd.train.loop import Reporter, fit

TEACHER_FILE = "teacher.pt"
KEY = "teacher.checkpoint"
SHOWN_KEYS = 3


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
        payload = read_teacher_file(path)
        return TeacherArtifact(path, payload.get("key", "external"), payload.get("metrics", {}))
    key = teacher_key(cfg)
    directory = cache_root / key
    path = directory / TEACHER_FILE
    with _exclusive(directory):
        if not path.is_file():
            _train(cfg, directory, key, report=report, progress=progress, log=log)
    return TeacherArtifact(path, key, read_teacher_file(path).get("metrics", {}))


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


def read_teacher_file(path: Path) -> dict[str, Any]:
    """A teacher file, read safely: {"model": state dict, ...}; a bare state dict is wrapped. UserError if not one."""
    payload = safe_load(path, "teacher checkpoint", key=KEY)
    wrapped = isinstance(payload, dict) and isinstance(payload.get("model"), dict)
    state = payload["model"] if wrapped else payload
    if not _is_state_dict(state):
        raise UserError(
            f"{path} is not a teacher checkpoint: expected a state dict of tensors (or a dict with one under "
            f"'model'), found {_describe(state)}", key=KEY,
        )
    if not wrapped:
        return {"model": state}
    key, metrics = payload.get("key"), payload.get("metrics")
    return {**payload, "key": key if isinstance(key, str) else "external",
            "metrics": metrics if isinstance(metrics, dict) else {}}


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, dict) and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _describe(value: Any) -> str:
    if not isinstance(value, dict):
        return f"an object of type {type(value).__name__}"
    if not value:
        return "an empty dict"
    key, item = next((k, v) for k, v in value.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
    return f"a dict whose entry {key!r} is of type {type(item).__name__}"


def _shape(shape: torch.Size) -> str:
    return "x".join(str(n) for n in shape) or "scalar"


def _preview(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def _classifier_key(model: Segmenter) -> str | None:
    weight = model.head.classifier.weight
    return next((name for name, param in model.named_parameters() if param is weight), None)


def _mismatch(state: dict[str, torch.Tensor], model: Segmenter) -> str | None:
    """How a state dict fails to fit `model` (the class count first), or None when it fits."""
    expected, classifier = model.state_dict(), _classifier_key(model)
    if classifier in state and classifier in expected and state[classifier].shape[1:] == expected[classifier].shape[1:]:
        found = state[classifier].shape[0]
        if found != model.num_classes:
            return f"it holds a teacher for {found} classes but the dataset has {model.num_classes}"
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"{len(keys)} {label} keys ({_preview(keys)})" for label, keys in
                 (("missing", missing), ("unexpected", unexpected)) if keys]
        return "its keys do not match: " + "; ".join(parts)
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            return f"{name} has shape {_shape(state[name].shape)} where the teacher needs {_shape(tensor.shape)}"
    return None


def _meta_teacher(cfg: RunConfig, num_classes: int) -> Segmenter:
    """The configured teacher on the meta device: shapes only, no memory, the global RNG left as it was."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_model(model_config(cfg.teacher), num_classes, seed=0, pretrained=False)


def _architecture(cfg: RunConfig, num_classes: int) -> str:
    return f"a {cfg.teacher.backbone} {cfg.teacher.head} teacher with {num_classes} classes"


def check_teacher_checkpoint(path: str | Path, cfg: RunConfig, num_classes: int) -> None:
    """A UserError (key teacher.checkpoint, one line naming the file) unless `path` can be read safely and holds
    a state dict that fits `cfg.teacher` with `num_classes` classes; run it before a study starts."""
    path = Path(path)
    payload = read_teacher_file(path)
    recorded = payload.get("num_classes")
    if isinstance(recorded, int) and recorded != num_classes:
        raise UserError(f"{path} holds a teacher for {recorded} classes but the dataset has {num_classes}", key=KEY)
    problem = _mismatch(payload["model"], _meta_teacher(cfg, num_classes))
    if problem:
        raise UserError(f"{path} does not fit {_architecture(cfg, num_classes)}: {problem}", key=KEY)


def load_teacher(artifact: TeacherArtifact, cfg: RunConfig, num_classes: int) -> Segmenter:
    """The frozen teacher network in eval mode."""
    state = read_teacher_file(artifact.path)["model"]
    model = build_model(model_config(cfg.teacher), num_classes, seed=0, pretrained=False)
    problem = _mismatch(state, model)
    if problem:
        raise UserError(f"{artifact.path} does not fit {_architecture(cfg, num_classes)}: {problem}", key=KEY)
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)
