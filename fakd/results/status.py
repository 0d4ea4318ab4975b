"""`launch.py status`: a study's trials as a table or JSON, read without Ray, the data or the lock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fakd.results.compute import format_compute, planned_against_spent
from fakd.results.layout import driver_state, open_study_dir
from fakd.results.records import TrialRecord, read_trials
from fakd.vocab import FAILED, RUNNING, TERMINAL


@dataclass(frozen=True)
class StudyStatus:
    """What `status` shows of a study: its trials, a line on its running driver (None when none runs), and the
    plan it stores (None for a study made before plans, or a plan edited out of shape)."""

    records: list[TrialRecord]
    driver: str | None
    plan: dict[str, Any] | None


def status(study_path: str | Path) -> StudyStatus:
    """Read a study's status, opening it once."""
    study = open_study_dir(study_path)
    plan = study.metadata().get("plan")
    return StudyStatus(read_trials(study), driver_state(study), plan if isinstance(plan, dict) else None)


STOPPED = "STOPPED"
"""How a trial shows that was RUNNING when its driver stopped: `resume` continues it from its checkpoint."""


def shown_state(record: TrialRecord, driver: str | None) -> str:
    """A trial's state as every view shows it: RUNNING only while a driver holds the study, else STOPPED."""
    return STOPPED if record.state == RUNNING and driver is None else record.state


def status_json(records: list[TrialRecord], driver: str | None = None) -> list[dict[str, Any]]:
    return [{**record.status_json(), "status": shown_state(record, driver)} for record in records]


def format_status(records: list[TrialRecord], driver: str | None, plan: Mapping[str, Any] | None = None) -> str:
    """One line per trial (phase, arm, status, iterations, best mIoU, values), a count per state, the driver; and
    with the study's `plan`, each arm's compute spent against planned."""
    if not records:
        return "no trials yet" + (f"; {driver}" if driver else "")
    text = _trial_lines(records, driver)
    if plan is None:
        return text
    compute = format_compute(plan, planned_against_spent(plan, records))
    return "\n".join([text, "", "compute spent of planned (planned hours at each arm's own rate so far; "
                       f"{plan.get('retrain', 'retrain as planned')}):", *(f"  {line}" for line in compute)])


def _trial_lines(records: list[TrialRecord], driver: str | None) -> str:
    rows = [("trial", "arm", "status", "iters", "best mIoU", "config")]
    for r in records:
        metric = "-" if r.best_miou is None else f"{r.best_miou:.4f}"
        config = ", ".join(f"{k}={_short(v)}" for k, v in sorted({**r.values, "seed": r.seed}.items()))
        status = f"FAILED ({r.reason})" if r.state == FAILED else shown_state(r, driver)
        rows.append((r.key, r.arm, status, str(r.iterations), metric, config))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] for row in rows]
    counts = Counter(f"{r.phase} {shown_state(r, driver)}" for r in records)
    lines.append("")
    lines.append(", ".join(f"{n} {what}" for what, n in sorted(counts.items())))
    lines.append(driver or "no driver is running (resume continues unfinished trials)"
                 if any(r.state not in TERMINAL for r in records) else driver or "")
    return "\n".join(line for line in lines).rstrip()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
