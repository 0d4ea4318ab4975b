"""PNG plots of a study: mIoU vs FAKD strength, hyperparameter importances, best-so-far search progress, retrain
curves and the Pareto front. Points without an order are never joined by lines.

Everything comes from the study's trial records: no Optuna storage, data or Ray is opened.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fakd.atomic import atomic_file  # noqa: E402
from fakd.results import COMPLETE, TERMINAL, TrialRecord, pareto_front  # noqa: E402
from fakd.results.space import arm_space  # noqa: E402
from fakd.spec import StudySpec  # noqa: E402
from fakd.vocab import ARMS, METRIC, arm_order  # noqa: E402

STRENGTH_KEY = "loss.fakd.max_strength"
CAPTIONS = {
    "miou_vs_strength.png": "mIoU against FAKD strength λ, one colour per arm: the search trials as filled circles "
                            "(held-out mIoU), the retrained runs as open diamonds (validation mIoU, one per seed). "
                            "Points, not joined: trials have no order in λ.",
    "importances.png": "Hyperparameter importances (fANOVA) of each arm's searched keys for held-out mIoU.",
    "best_so_far.png": "Best held-out mIoU so far of each arm against its number of finished search trials, in "
                       "trial order; a pruned or failed trial counts as a trial but never raises the best.",
    "retrain_curves.png": "Validation mIoU over iterations of the finished retrained runs: mean ± one SD per arm "
                          "(one panel per student and budget where there are several).",
    "pareto.png": "Held-out mIoU against student parameters of the finished search trials; the ringed trials are "
                  "the Pareto front (no trial is both smaller and better), joined by the dashed staircase.",
}
"""What each plot shows, by file name (the HTML report's captions, in the report's order)."""
COLOURS = dict(zip(ARMS, plt.get_cmap("tab10").colors, strict=False))
"""One colour per built-in arm, the same in every plot (a plug-in method's arms take matplotlib's next ones)."""


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, dpi=120, format="png")
    plt.close(figure)
    return path


def _strength(record: TrialRecord, by_key: dict[str, TrialRecord]) -> float | None:
    """The FAKD strength of a trial: its own searched value, or (older retrain records) its source trial's."""
    values = record.values
    if STRENGTH_KEY not in values and record.source in by_key:
        values = by_key[record.source].values
    value = values.get(STRENGTH_KEY)
    return float(value) if isinstance(value, (int, float)) else None


def strength_plot(records: list[TrialRecord], out: Path) -> Path | None:
    """mIoU against FAKD strength: finished search trials (held-out mIoU, filled circles) and finished retrained
    runs (validation mIoU, open diamonds) in the arm's colour; a scatter, never joined by lines."""
    by_key = {r.key: r for r in records}
    points: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        strength = _strength(r, by_key)
        if r.final_miou is not None and strength is not None:
            points[(r.arm, r.phase)].append((strength, r.final_miou))
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for (arm, phase), values in sorted(points.items(), key=lambda item: (arm_order(item[0][0]), item[0][1])):
        x, y = zip(*values, strict=True)
        colour = COLOURS.get(arm)
        if phase == "search":
            axis.scatter(x, y, s=22, marker="o", color=colour, label=f"{arm}: search (held-out)")
        else:
            axis.scatter(x, y, s=34, marker="D", facecolors="none", edgecolors=colour, linewidths=1.3,
                         label=f"{arm}: retrained (validation)")
    axis.set(xlabel="FAKD max strength λ", ylabel="mIoU", title="mIoU vs FAKD strength")
    axis.legend(fontsize="small")
    return _save(figure, out / "miou_vs_strength.png")


def importances(spec: StudySpec, records: list[TrialRecord], arm: str) -> dict[str, float]:
    """fANOVA importances of the arm's searched keys for held-out mIoU (finished search trials)."""
    import optuna

    space = arm_space(spec, arm)
    finished = [r for r in records if r.phase == "search" and r.arm == arm and r.final_miou is not None]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line per arm on stderr
    try:
        study = optuna.create_study(direction="maximize")  # in memory: the records are the data
    finally:
        optuna.logging.set_verbosity(verbosity)
    for r in finished:
        study.add_trial(optuna.trial.create_trial(params={k: r.values[k] for k in space}, distributions=space,
                                                  value=r.final_miou))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(study)


def importance_plot(spec: StudySpec, records: list[TrialRecord], out: Path) -> tuple[Path | None, str | None]:
    """Optuna's hyperparameter importances per arm (needs a few finished trials with varied values)."""
    found, notes = {}, []
    for arm in spec.settings.arms:
        try:
            found[arm] = importances(spec, records, arm)
        except (KeyError, ValueError, RuntimeError) as exc:
            notes.append(f"no importances for {arm}: {exc}")
    found = {arm: values for arm, values in found.items() if values}
    if not found:
        return None, "; ".join(notes) or "no importances: nothing was searched"
    figure, axes = plt.subplots(1, len(found), figsize=(4 * len(found), 3), squeeze=False)
    for axis, (arm, values) in zip(axes[0], found.items(), strict=True):
        names = list(values)
        axis.barh(names, [values[n] for n in names], color=COLOURS.get(arm))
        axis.set(title=arm, xlabel="importance")
    return _save(figure, out / "importances.png"), None


def best_so_far_plot(records: list[TrialRecord], out: Path) -> Path | None:
    """Best held-out mIoU so far of each arm (and selection repeat) against its finished search trials, ordered
    by index; PRUNED and FAILED trials count as trials but do not raise the best. Steps: trials are ordered."""
    trials: dict[tuple[str, int], list[TrialRecord]] = defaultdict(list)
    for r in records:
        if r.phase == "search" and r.state in TERMINAL:
            trials[(r.arm, r.repeat)].append(r)
    if not any(r.final_miou is not None for group in trials.values() for r in group):
        return None
    repeats = len({repeat for _, repeat in trials}) > 1
    styles = ["-", "--", ":", "-."]
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for (arm, repeat), group in sorted(trials.items(), key=lambda item: (arm_order(item[0][0]), item[0][1])):
        best, curve = -math.inf, []
        for r in sorted(group, key=lambda r: (r.index, r.key)):
            if r.state == COMPLETE and r.final_miou is not None:
                best = max(best, r.final_miou)
            curve.append(best if math.isfinite(best) else math.nan)
        counts = range(1, len(curve) + 1)
        label = f"{arm} (repeat {repeat})" if repeats else arm
        axis.step(counts, curve, where="post", color=COLOURS.get(arm), linestyle=styles[repeat % len(styles)],
                  label=label)
        axis.plot(counts, curve, linestyle="none", marker=".", color=COLOURS.get(arm))
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(xlabel="search trials of the arm", ylabel="best held-out mIoU so far", title="Search progress")
    axis.legend(fontsize="small")
    return _save(figure, out / "best_so_far.png")


def pareto_plot(records: list[TrialRecord], out: Path) -> Path | None:
    """mIoU against student parameters of every finished search trial; the Pareto front as a staircase (the
    best mIoU reached at each size)."""
    search = [r for r in records if r.phase == "search" and r.final_miou is not None and "params" in r.last]
    if len({r.last["params"] for r in search}) < 2:
        return None
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for arm in sorted({r.arm for r in search}, key=arm_order):
        mine = [r for r in search if r.arm == arm]
        axis.scatter([r.last["params"] / 1e6 for r in mine], [r.final_miou for r in mine], label=arm, s=18,
                     color=COLOURS.get(arm))
    front = pareto_front(search)
    axis.step([r.last["params"] / 1e6 for r in front], [r.final_miou for r in front], "k--", where="post")
    axis.scatter([r.last["params"] / 1e6 for r in front], [r.final_miou for r in front], s=70, facecolors="none",
                 edgecolors="k", label="Pareto front")
    axis.set(xlabel="student parameters (M)", ylabel="held-out mIoU", title="Pareto front")
    axis.legend(fontsize="small")
    return _save(figure, out / "pareto.png")


def curves_plot(records: list[TrialRecord], out: Path) -> Path | None:
    """Validation mIoU over iterations of the finished retrained runs: mean ± one standard deviation per arm,
    one panel per student and budget."""
    curves: dict[tuple[str, str], dict[str, list[dict[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        history = {row["iteration"]: float(row[METRIC]) for row in r.results
                   if isinstance(row.get(METRIC), (int, float)) and math.isfinite(row[METRIC])}
        if r.phase == "retrain" and r.state == COMPLETE and history:
            curves[(r.student, r.budget or "equal-iters")][r.arm].append(history)
    if not curves:
        return None
    students = sorted({student for student, _ in curves})
    budgets = sorted({budget for _, budget in curves})
    figure, axes = plt.subplots(len(students), len(budgets), figsize=(5.5 * len(budgets), 3.8 * len(students)),
                                squeeze=False)
    for (row, student), (column, budget) in itertools.product(enumerate(students), enumerate(budgets)):
        axis = axes[row][column]
        for arm, runs in sorted(curves.get((student, budget), {}).items(), key=lambda item: arm_order(item[0])):
            steps = sorted(set.intersection(*(set(run) for run in runs)))
            values = np.array([[run[s] for s in steps] for run in runs])
            mean, std = values.mean(0), values.std(0)
            axis.plot(steps, mean, color=COLOURS.get(arm), label=f"{arm} (n={len(runs)})")
            axis.fill_between(steps, mean - std, mean + std, color=COLOURS.get(arm), alpha=0.2)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        title = ", ".join([student] * (len(students) > 1) + [budget] * (len(budgets) > 1))
        axis.set(xlabel="iteration", ylabel="validation mIoU", title=f"Retrained runs{': ' + title if title else ''}")
        if axis.get_lines():
            axis.legend(fontsize="small")
    return _save(figure, out / "retrain_curves.png")


def write_plots(spec: StudySpec, records: list[TrialRecord], out: Path) -> tuple[list[Path], list[str]]:
    """Write every plot the study has data for into `out`; the PNG files written (kept: the caller embeds or
    lists them) and notes that say what was skipped and why."""
    out.mkdir(parents=True, exist_ok=True)
    importance, note = importance_plot(spec, records, out)
    made = [strength_plot(records, out), importance, best_so_far_plot(records, out), curves_plot(records, out),
            pareto_plot(records, out)]
    return [p for p in made if p is not None], [note] if note else []
