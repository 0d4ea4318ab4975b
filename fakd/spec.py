"""Study specs: YAML → validated `StudySpec` (fixed values, search distributions, study settings).

Loading a spec is pure: it parses and validates the file and touches nothing else. What lives outside the
spec (timm names, weight files, data roots, cluster resources) is checked by `fakd.preflight` before a
command trains anything.

A value anywhere under `data`, `student`, `train` or `loss` may be a search distribution:
`{uniform: [a, b]}`, `{loguniform: [a, b]}`, `{int: [a, b]}` or `{choice: [...]}`, each with an optional
`default:` (the value `launch.py train` uses; otherwise the midpoint, the geometric mean, or the first
choice). Every mistake becomes one `UserError` naming the file, the dotted key and what is accepted.
"""

from __future__ import annotations

import copy
import math
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from fakd import spec_yaml
from fakd.config import RunConfig, Strict
from fakd.errors import UserError
from fakd.vocab import ARMS, BUDGETS, DEFAULT_ARMS, DEFAULT_BUDGET, REFERENCE_ARM, Arm, arm_named, arm_names

DISTRIBUTION_KINDS = ("uniform", "loguniform", "int", "choice")
SEARCHABLE_SECTIONS = ("data", "student", "train", "loss", "methods")
FIXED_KEYS = ("data.name", "data.root", "methods.*.loss")  # `*`: any one key
STORAGE_FILES = {"sqlite": "optuna.db", "journal": "optuna.journal"}  # kept inside the study directory
NAME_PATTERN = r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*$"  # a study name is one directory: no separators, no ..
SAMPLERS = ("tpe", "gp", "qmc", "random")
DEFAULT_SAMPLER = "gp"  # benchmarks/bench_search.py: lower true regret than tpe under halving, with or without confirm
DEFAULT_CONFIRM = {"top": 2, "seeds": 2}  # benchmarks/bench_search.py: lowered the true regret in 12 of 16 protocols
MODEL_SAMPLERS = ("tpe", "gp")  # fit a model to the finished trials after `startup_trials` random ones
REMOVED_KEYS = {
    "search.metric": "search.metric was removed: studies select, stop early and rank by validation mIoU "
    "(search.objectives: [miou] or [miou, params])",
}


class DecideConfig(Strict):
    """Sequential retrain: rounds of fresh seeds until every comparison has an anytime-valid verdict."""

    margin: float = Field(0.01, gt=0.0, description="an |arm - base| mIoU difference below this (a fraction: 0.01 is "
                          "1 point) is 'equivalent'")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="family-wise error rate over the study's comparisons, "
                         "valid however often the verdicts are looked at")
    max_seeds: int = Field(20, ge=2, description="seeds at which a comparison still undecided stops")
    round: int = Field(2, ge=1, description="seeds added per round, to the arms of undecided comparisons only")


class ConfirmConfig(Strict):
    """Noise-aware selection: an arm's best search trials trained again with fresh seeds before it is selected."""

    top: int = Field(ge=1, description="finished search trials of each arm trained again")
    seeds: int = Field(ge=1, description="fresh seeds for each of them (held-out split, the search's iterations)")


class SearchConfig(Strict):
    num_samples: int = Field(4, ge=1, description="trials per arm (per selection repeat)")
    max_concurrent: int = Field(2, ge=1, description="trials running at once, all arms together")
    seed: int = 0
    sampler: Literal[SAMPLERS] = Field(  # type: ignore[valid-type]
        DEFAULT_SAMPLER, description="gp (Optuna's Gaussian-process sampler; the default, the best measured in "
        "docs/benchmarks.md), tpe (Optuna's TPE, constant liar for concurrent suggestions), qmc (a scrambled Sobol "
        "sequence per arm) or random (a baseline for the search itself)")
    startup_trials: int | None = Field(
        None, ge=0, description="tpe and gp: finished trials of an arm drawn at random before the model is fitted "
        "(default: a third of num_samples, at most 10; Optuna's own default of 10 would leave a budget of 10 or fewer "
        "trials random search)")
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1, description="evaluations before successive halving may stop a trial")
    reduction_factor: int = Field(2, ge=2)
    objectives: list[Literal["miou", "params"]] = Field(["miou"], description="miou, or miou and params (Pareto)")
    storage: str = Field("sqlite", description="sqlite (STUDY/optuna.db), journal (STUDY/optuna.journal, "
                         "safe on shared file systems) or an SQLAlchemy URL")
    max_failures: int = Field(1, ge=0, description="retries of a trial after an infrastructure fault")
    retrain_seeds: int = Field(0, ge=0, description="seeds for select-then-retrain at the end of a sweep (with "
                               "decide: the seeds of its first round, at least decide.round)")
    add_on: Literal["joint", "inherit"] | None = Field(
        None, description="an arm that adds FAKD to a base arm: inherit searches only loss.fakd.*, on its base arm's "
        "selected values of the rest (searched after its base is selected); joint searches every key it uses. "
        "Default: inherit where an add-on arm's base arm is in the study (and student.backbone is fixed), else joint")
    confirm: ConfirmConfig | Literal[False] | None = Field(
        None, description="train each arm's top finished search trials again with fresh seeds; the arm's selection "
        "is the best mean of those runs. false: select on the search's own scores. Default: top 2 × 2 seeds where an "
        "arm has 2 or more trials (the best measured in docs/benchmarks.md), else false")
    decide: DecideConfig | None = Field(None, description="retrain in rounds of seeds until each comparison is "
                                        "decided (better, worse, equivalent) or reaches decide.max_seeds")
    retrain_budget: Literal[BUDGETS] = Field(  # type: ignore[valid-type]
        "equal-iters", description="retrain every arm for train.iters, or for the wall-clock the baseline's "
        "train.iters cost (each arm's iterations from its measured time per iteration)")
    reproducible: bool = Field(False, description="decisions that depend on the spec alone, not on trial timing")
    generation_size: int | None = Field(
        None, ge=1, description="reproducible mode: trials of an arm suggested together from the finished ones "
        "(default: 4, at most num_samples)")
    selection_repeats: int = Field(1, ge=1, description="independent searches per arm (selection stability)")

    @property
    def confirmation(self) -> ConfirmConfig | None:
        """The confirmation the study runs, or None (off, or not yet resolved by `validate_spec`)."""
        return self.confirm or None

    @field_validator("confirm", mode="before")
    @classmethod
    def _confirm(cls, value: Any) -> Any:
        if value is None or value is False or isinstance(value, (dict, ConfirmConfig)):
            return value
        raise ValueError("takes {top: K, seeds: S}, or false to select on the search's own scores")

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str]) -> list[str]:
        if not value or value[0] != "miou" or len(set(value)) != len(value):
            raise ValueError("objectives must be [miou] or [miou, params]")
        return value

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        if value in STORAGE_FILES:
            return value
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            make_url(value).get_dialect()
        except (ArgumentError, NoSuchModuleError, ValueError) as exc:
            raise ValueError(f"storage must be sqlite, journal or an SQLAlchemy URL ({exc})") from None
        return value

    @property
    def tpe_startup(self) -> int:
        """Finished trials TPE or GP draws at random before it models them."""
        return self.startup_trials if self.startup_trials is not None else min(10, math.ceil(self.num_samples / 3))

    @property
    def generation(self) -> int:
        """Trials per generation in reproducible mode."""
        return min(self.generation_size or 4, self.num_samples)


class ResourcesConfig(Strict):
    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)
    workers: int = Field(
        1, ge=1, description="data-parallel processes per trial, each with cpu and gpu (a Ray Train run; the teacher "
        "trains the same way); each takes train.batch_size, so the effective batch is batch_size x accumulate x "
        "workers")

    @property
    def device(self) -> str:
        """The device a trial is billed in: "gpu" where it holds any, else "cpu"."""
        return "gpu" if self.gpu > 0 else "cpu"

    @property
    def units_per_trial(self) -> float:
        """How many of `device` one trial holds (times its data-parallel workers)."""
        return (self.gpu if self.gpu > 0 else self.cpu) * self.workers


class TrackingConfig(Strict):
    wandb: bool = True
    project: str = "fakd"
    entity: str | None = None


class StudySettings(Strict):
    """The study-level sections of a spec (never searched)."""

    name: str = Field(min_length=1, pattern=NAME_PATTERN, description="letters, digits, _ . + -, not starting with .")
    arms: list[str] = Field(list(DEFAULT_ARMS), description="built-in arms, and <name> or <name>+fakd for a "
                            "plug-in method of the spec's methods section")
    search: SearchConfig = SearchConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("arms")
    @classmethod
    def _arms(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"arms must name at least one of {', '.join(ARMS)}, each once")
        return value

    def arm_specs(self) -> list[Arm]:
        """The study's arms, in the spec's order."""
        return [arm_named(name) for name in self.arms]


@dataclass(frozen=True)
class Distribution:
    """One search dimension."""

    kind: str
    bounds: tuple[Any, ...]
    default: Any

    def candidates(self) -> list[Any]:
        """Values that validation tries: the bounds or every choice, and the default."""
        return [*self.bounds, self.default]

    def to_json(self) -> dict[str, Any]:
        return {self.kind: list(self.bounds), "default": self.default}


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec."""

    path: str
    raw: dict[str, Any]
    settings: StudySettings
    space: dict[str, Distribution]
    defaults: RunConfig
    overrides: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.settings.name

    def run_config(self, arm: str, values: Mapping[str, Any] | None = None, **updates: Any) -> RunConfig:
        """The concrete run for `arm` with searched `values` (dotted keys) and top-level `updates`."""
        tree = _with_values(self.raw, {**{k: d.default for k, d in self.space.items()}, **(values or {})})
        tree = {k: v for k, v in tree.items() if k in RunConfig.model_fields}
        return _validate_run(self.path, {**tree, "arm": arm, **updates})


STUDY_DEFAULTS_BEFORE_PINNING = {"add_on": "joint", "sampler": "tpe", "confirm": False}
"""search.* defaults of the studies made before `sweep` wrote them into the study's spec.yaml: a study's spec
without them is read with the defaults it was made with, so no later default changes a study's protocol."""


def load_spec(path: str | Path, overrides: Iterable[str] = (), *, study: bool = False) -> StudySpec:
    """Read, override and validate a study spec; raise `UserError` on the first problem. `study`: the spec.yaml of a
    study directory (the defaults it was made with apply)."""
    file = str(path)
    if Path(file).is_dir():
        raise UserError("is a directory; a spec is a YAML file", file=file)
    if not Path(file).is_file():
        raise UserError("spec file not found", file=file)
    try:
        with open(file, "rb") as handle:
            data = handle.read(spec_yaml.MAX_BYTES + 1)
        raw = spec_yaml.load(spec_yaml.decode(data)) or {}
    except UserError as exc:
        raise exc.located(file) from None
    except OSError as exc:
        raise UserError(f"cannot read it: {exc.strerror}", file=file) from None
    if not isinstance(raw, dict):
        raise UserError("a spec is a YAML mapping of sections", file=file)
    if study and isinstance(raw.get("search", {}), dict):
        raw["search"] = {**STUDY_DEFAULTS_BEFORE_PINNING, **(raw.get("search") or {})}
    overrides = tuple(overrides)
    seen: dict[str, str] = {}
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in seen:
            raise UserError(f"--set {key} is given twice ({spec_yaml.cut(seen[key])}, then {spec_yaml.cut(item)}); "
                            "give each key once", file=file, key=key)
        seen[key] = item
        apply_override(raw, item, file)
    return validate_spec(raw, file, overrides)


def apply_override(tree: dict[str, Any], item: str, file: str) -> None:
    """Apply one `--set key=value` (dotted key, YAML-typed value) in place."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set takes key=value, got {item!r}", file=file)
    try:
        value = spec_yaml.load(text)
    except UserError as exc:
        if "not valid YAML" not in exc.message:
            raise UserError(f"--set {key.strip()}: its value {exc.message}", file=file) from None
        value = text
    node = tree
    parts = key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict) or _distribution_kind(child):
            raise UserError(f"cannot set a key below a value ({'.'.join(parts[: i + 1])})", file=file, key=key)
        node = child
    node[parts[-1]] = value


def validate_spec(raw: dict[str, Any], file: str, overrides: tuple[str, ...] = ()) -> StudySpec:
    """Validate a spec tree (already overridden)."""
    known = set(StudySettings.model_fields) | set(RunConfig.model_fields) - {"arm", "split"}
    _check_removed(raw, file)
    for key in raw:
        if key not in known:
            raise UserError(f"unknown section; accepted: {', '.join(sorted(known))}", file=file, key=str(key))
    space = _extract_space(raw, file)
    settings = _validate(StudySettings, {k: v for k, v in raw.items() if k in StudySettings.model_fields}, file)
    resolved: dict[str, Any] = {}  # defaults that depend on the rest of the spec: resolved here, pinned below
    if settings.search.add_on is None:
        resolved["add_on"] = default_add_on(settings.arms, space)
    if settings.search.confirm is None:
        resolved["confirm"] = default_confirm(settings.search.num_samples)
    settings = settings.model_copy(update={"search": settings.search.model_copy(update=resolved)})
    search = raw.get("search") or {}
    pins = {key: _plain(getattr(settings.search, key)) for key in STUDY_DEFAULTS_BEFORE_PINNING
            if search.get(key) is None}
    if pins:  # written into the study's spec.yaml: a study records the protocol it used
        raw = {**raw, "search": {**search, **pins}}
    run_tree = {k: v for k, v in raw.items() if k in RunConfig.model_fields}
    for section in ("teacher", "student"):
        if section not in run_tree:
            raise UserError("missing section; it needs at least a backbone (a timm model name)", file=file,
                            key=section)
    defaults = _validate_run(file, _with_values(run_tree, {k: d.default for k, d in space.items()}))
    _check_arms(settings.arms, defaults, file)
    spec = StudySpec(file, copy.deepcopy(raw), settings, space, defaults, overrides)
    _check_candidates(spec)
    _check_effects(spec)
    return spec


def _check_arms(arms: list[str], defaults: RunConfig, file: str) -> None:
    """Every arm is built in or a declared method's, and every declared method has an arm."""
    accepted = arm_names(defaults.methods)
    for index, name in enumerate(arms):
        if name not in accepted:
            raise UserError(f"{name!r} is not an arm; accepted: {', '.join(repr(a) for a in accepted)} (a plug-in "
                            "method's arms: <name> and <name>+fakd, with the method under methods.<name>)",
                            file=file, key=f"arms.{index}")
    for method in defaults.methods:
        if not any(arm_named(name).distill == method for name in arms):
            raise UserError(f"no arm uses it; add {method} or {method}+fakd to arms ({', '.join(arms)})", file=file,
                            key=f"methods.{method}")


def default_add_on(arms: Iterable[str], space: Mapping[str, Any]) -> str:
    """inherit where some add-on arm's base arm is in the study and the student is fixed, else joint: on the
    quickstart, inherit decided kd+fakd against kd at 6 seeds (CS ±0.6 pp) where joint left it undecided (±16 pp),
    as its comparison differs in the FAKD term alone (docs/benchmarks.md)."""
    names = set(arms)
    eligible = any(arm.add_on and arm.base in names for arm in map(arm_named, names))
    return "inherit" if eligible and "student.backbone" not in space else "joint"


def default_confirm(num_samples: int) -> ConfirmConfig | Literal[False]:
    """`DEFAULT_CONFIRM` where an arm has two trials or more to choose between, else off."""
    return ConfirmConfig(**DEFAULT_CONFIRM) if num_samples >= DEFAULT_CONFIRM["top"] else False


def _plain(value: Any) -> Any:
    """A setting as the YAML of spec.yaml holds it."""
    return value.model_dump() if isinstance(value, BaseModel) else value


def _check_removed(raw: dict[str, Any], file: str) -> None:
    for key, message in REMOVED_KEYS.items():
        section, name = key.split(".")
        if isinstance(raw.get(section), dict) and name in raw[section]:
            raise UserError(message, file=file, key=key)


def _check_effects(spec: StudySpec) -> None:
    """Options that would change nothing in this study are mistakes, not silently ignored values."""
    arms = spec.settings.arm_specs()
    for key in spec.space:
        if not any(arm.uses(key) for arm in arms):
            raise UserError(f"is searched but no arm of this study uses it (arms: {', '.join(spec.settings.arms)})",
                            file=spec.path, key=key)
    forms = spec.space["loss.fakd.form"].bounds if "loss.fakd.form" in spec.space else (
        spec.defaults.loss.fakd.form,)
    for arm in arms:
        unused = [form for form in forms if arm.fakd and form not in arm.fakd_forms]
        if unused:
            accepted = [a for a in ARMS if unused[0] in arm_named(a).fakd_forms]
            raise UserError(f"{unused[0]} has no effect on the {arm.name} arm (its bound has the forms "
                            f"{', '.join(arm.fakd_forms)}); use form: exact, or study {unused[0]} with "
                            f"{' or '.join(accepted)} only", file=spec.path, key="loss.fakd.form")
    search = spec.raw.get("search") or {}
    train = spec.defaults.train
    if train.eval_every > train.iters and spec.settings.search.scheduler == "asha":
        raise UserError(f"{train.eval_every} is above train.iters ({train.iters}): a trial would be evaluated only at "
                        "its end, so successive halving could never stop one; take at most train.iters, or "
                        "search.scheduler: none", file=spec.path, key="train.eval_every")
    if spec.settings.search.retrain_budget != DEFAULT_BUDGET and REFERENCE_ARM not in spec.settings.arms:
        raise UserError(f"{spec.settings.search.retrain_budget} gives every arm the wall-clock of the "
                        f"{REFERENCE_ARM}'s iterations, and the arms ({', '.join(spec.settings.arms)}) have no "
                        f"{REFERENCE_ARM}; add it or use {DEFAULT_BUDGET}", file=spec.path,
                        key="search.retrain_budget")
    if spec.settings.search.scheduler == "none":
        for option in ("grace_period", "reduction_factor"):
            if option in search:
                raise UserError("has no effect with search.scheduler: none", file=spec.path, key=f"search.{option}")
    if spec.settings.search.add_on == "inherit":
        add_ons = [arm for arm in arms if arm.add_on]
        orphan = next((arm for arm in add_ons if arm.base not in spec.settings.arms), None)
        if not add_ons or orphan:
            what = (f"{orphan.name} adds FAKD to {orphan.base}, which is not one of the arms" if orphan else
                    "no arm of this study adds a term to a base arm")
            raise UserError(f"inherit needs each add-on arm's base arm in the study: {what} "
                            f"({', '.join(spec.settings.arms)}); use add_on: joint", file=spec.path,
                            key="search.add_on")
        if "student.backbone" in spec.space:
            raise UserError("inherit takes the base arm's selected values, one per arm: it needs a fixed "
                            "student.backbone, not a searched one", file=spec.path, key="search.add_on")
    confirm = spec.settings.search.confirmation
    if confirm is not None and confirm.top > spec.settings.search.num_samples:
        raise UserError(f"is above search.num_samples ({spec.settings.search.num_samples}): an arm has no more "
                        "trials to confirm", file=spec.path, key="search.confirm.top")
    decide = spec.settings.search.decide
    if decide is not None and not any(arm.base in spec.settings.arms for arm in arms):
        raise UserError(f"no arm of this study has its base arm ({', '.join(spec.settings.arms)}), so there is no "
                        "comparison to decide", file=spec.path, key="search.decide")
    if decide is not None and spec.settings.search.retrain_seeds > decide.max_seeds:
        raise UserError(f"search.retrain_seeds ({spec.settings.search.retrain_seeds}) is above the maximum "
                        f"({decide.max_seeds})", file=spec.path, key="search.decide.max_seeds")
    if "startup_trials" in search and spec.settings.search.sampler not in MODEL_SAMPLERS:
        raise UserError(f"has no effect unless search.sampler is {' or '.join(MODEL_SAMPLERS)}", file=spec.path,
                        key="search.startup_trials")
    if "generation_size" in search and not spec.settings.search.reproducible:
        raise UserError("has no effect unless search.reproducible is true", file=spec.path,
                        key="search.generation_size")


def _distribution_kind(node: Any) -> str | None:
    if isinstance(node, dict):
        kinds = [k for k in node if k in DISTRIBUTION_KINDS]
        if kinds:
            return kinds[0]
    return None


def _extract_space(raw: dict[str, Any], file: str) -> dict[str, Distribution]:
    space: dict[str, Distribution] = {}

    def walk(node: Any, key: str) -> None:
        kind = _distribution_kind(node)
        if kind:
            section = key.split(".")[0]
            if section not in SEARCHABLE_SECTIONS or _is_fixed(key):
                raise UserError(
                    f"cannot be searched; distributions are accepted under {', '.join(SEARCHABLE_SECTIONS)}"
                    f" (except {', '.join(FIXED_KEYS)})", file=file, key=key)
            space[key] = _parse_distribution(kind, node, file, key)
        elif isinstance(node, dict):
            for child, value in node.items():
                walk(value, f"{key}.{child}" if key else str(child))

    walk(raw, "")
    return space


def _is_fixed(key: str) -> bool:
    """Whether `key` is one of `FIXED_KEYS`, where `*` stands for any one part of the dotted key."""
    parts = key.split(".")
    return any(len(fixed) == len(parts) and all(f in ("*", p) for f, p in zip(fixed, parts, strict=True))
               for fixed in (k.split(".") for k in FIXED_KEYS))


def _parse_distribution(kind: str, node: dict[str, Any], file: str, key: str) -> Distribution:
    extra = set(node) - {kind, "default"}
    if extra:
        raise UserError(f"a {kind} distribution takes only '{kind}' and 'default', got {sorted(extra)}",
                        file=file, key=key)
    args = node[kind]
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise UserError("choice needs a non-empty list of values", file=file, key=key)
        default = node.get("default", args[0])
        if default not in args:
            raise UserError(f"default {default!r} is not one of the choices {args}", file=file, key=key)
        return Distribution(kind, tuple(args), default)
    number = int if kind == "int" else (int, float)
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(a, number) and not isinstance(a, bool) for a in args)):
        what = "integers" if kind == "int" else "numbers"
        raise UserError(f"{kind} needs [low, high] with two {what}, got {args!r}", file=file, key=key)
    low, high = args
    if low > high:
        raise UserError(f"{kind} lower bound {low} is above the upper bound {high}", file=file, key=key)
    if kind == "loguniform" and low <= 0:
        raise UserError(f"loguniform bounds must be positive, got {args}", file=file, key=key)
    if "default" in node:
        default = node["default"]
        if not isinstance(default, number) or not low <= default <= high:
            raise UserError(f"default {default!r} is outside [{low}, {high}]", file=file, key=key)
    elif kind == "uniform":
        default = (low + high) / 2
    elif kind == "loguniform":
        default = math.sqrt(low * high)
    else:
        default = (low + high) // 2
    return Distribution(kind, (low, high), default)


def _with_values(raw: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    tree = copy.deepcopy(raw)
    for key, value in values.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _validate_run(file: str, tree: dict[str, Any]) -> RunConfig:
    return _validate(RunConfig, tree, file)


def _validate(model: type[BaseModel], tree: dict[str, Any], file: str) -> Any:
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise _user_error(model, exc, file) from None


def _user_error(model: type[BaseModel], exc: ValidationError, file: str) -> UserError:
    """The first validation problem as one line: file, dotted key, what is accepted."""
    problem = exc.errors()[0]
    location = [str(p) for p in problem["loc"] if not str(p).startswith(("function-", "union", "literal["))]
    sections = {section.__name__ for section in Strict.__subclasses__()}  # a union's model member tags the location
    location = [p for p in location if p not in ("int", "str", "bool", "float", "tuple[int,int]", *sections)]
    key = ".".join(location)
    if problem["type"] == "extra_forbidden":
        parent = _model_at(model, location[:-1])
        accepted = ", ".join(parent.model_fields) if parent else "none"
        return UserError(f"unknown key; accepted: {accepted}", file=file, key=key)
    if problem["type"] == "missing":
        return UserError("required key is missing", file=file, key=key)
    message = problem["msg"].removeprefix("Value error, ")
    value = problem.get("input")
    got = "" if isinstance(value, dict) else f" (got {spec_yaml.short(value)})"
    return UserError(f"{message}{got}", file=file, key=key or None)


def _model_at(model: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    keyed = False  # the part after a `dict[str, Section]` field is a key of the user's, not a field
    for part in path:
        if part.isdigit() or keyed:
            keyed = False
            continue
        info = model.model_fields.get(part)
        annotation = getattr(info, "annotation", None)
        keyed = typing.get_origin(annotation) is dict
        candidates = [annotation, *typing.get_args(annotation)]  # an optional section: `Section | None`
        found = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not found:
            return None
        model = found[0]
    return model


def _check_candidates(spec: StudySpec) -> None:
    """Every bound and every choice of every distribution must make a valid run on its own."""
    for key, dist in spec.space.items():
        for value in dist.candidates():
            spec.run_config(spec.settings.arms[0], {key: value})
