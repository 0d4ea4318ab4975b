"""Teachers: trained once per configuration, cached under a hash of that configuration, then frozen.

A model-zoo teacher (`teacher.source: mmseg | torchvision`) is never trained: its file is copied beside the
cache (or into the study), evaluated once on the validation split, and loaded frozen by every run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fakd.atomic import copy_atomic, write_atomic
from fakd.config import ModelConfig, RunConfig, TeacherConfig, config_hash
from fakd.errors import UserError
from fakd.models import Segmenter, build_segmenter
from fakd.models.zoo import ZooSegmenter, ZooTeacher, load_mmseg, load_torchvision
from fakd.train.checkpoint import atomic_save, safe_load
from fakd.train.data import build_splits, eval_loader
from fakd.train.distributed import DistContext
from fakd.train.loop import Accelerator, Reporter, evaluate, fit

TEACHER_FILE = "teacher.pt"
ZOO_META = "meta.json"
KEY = "teacher.checkpoint"
SHOWN_KEYS = 3


@dataclass(frozen=True)
class TeacherArtifact:
    path: Path
    key: str
    metrics: dict[str, Any]


def teacher_key(cfg: RunConfig, workers: int = 1) -> str:
    """Hash of everything that determines the teacher's weights (a trained teacher: `teacher.source: timm`), the
    number of data-parallel `workers` it trains with included (each takes a batch of `train.batch_size`).

    Keys added later (`source`, `arch`; `accumulate` while it is 1; `workers` while it is 1) are left out, so
    existing caches keep their key.
    """
    run = cfg.teacher_run()
    train_exclude = {"device", "eval_batch_size"} | ({"accumulate"} if run.train.accumulate == 1 else set())
    parts: list[Any] = [
        cfg.teacher.model_dump(exclude={"checkpoint", "source", "arch"}),
        run.train.model_dump(exclude=train_exclude),
        run.data.model_dump(exclude={"num_workers", "holdout_fraction"}),
    ]
    if workers > 1:
        parts.append({"workers": workers})
    return config_hash(*parts)


def model_config(cfg: ModelConfig | TeacherConfig) -> ModelConfig:
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
    dist: DistContext | None = None,
) -> TeacherArtifact:
    """The teacher of `cfg`: the named checkpoint, the cached one, or one trained now and cached.

    A zoo teacher's file is copied to `cache_root/<key>/teacher.pt` and evaluated once there (see `zoo_teacher`).
    Data-parallel (`dist`, by default `DistContext.current()`; every process calls this alike), rank 0 holds the
    cache lock and decides whether to train, every process trains, rank 0 writes the teacher."""
    if cfg.teacher.is_zoo:
        return zoo_teacher(cfg, cache_root, log=log)
    if cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint)
        payload = read_teacher_file(path)
        return TeacherArtifact(path, payload.get("key", "external"), payload.get("metrics", {}))
    dist = dist if dist is not None else DistContext.current()
    key = teacher_key(cfg, dist.world_size)
    directory = cache_root / key
    path = directory / TEACHER_FILE
    with _exclusive(directory) if dist.is_main else contextlib.nullcontext():
        if dist.broadcast_object(not path.is_file() if dist.is_main else None):
            _train(cfg, directory, key, report=report, progress=progress, log=log, dist=dist)
        dist.barrier()  # the teacher file is complete before any process reads it
    return TeacherArtifact(path, key, read_teacher_file(path).get("metrics", {}))


def _train(
    cfg: RunConfig, directory: Path, key: str, *, report: Reporter | None, progress: bool | None,
    log: Callable[[str], None] | None, dist: DistContext,
) -> None:
    run = cfg.teacher_run()
    splits = build_splits(run)
    model = build_model(run.student, splits.num_classes, run.train.seed)
    work = directory / "work"
    if log is not None and dist.is_main:
        workers = f" on {dist.world_size} workers" if dist.distributed else ""
        log(f"training teacher {run.student.backbone} ({key}) for {run.train.iters} iterations{workers}")
    metrics = fit(run, model, splits, work, report=report, resume_from="latest", progress=progress, log=log,
                  label="teacher", dist=dist)
    if not dist.is_main:
        return
    payload = {
        "key": key,
        "model": {k: v.cpu() for k, v in model.state_dict().items()},
        "model_config": run.student.model_dump(mode="json"),
        "num_classes": splits.num_classes,
        "metrics": metrics,
    }
    atomic_save(payload, directory / TEACHER_FILE)
    write_atomic(directory / "meta.json", json.dumps(
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
    if cfg.teacher.is_zoo:
        load_zoo_network(path, cfg.teacher, num_classes)
        return
    payload = read_teacher_file(path)
    recorded = payload.get("num_classes")
    if isinstance(recorded, int) and recorded != num_classes:
        raise UserError(f"{path} holds a teacher for {recorded} classes but the dataset has {num_classes}", key=KEY)
    problem = _mismatch(payload["model"], _meta_teacher(cfg, num_classes))
    if problem:
        raise UserError(f"{path} does not fit {_architecture(cfg, num_classes)}: {problem}", key=KEY)


def load_teacher(artifact: TeacherArtifact, cfg: RunConfig, num_classes: int) -> Segmenter | ZooTeacher:
    """The frozen teacher network in eval mode (`teacher(images).logits`), built as `cfg.teacher.source` says."""
    if cfg.teacher.is_zoo:
        return ZooTeacher(load_zoo_network(artifact.path, cfg.teacher, num_classes))
    state = read_teacher_file(artifact.path)["model"]
    model = build_model(model_config(cfg.teacher), num_classes, seed=0, pretrained=False)
    problem = _mismatch(state, model)
    if problem:
        raise UserError(f"{artifact.path} does not fit {_architecture(cfg, num_classes)}: {problem}", key=KEY)
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------- model-zoo teachers


def load_zoo_network(path: str | Path, teacher: TeacherConfig, num_classes: int | None) -> ZooSegmenter:
    """The frozen zoo network in `path` (read with weights_only=True); a one-line UserError (key teacher.checkpoint,
    naming the file) unless it loads and, when `num_classes` is given, has exactly that many classes."""
    if teacher.source == "mmseg":
        network = load_mmseg(path, teacher.output_stride)
    elif teacher.source == "torchvision":
        network = load_torchvision(str(teacher.arch), path)
    else:
        raise ValueError(f"teacher.source {teacher.source!r} is not a model zoo")
    if num_classes is not None and network.num_classes != num_classes:
        raise UserError(f"{path} holds a teacher for {network.num_classes} classes ({teacher.source} checkpoint) but "
                        f"the dataset has {num_classes}", key=KEY)
    return network


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def zoo_teacher_key(cfg: RunConfig, path: str | Path) -> str:
    """`<source>-<hash>` of the file's bytes, how it is read and the data it is evaluated on."""
    return f"{cfg.teacher.source}-" + config_hash(
        cfg.teacher.model_dump(exclude={"checkpoint"}), {"sha256": file_digest(path)},
        cfg.data.model_dump(exclude={"num_workers", "holdout_fraction"}),
    )


def copy_teacher_file(source: str | Path, target: Path) -> None:
    """Copy `source` to `target` through a temporary file: `target` is whole or absent."""
    copy_atomic(source, target)


def evaluate_teacher(path: str | Path, cfg: RunConfig) -> dict[str, Any]:
    """The zoo teacher in `path` evaluated on the validation split (phase final), as the harness evaluates students
    (`fakd.train.loop.evaluate`, its eval loader and device); `val_miou`, `val_iou`, `val_pixel_acc`, `params`.

    The network's own full-size prediction is scored, so the number is that of the published model."""
    run = cfg.model_copy(update={"split": "val"})
    splits = build_splits(run)
    accelerator = Accelerator.for_run(run)
    network = load_zoo_network(path, run.teacher, splits.num_classes)
    model = accelerator.model(ZooTeacher(network, full_resolution=True))
    metrics = evaluate(model, eval_loader(run, splits.evaluation), splits.num_classes, accelerator)
    return {**metrics, "params": sum(p.numel() for p in network.parameters())}


def zoo_teacher(
    cfg: RunConfig, cache_root: Path, *, log: Callable[[str], None] | None = None
) -> TeacherArtifact:
    """The zoo teacher of `cfg`: its file copied to `cache_root/<key>/teacher.pt` and evaluated once (the metrics
    are kept in `meta.json` beside it and reused)."""
    source = Path(str(cfg.teacher.checkpoint))
    key = zoo_teacher_key(cfg, source)
    directory = cache_root / key
    meta = directory / ZOO_META
    with _exclusive(directory):
        if not meta.is_file():
            copy_teacher_file(source, directory / TEACHER_FILE)
            if log is not None:
                log(f"evaluating teacher {cfg.teacher.label} ({key}) on the validation split")
            metrics = evaluate_teacher(directory / TEACHER_FILE, cfg)
            record = {"key": key, "source": cfg.teacher.source, "checkpoint": str(source), "metrics": metrics}
            write_atomic(meta, json.dumps(record, indent=2))
    return TeacherArtifact(directory / TEACHER_FILE, key, json.loads(meta.read_text())["metrics"])
