"""The project's vocabularies, each defined once: ablation arms, FAKD's forms and schedules, heads, datasets,
teacher sources, retrain budgets, the splits a run trains on, trial states and the study's metric.

Spec validation, CLI choices, the loss switches, the search-space filter and the table's base-arm column
all derive from these tables, so a new arm is one line here. Imports nothing heavy (no torch).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DISTILL_TERMS: tuple[str, ...] = ("kd", "cwd", "dist")
"""The built-in distillation methods an arm may train with, each a section `loss.<term>` of the spec. A spec adds
its own under `methods.<name>` (a plug-in: `fakd.losses.methods`), with the arms `<name>` and `<name>+fakd`."""

FAKD_SUFFIX = "+fakd"
"""An arm's name is its method's name, plus this where FAKD augments the method's features (`kd+fakd`)."""

CLOSED_FORM_TERMS: tuple[str, ...] = ("kd", "cwd")
"""The terms whose expectation under feature augmentation FAKD bounds in closed form."""

FAKD_FORMS: tuple[str, ...] = ("exact", "label_row")
"""`loss.fakd.form`: the exact bound, or the cheaper ISDA-style shift of the labelled row (KD's bound only)."""

SCHEDULES: tuple[str, ...] = ("linear", "cosine", "constant")
"""`loss.fakd.schedule`: how the augmentation strength rises to `max_strength` over training."""


@dataclass(frozen=True)
class Arm:
    """One ablation arm: which distillation term it trains with, whether FAKD bounds it, its base arm."""

    name: str
    distill: str | None  # the distillation method ("kd", "cwd", "dist" or a plug-in), or None (cross-entropy only)
    fakd: bool
    base: str | None  # the arm this one is compared against in the ablation table
    default: bool = True  # in a spec's arms when it names none (the FAKD ablation)

    @property
    def fakd_forms(self) -> tuple[str, ...]:
        """The `loss.fakd.form`s this arm's bound has (the CWD bound has one form only)."""
        if not self.fakd:
            return ()
        return FAKD_FORMS if self.distill == "kd" else FAKD_FORMS[:1]

    def uses(self, key: str) -> bool:
        """Whether the dotted spec key changes anything in this arm (a baseline has no KD temperature)."""
        for term in DISTILL_TERMS:
            if key == f"loss.{term}" or key.startswith(f"loss.{term}."):
                return self.distill == term
        if key == "methods" or key.startswith("methods."):  # a plug-in method's section: `methods.<name>.…`
            return key.split(".")[1:2] == [self.distill]
        if key == "loss.fakd.samples":
            return self.fakd and not self.closed_form
        if key == "loss.fakd" or key.startswith("loss.fakd."):
            return self.fakd
        return True

    @property
    def closed_form(self) -> bool:
        """Whether FAKD bounds this arm's term in closed form (KD, CWD); otherwise it is sampled (Monte-Carlo)."""
        return self.distill in CLOSED_FORM_TERMS

    @property
    def add_on(self) -> bool:
        """Whether the arm is its base arm plus one term (FAKD on a distillation term): with `search.add_on: inherit`
        it searches only that term's keys, on its base arm's selection."""
        return self.fakd and self.base is not None

    def adds(self, key: str) -> bool:
        """Whether `key` belongs to the term this arm adds to its base arm (used by the arm, not by the base)."""
        return self.uses(key) and (self.base is None or not arm_named(self.base).uses(key))

    @property
    def plugin(self) -> bool:
        """Whether the arm's method is a spec's own (`methods.<name>`) rather than a built-in."""
        return self.distill is not None and self.distill not in DISTILL_TERMS

    @property
    def slug(self) -> str:
        """A name safe in paths (`kd+fakd` → `kd_fakd`)."""
        return self.name.replace("+", "_")


ARM_TABLE: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("baseline", distill=None, fakd=False, base=None),
        Arm("kd", distill="kd", fakd=False, base="baseline"),
        Arm("kd+fakd", distill="kd", fakd=True, base="kd"),
        Arm("cwd", distill="cwd", fakd=False, base="baseline"),
        Arm("cwd+fakd", distill="cwd", fakd=True, base="cwd"),
        # DIST (Huang et al., NeurIPS 2022): a strong logit baseline; FAKD has no closed-form bound for it, so
        # dist+fakd averages DIST over sampled feature augmentations (`loss.fakd.samples`)
        Arm("dist", distill="dist", fakd=False, base="baseline", default=False),
        Arm("dist+fakd", distill="dist", fakd=True, base="dist", default=False),
    )
}
ARMS: tuple[str, ...] = tuple(ARM_TABLE)
"""The built-in arms; a spec's plug-in methods add theirs (`arm_names`)."""
DEFAULT_ARMS: tuple[str, ...] = tuple(arm.name for arm in ARM_TABLE.values() if arm.default)



def arm_names(methods: Iterable[str] = ()) -> tuple[str, ...]:
    """The arms a spec may name: the built-in ones, then `<name>` and `<name>+fakd` for each plug-in method."""
    return ARMS + tuple(name + suffix for name in methods for suffix in ("", FAKD_SUFFIX))


def arm_named(name: str) -> Arm:
    """The arm called `name`: a built-in one, or a plug-in method's (`mine` compared with the baseline, `mine+fakd`
    with `mine`). Whether a spec declares the method is the spec's check (`fakd.spec`), not this one's."""
    if name in ARM_TABLE:
        return ARM_TABLE[name]
    method, fakd = (name[: -len(FAKD_SUFFIX)], True) if name.endswith(FAKD_SUFFIX) else (name, False)
    return Arm(name, distill=method, fakd=fakd, base=method if fakd else REFERENCE_ARM, default=False)


def arm_order(name: str) -> tuple[int, str]:
    """A sort key that puts arms in the vocabulary's order (a base arm before the arms compared with it), the
    built-in ones first, then plug-in methods by name, each before its `+fakd` arm."""
    if name in ARM_TABLE:
        return (ARMS.index(name), "")
    return (len(ARMS), name)


METRIC = "val_miou"
"""The study's metric: mIoU (a fraction) on the split a run is scored on (held-out for search and confirmation
runs, validation for retrained runs). Selection, halving, Optuna and the table all rank by it."""

IGNORE_INDEX = 255
"""The label of pixels that no loss, statistic or metric counts (void, unlabelled, outside the image)."""

SPLITS: tuple[str, ...] = ("holdout", "val")
"""What a run trains on and is scored on (`RunConfig.split`): holdout, the train split less a seeded held-out part,
scored on that part (search and confirmation runs); val, the whole train split, scored on val (retrain, teacher)."""

PENDING, RUNNING, COMPLETE, PRUNED, FAILED = "PENDING", "RUNNING", "COMPLETE", "PRUNED", "FAILED"
TRIAL_STATES: tuple[str, ...] = (PENDING, RUNNING, COMPLETE, PRUNED, FAILED)
TERMINAL = frozenset({COMPLETE, PRUNED, FAILED})
"""The states a trial ends in."""

HEADS: tuple[str, ...] = ("deeplabv3", "psp", "fcn")
DATASETS: tuple[str, ...] = ("synthetic", "cityscapes", "voc", "ade20k", "camvid")

TEACHER_SOURCES: tuple[str, ...] = ("timm", "mmseg", "torchvision")
"""`teacher.source`: a timm backbone the study trains, or a frozen model-zoo checkpoint."""
ZOO_SOURCES: tuple[str, ...] = TEACHER_SOURCES[1:]
TORCHVISION_ARCHS: tuple[str, ...] = (  # the torchvision segmentation models a teacher may be (`teacher.arch`)
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)

BUDGET_KEY_SUFFIX: dict[str, str] = {"equal-iters": "", "equal-time": "-time"}
"""How long each arm's retrain runs, and the suffix of its retrain trials' keys (equal-iters has none)."""
BUDGETS: tuple[str, ...] = tuple(BUDGET_KEY_SUFFIX)
DEFAULT_BUDGET = BUDGETS[0]
REFERENCE_ARM = next(a.name for a in ARM_TABLE.values() if a.base is None)  # CE only: the teacher's training, and
# the arm whose wall-clock an equal-time retrain gives every arm
DEFAULT_ARM = next(a.name for a in ARM_TABLE.values() if a.fakd and a.distill == "kd")  # of `launch.py train`

