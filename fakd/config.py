"""Typed configuration of one teacher→student run: what the trainer receives.

Every model forbids unknown keys, so a typo in a spec is an error rather than a silently ignored value.
The study-level sections (arms, search, resources, tracking) live in `fakd.spec`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from fakd.vocab import (
    DATASETS,
    DEFAULT_ARM,
    DISTILL_TERMS,
    FAKD_FORMS,
    FAKD_SUFFIX,
    HEADS,
    REFERENCE_ARM,
    SCHEDULES,
    SPLITS,
    TEACHER_SOURCES,
    TORCHVISION_ARCHS,
    ZOO_SOURCES,
    Arm,
    arm_named,
    arm_names,
)

HeadName = Literal[HEADS]  # type: ignore[valid-type]
DatasetName = Literal[DATASETS]  # type: ignore[valid-type]
Split = Literal[SPLITS]  # type: ignore[valid-type]
TeacherSource = Literal[TEACHER_SOURCES]  # type: ignore[valid-type]
TorchvisionArch = Literal[TORCHVISION_ARCHS]  # type: ignore[valid-type]
SPLIT_OF_PHASE = {"search": "holdout", "final": "val"}  # RunConfig.phase, before it was named split
FakdForm = Literal[FAKD_FORMS]  # type: ignore[valid-type]
Schedule = Literal[SCHEDULES]  # type: ignore[valid-type]


class Strict(BaseModel):
    """Immutable, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    name: DatasetName = "synthetic"
    root: str | None = None
    image_size: int | tuple[int, int] = Field(64, description="training crop (synthetic: also the image size)")
    num_classes: int = Field(8, ge=2, description="synthetic only")
    train_length: int = Field(512, ge=2, description="synthetic only: images in the training split")
    val_length: int = Field(64, ge=1, description="synthetic only: images in the validation split")
    holdout_fraction: float = Field(0.15, gt=0.0, lt=1.0, description="training images held out for search")
    scale_range: tuple[float, float] = (0.5, 2.0)
    use_sbd: bool = Field(True, description="voc only: train on SegmentationClassAug when present")
    unknown_labels: Literal["error", "ignore"] = Field(
        "error", description="a label value outside the dataset's label table: an error naming the file, or ignored"
    )
    seed: int = 0
    num_workers: int = Field(0, ge=0)

    @property
    def crop_size(self) -> tuple[int, int]:
        size = self.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        if min((value, value) if isinstance(value, int) else value) < 16:
            raise ValueError("image_size must be at least 16 pixels (an int or [height, width])")
        return value

    @field_validator("scale_range")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError("scale_range must be [low, high] with 0 < low <= high")
        return value


class ModelConfig(Strict):
    backbone: str
    head: HeadName = "deeplabv3"
    output_stride: Literal[8, 16, 32] = 8
    pretrained: bool | str = False
    head_channels: int = Field(256, ge=8)


STORED = {"stored": True}
"""The validation context of a run read back from where it was written (a study's trial records, a run directory's
run.json): `RunConfig.model_validate(run, context=STORED)`."""


class TeacherConfig(Strict):
    """The teacher: `source: timm` (default) is a timm backbone + head the harness trains (or a harness checkpoint
    of one); `mmseg` and `torchvision` are frozen model-zoo networks read from `checkpoint`, never trained.

    For a zoo source the architecture comes from the file (and `arch`), so the timm-only keys are errors, not
    silently ignored values. `source` is declared first: the validators below read it.
    """

    source: TeacherSource = "timm"
    arch: TorchvisionArch | None = Field(
        None, validate_default=True, description="torchvision only: the model (required there)")
    checkpoint: str | None = Field(
        None, validate_default=True, description="timm: a harness teacher checkpoint to use instead of training; "
        "mmseg/torchvision: the model-zoo checkpoint (required)")
    backbone: str | None = Field(
        None, validate_default=True, description="timm only: a timm model name (required there)")
    head: HeadName = "deeplabv3"
    output_stride: Literal[8, 16, 32] = Field(8, description="timm: 8, 16 or 32; mmseg: 8 or 16")
    pretrained: bool | str = False
    head_channels: int = Field(256, ge=8)
    iters: int | None = Field(None, gt=0, description="teacher iterations (default: train.iters)")
    lr: float | None = Field(None, gt=0.0, description="teacher learning rate (default: train.lr)")

    @property
    def is_zoo(self) -> bool:
        return self.source in ZOO_SOURCES

    @property
    def label(self) -> str:
        """A short name for logs and tables: the timm backbone, or the zoo source with its model or file."""
        if self.source == "timm":
            return str(self.backbone)
        name = self.arch if self.source == "torchvision" else Path(str(self.checkpoint)).stem
        return f"{self.source}:{name}"

    @model_validator(mode="before")
    @classmethod
    def _stored_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """A stored run (validation context `STORED`) has every default written out, the timm-only keys of a zoo
        teacher included: those defaults are read as unset, so the rules below judge what a person wrote."""
        if not (info.context or {}).get("stored") or not isinstance(data, dict):
            return data
        if data.get("source", "timm") not in ZOO_SOURCES:
            return data
        return {key: value for key, value in data.items()
                if not (key in cls.model_fields and key not in ("source", "checkpoint", "arch")
                        and value == cls.model_fields[key].default)}

    @field_validator("backbone", "checkpoint", "arch", mode="after")
    @classmethod
    def _required_by_source(cls, value: Any, info: ValidationInfo) -> Any:
        source = info.data.get("source", "timm")
        needed = {"backbone": source == "timm", "checkpoint": source in ZOO_SOURCES,
                  "arch": source == "torchvision"}[info.field_name]
        if needed and value is None:
            what = {"backbone": "a timm model name", "checkpoint": "the model-zoo checkpoint file",
                    "arch": f"one of {', '.join(TORCHVISION_ARCHS)}"}[info.field_name]
            raise ValueError(f"is required with teacher.source: {source} ({what})")
        if not needed and value is not None and info.field_name != "checkpoint":
            raise ValueError(_no_effect(source))
        return value

    @field_validator("head", "pretrained", "head_channels", "iters", "lr", mode="after")
    @classmethod
    def _timm_only(cls, value: Any, info: ValidationInfo) -> Any:
        source = info.data.get("source", "timm")
        if source in ZOO_SOURCES and value is not None:
            raise ValueError(_no_effect(source))
        return value

    @field_validator("output_stride", mode="after")
    @classmethod
    def _zoo_output_stride(cls, value: int, info: ValidationInfo) -> int:
        source = info.data.get("source", "timm")
        if source == "torchvision":
            raise ValueError(_no_effect(source))
        if source == "mmseg" and value not in (8, 16):
            raise ValueError("an mmseg teacher has output stride 8 or 16 (its -d8 or -d16 config)")
        return value


def _no_effect(source: str) -> str:
    """Why a key has no effect with a zoo (or the timm) teacher source."""
    if source == "timm":
        return "has no effect with teacher.source: timm (it names a torchvision model); remove it"
    return (f"has no effect with teacher.source: {source} (the model and its weights come from teacher.checkpoint"
            f"{' and teacher.arch' if source == 'torchvision' else ''}, and it is never trained); remove it")


class TrainConfig(Strict):
    iters: int = Field(300, gt=0)
    eval_every: int = Field(100, gt=0)
    batch_size: int = Field(8, gt=0, description="per process (per worker with resources.workers > 1)")
    accumulate: int = Field(
        1, ge=1, description="micro-batches of batch_size per optimizer step (effective batch batch_size x "
        "accumulate x resources.workers); iters counts optimizer steps")
    eval_batch_size: int = Field(8, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.02, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    poly_power: float = Field(0.9, ge=0.0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA (ignored on CPU)")


class TermConfig(Strict):
    weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(1.0, gt=0.0)


class DISTConfig(Strict):
    """DIST: τ² (β · inter-class + γ · intra-class Pearson relation loss) of the probabilities at temperature τ."""

    weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(1.0, gt=0.0)
    beta: float = Field(1.0, ge=0.0, description="weight of the inter-class relation (each pixel's classes)")
    gamma: float = Field(1.0, ge=0.0, description="weight of the intra-class relation (each class's pixels)")


METHOD_NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"
"""A plug-in method's name (and so its arms' names): letters, digits, _ and -, starting with a letter."""


def import_path_parts(path: str) -> tuple[str, str]:
    """`module.path:attribute` as (module, attribute); a ValueError saying how to write it otherwise."""
    module, sep, attribute = path.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"{path!r} is not an import path: write module:function (mypkg.losses:relation_loss)")
    return module, attribute


class MethodConfig(Strict):
    """A plug-in distillation method (`methods.<name>` of a spec): `loss(inputs, **params)` from an import path."""

    loss: str = Field(min_length=3, description="module:function, e.g. mypkg.losses:relation_loss; the function "
                      "takes a fakd.losses.methods.DistillInputs and the params, and returns a scalar tensor")
    weight: float = Field(1.0, ge=0.0, description="the method's weight next to loss.ce_weight")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the function (each may "
                                   "be a search distribution)")

    @field_validator("loss")
    @classmethod
    def _import_path(cls, value: str) -> str:
        import_path_parts(value)
        return value


class FAKDConfig(Strict):
    enabled: bool = False
    max_strength: float = Field(2.0, ge=0.0)
    schedule: Schedule = "linear"
    covariance: Literal["diagonal", "full"] = "diagonal"
    form: FakdForm = "exact"
    samples: int = Field(8, ge=1, le=1024, description="sampled feature augmentations per step for a term FAKD has "
                         "no closed-form bound for (dist+fakd): the term is averaged over them")


class LossConfig(Strict):
    ce_weight: float = Field(1.0, ge=0.0)
    kd: TermConfig = TermConfig(weight=1.0, temperature=1.0)
    cwd: TermConfig = TermConfig(weight=3.0, temperature=4.0)
    dist: DISTConfig = DISTConfig()
    fakd: FAKDConfig = FAKDConfig()

    def for_arm(self, arm: str | Arm) -> LossConfig:
        """The loss settings an ablation arm runs with: the arm switches terms on and off, weights stay."""
        spec = arm if isinstance(arm, Arm) else arm_named(arm)
        terms = {term: getattr(self, term) for term in DISTILL_TERMS}
        return self.model_copy(
            update={
                **{term: config.model_copy(update={"weight": config.weight if spec.distill == term else 0.0})
                   for term, config in terms.items()},
                "fakd": self.fakd.model_copy(update={"enabled": spec.fakd}),
            }
        )

    @property
    def distills(self) -> bool:
        return any(getattr(self, term).weight > 0 for term in DISTILL_TERMS)


class RunConfig(Strict):
    """Everything one teacher→student run needs, with concrete values only."""

    data: DataConfig = DataConfig()
    teacher: TeacherConfig
    student: ModelConfig
    train: TrainConfig = TrainConfig()
    loss: LossConfig = LossConfig()
    methods: dict[str, MethodConfig] = Field(default_factory=dict, description="plug-in distillation methods, each "
                                             "adding the arms <name> and <name>+fakd")
    arm: str = DEFAULT_ARM
    split: Split = Field("val", description="holdout: the train split less its held-out part, scored on that part "
                         "(search, confirmation); val: the whole train split, scored on val")

    @model_validator(mode="before")
    @classmethod
    def _split_was_phase(cls, data: Any) -> Any:
        """Runs stored before the rename (a study's trial.json) name the split `phase`: search or final."""
        if isinstance(data, dict) and "phase" in data and "split" not in data:
            phase = data["phase"]
            data = {k: v for k, v in data.items() if k != "phase"}
            data["split"] = SPLIT_OF_PHASE.get(phase, phase) if isinstance(phase, str) else phase
        return data

    @field_validator("methods")
    @classmethod
    def _method_names(cls, value: dict[str, MethodConfig]) -> dict[str, MethodConfig]:
        for name in value:
            if name in arm_names():
                raise ValueError(f"{name} is a built-in arm; give the plug-in method another name")
            if not re.match(METHOD_NAME, name) or name.endswith(FAKD_SUFFIX):
                raise ValueError(f"{name!r} is not a method name (letters, digits, _ and -, starting with a letter)")
        return value

    @model_validator(mode="after")
    def _arm_known(self) -> RunConfig:
        if self.arm not in arm_names(self.methods):
            raise ValueError(f"arm {self.arm!r} is not one of {', '.join(arm_names(self.methods))}")
        return self

    @property
    def arm_spec(self) -> Arm:
        """The arm this run trains."""
        return arm_named(self.arm)

    @property
    def effective_loss(self) -> LossConfig:
        """The built-in terms as this run's arm switches them (a plug-in arm: CE, and FAKD where it adds it)."""
        return self.loss.for_arm(self.arm_spec)

    @property
    def arm_methods(self) -> dict[str, MethodConfig]:
        """The plug-in method this run's arm trains with, by name (empty for a built-in arm)."""
        method = self.arm_spec.distill
        return {method: self.methods[method]} if method in self.methods else {}

    @property
    def distills(self) -> bool:
        """Whether this run learns from a teacher (some distillation term has a positive weight)."""
        return self.effective_loss.distills or any(m.weight > 0 for m in self.arm_methods.values())

    def teacher_run(self) -> RunConfig:
        """The run that trains this config's teacher: CE only, on the full training split."""
        train = self.train.model_copy(
            update={"iters": self.teacher.iters or self.train.iters, "lr": self.teacher.lr or self.train.lr}
        )
        model = ModelConfig(**self.teacher.model_dump(include=set(ModelConfig.model_fields)))
        return self.model_copy(update={"student": model, "train": train, "arm": REFERENCE_ARM, "split": "val"})


def config_hash(*parts: BaseModel | dict[str, Any], length: int = 12) -> str:
    """A short stable hash of configuration objects (used to key the teacher cache)."""
    payload = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]
