"""PNG plots of a study: mIoU vs FAKD strength, hyperparameter importances, Pareto front, retrain curves."""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fakd.export.pareto import pareto_front  # noqa: E402
from fakd.spec import StudySpec  # noqa: E402
from fakd.study.layout import StudyDir  # noqa: E402
from fakd.study.status import TrialRecord  # noqa: E402

STRENGTH_KEY = "loss.fakd.max_strength"


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def strength_plot(records: list[TrialRecord], out: Path) -> Path | None:
    """Held-out mIoU of every finished search trial against its FAKD strength, one series per arm."""
    points = defaultdict(list)
    for r in records:
        if r.phase == "search" and r.final_metric is not None and STRENGTH_KEY in r.config:
            points[r.arm].append((float(r.config[STRENGTH_KEY]), r.final_metric))
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for arm, values in sorted(points.items()):
        x, y = zip(*sorted(values), strict=True)
        axis.plot(x, y, "o-", label=arm)
    axis.set(xlabel="FAKD max strength λ", ylabel="held-out mIoU", title="mIoU vs FAKD strength")
    axis.legend()
    return _save(figure, out / "miou_vs_strength.png")


def importance_plot(spec: StudySpec, study: StudyDir, out: Path) -> tuple[Path | None, str | None]:
    """Optuna's hyperparameter importances per arm (needs a few finished trials with varied values)."""
    import optuna

    if not spec.settings.search.storage and not (study.root / "optuna.db").is_file():
        return None, "no importances: the study searched nothing (no Optuna storage)"
    url = spec.settings.search.storage or study.optuna_url()
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    found, notes = {}, []
    for arm in spec.settings.arms:
        try:
            trials_study = optuna.load_study(study_name=f"{spec.name}/{arm}", storage=storage)
            # the evaluators rank what drives a *low* target: negate the mIoU we maximise
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "importances are for low targets": we negated
                found[arm] = optuna.importance.get_param_importances(trials_study, target=lambda t: -t.values[0])
        except (KeyError, ValueError, RuntimeError) as exc:
            notes.append(f"no importances for {arm}: {exc}")
    if not found:
        return None, "; ".join(notes) or None
    figure, axes = plt.subplots(1, len(found), figsize=(4 * len(found), 3), squeeze=False)
    for axis, (arm, importances) in zip(axes[0], found.items(), strict=True):
        names = list(importances)
        axis.barh(names, [importances[n] for n in names])
        axis.set(title=arm, xlabel="importance")
    return _save(figure, out / "importances.png"), None


def pareto_plot(records: list[TrialRecord], out: Path) -> Path | None:
    """mIoU against student parameters for every search trial, the Pareto front joined."""
    search = [r for r in records if r.phase == "search" and r.final_metric is not None and "params" in r.final]
    if len({r.final["params"] for r in search}) < 2:
        return None
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for arm in sorted({r.arm for r in search}):
        mine = [r for r in search if r.arm == arm]
        axis.scatter([r.final["params"] / 1e6 for r in mine], [r.final_metric for r in mine], label=arm, s=18)
    front = pareto_front(search)
    axis.plot([r.final["params"] / 1e6 for r in front], [r.final_metric for r in front], "k--", label="Pareto front")
    axis.set(xlabel="student parameters (M)", ylabel="held-out mIoU", title="Pareto front")
    axis.legend()
    return _save(figure, out / "pareto.png")


def curves_plot(records: list[TrialRecord], out: Path) -> Path | None:
    """Validation mIoU over iterations of the retrained runs: mean ± one standard deviation per arm."""
    curves = defaultdict(list)
    for r in records:
        if r.phase == "retrain" and r.history:
            curves[r.arm].append(dict(r.history))
    if not curves:
        return None
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for arm, runs in sorted(curves.items()):
        steps = sorted(set.intersection(*(set(run) for run in runs)))
        values = np.array([[run[s] for s in steps] for run in runs])
        mean, std = values.mean(0), values.std(0)
        axis.plot(steps, mean, label=f"{arm} (n={len(runs)})")
        axis.fill_between(steps, mean - std, mean + std, alpha=0.2)
    axis.set(xlabel="iteration", ylabel="validation mIoU", title="Retrained runs")
    axis.legend()
    return _save(figure, out / "retrain_curves.png")


def write_plots(
    spec: StudySpec, study: StudyDir, records: list[TrialRecord], out: Path
) -> tuple[list[Path], list[str]]:
    """Every plot the study has data for; notes say what was skipped and why."""
    out.mkdir(parents=True, exist_ok=True)
    importance, note = importance_plot(spec, study, out)
    made = [strength_plot(records, out), importance, pareto_plot(records, out), curves_plot(records, out)]
    return [p for p in made if p is not None], [note] if note else []
