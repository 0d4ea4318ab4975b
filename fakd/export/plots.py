"""PNG plots of a study: mIoU vs FAKD strength, hyperparameter importances, Pareto front, retrain curves.

Everything comes from the study's trial records: no Optuna storage, data or Ray is opened.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fakd.results import TrialRecord, pareto_front  # noqa: E402
from fakd.results.space import arm_space  # noqa: E402
from fakd.spec import StudySpec  # noqa: E402
from fakd.vocab import ARM_TABLE  # noqa: E402

STRENGTH_KEY = "loss.fakd.max_strength"
CAPTIONS = {
    "miou_vs_strength.png": "Held-out mIoU of every finished search trial against its FAKD strength (one point "
                            "per trial, not joined).",
    "importances.png": "Hyperparameter importances (fANOVA) of each arm's searched keys for held-out mIoU.",
    "pareto.png": "Held-out mIoU against student parameters of the search trials; the dashed line joins the "
                  "Pareto front.",
    "retrain_curves.png": "Validation mIoU over iterations of the retrained runs: mean ± one SD per arm.",
}
"""What each plot shows, by file name (the HTML report's captions)."""


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def strength_plot(records: list[TrialRecord], out: Path) -> Path | None:
    """Held-out mIoU of every finished search trial against its FAKD strength, one marker colour per arm: a
    scatter, never joined by lines (trials are independent points, not a curve)."""
    points = defaultdict(list)
    for r in records:
        if r.phase == "search" and r.final_miou is not None and STRENGTH_KEY in r.values:
            points[r.arm].append((float(r.values[STRENGTH_KEY]), r.final_miou))
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for arm, values in sorted(points.items()):
        x, y = zip(*sorted(values), strict=True)
        axis.scatter(x, y, label=arm, s=22)
    axis.set(xlabel="FAKD max strength λ", ylabel="held-out mIoU", title="mIoU vs FAKD strength")
    axis.legend()
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
        axis.barh(names, [values[n] for n in names])
        axis.set(title=arm, xlabel="importance")
    return _save(figure, out / "importances.png"), None


def pareto_plot(records: list[TrialRecord], out: Path) -> Path | None:
    """mIoU against student parameters for every search trial, the Pareto front joined."""
    search = [r for r in records if r.phase == "search" and r.final_miou is not None and "params" in r.last]
    if len({r.last["params"] for r in search}) < 2:
        return None
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for arm in sorted({r.arm for r in search}):
        mine = [r for r in search if r.arm == arm]
        axis.scatter([r.last["params"] / 1e6 for r in mine], [r.final_miou for r in mine], label=arm, s=18)
    front = pareto_front(search)
    axis.plot([r.last["params"] / 1e6 for r in front], [r.final_miou for r in front], "k--", label="Pareto front")
    axis.set(xlabel="student parameters (M)", ylabel="held-out mIoU", title="Pareto front")
    axis.legend()
    return _save(figure, out / "pareto.png")


def curves_plot(records: list[TrialRecord], out: Path) -> Path | None:
    """Validation mIoU over iterations of the retrained runs: mean ± one standard deviation per arm."""
    curves = defaultdict(list)
    for r in records:
        history = {row["iteration"]: row["val_miou"] for row in r.results if "val_miou" in row}
        if r.phase == "retrain" and history:
            curves[r.arm].append(history)
    if not curves:
        return None
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for arm, runs in sorted(curves.items(), key=lambda item: list(ARM_TABLE).index(item[0])):
        steps = sorted(set.intersection(*(set(run) for run in runs)))
        values = np.array([[run[s] for s in steps] for run in runs])
        mean, std = values.mean(0), values.std(0)
        axis.plot(steps, mean, label=f"{arm} (n={len(runs)})")
        axis.fill_between(steps, mean - std, mean + std, alpha=0.2)
    axis.set(xlabel="iteration", ylabel="validation mIoU", title="Retrained runs")
    axis.legend()
    return _save(figure, out / "retrain_curves.png")


def write_plots(spec: StudySpec, records: list[TrialRecord], out: Path) -> tuple[list[Path], list[str]]:
    """Write every plot the study has data for into `out`; the PNG files written (kept: the caller embeds or
    lists them) and notes that say what was skipped and why."""
    out.mkdir(parents=True, exist_ok=True)
    importance, note = importance_plot(spec, records, out)
    made = [strength_plot(records, out), importance, pareto_plot(records, out), curves_plot(records, out)]
    return [p for p in made if p is not None], [note] if note else []
