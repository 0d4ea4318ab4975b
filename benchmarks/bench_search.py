"""Search efficiency on the quickstart task, `kd+fakd` arm: how much compute each search method spends before it has
found a configuration within 0.5 mIoU (held-out) of the best of a full grid.

The full grid (3 learning rates × 3 KD temperatures × 3 FAKD strengths, 27 runs) is trained for real once, as the
study trains search trials (train minus the holdout, every evaluation on the holdout, the quickstart's teacher,
schedule and seed). Then each method searches the same 27 points with a third of the grid's trials (9), over three
search seeds, driven by the study engine's own searcher and scheduler (`SearchPhase`, the per-arm Optuna study,
successive halving as the quickstart configures it) with two trials at a time on a simulated clock; each trial's
evaluations are the grid run's recorded ones (a search trial trains with the spec's fixed seed, so a trial of a
configuration is that grid run, evaluation for evaluation). Compute is training + evaluation wall time of the
windows the trials ran (CPU-seconds at one CPU per trial); trial start-up and checkpoint reloads are left out here
(the cluster benchmark measures those). `FAKD_SEARCH_CURVES=FILE` keeps the grid's recorded evaluations in FILE
(JSON) and reuses them when it exists, so the replays can be run again without training the grid.
"""

from __future__ import annotations

import copy
import itertools
import json
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import markdown

SPEC = Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml"
ARM = "kd+fakd"
GRID = {"train.lr": [0.02, 0.05, 0.1], "loss.kd.temperature": [1.0, 2.0, 4.0],
        "loss.fakd.max_strength": [0.5, 2.0, 5.0]}
TRIALS, SLOTS, SEEDS, TOLERANCE = 9, 2, (0, 1, 2), 0.005
METHODS = {  # name: (sampler, scheduler)
    "random": ("random", "none"),
    "random + halving": ("random", "asha"),
    "TPE": ("tpe", "none"),
    "TPE + halving": ("tpe", "asha"),
}

Point = tuple[tuple[str, Any], ...]


def _point(values: dict[str, Any]) -> Point:
    return tuple(sorted((key, float(value)) for key, value in values.items()))


def _raw_spec(sampler: str = "tpe", scheduler: str = "asha", seed: int = 0) -> dict[str, Any]:
    """The quickstart with the kd+fakd arm alone, the grid's values as the search space."""
    raw = yaml.safe_load(SPEC.read_text())
    raw["arms"] = [ARM]
    raw["train"]["lr"] = {"choice": GRID["train.lr"]}
    raw["loss"]["kd"]["temperature"] = {"choice": GRID["loss.kd.temperature"]}
    raw["loss"]["fakd"]["max_strength"] = {"choice": GRID["loss.fakd.max_strength"]}
    search = raw["search"]
    search.update(num_samples=TRIALS, max_concurrent=SLOTS, seed=seed, sampler=sampler, scheduler=scheduler)
    if scheduler == "none":
        search.pop("grace_period", None)
        search.pop("reduction_factor", None)
    raw["tracking"] = {"wandb": False}
    return raw


def _grid_run(args: tuple[dict[str, Any], dict[str, Any], Any]) -> tuple[Point, list[dict[str, Any]]]:
    """Train one grid point as a search trial; its evaluations (iteration, held-out mIoU, window seconds)."""
    import torch

    from fakd.spec import validate_spec
    from fakd.train import train_student

    raw, values, teacher = args
    torch.set_num_threads(1)  # what a trial with one CPU gets
    cfg = validate_spec(raw, str(SPEC)).run_config(ARM, values, phase="search")
    rows: list[dict[str, Any]] = []

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        rows.append({k: metrics[k] for k in ("iteration", "val_miou", "window_seconds", "seconds_per_iter")})

    with tempfile.TemporaryDirectory() as work:
        train_student(cfg, teacher, Path(work), report=report, progress=False)
    return _point(values), rows


@dataclass
class Running:
    key: str
    evaluation: int  # evaluations done
    window_start: float
    window_end: float


@dataclass
class Replay:
    """What one search did on the simulated clock."""

    found: list[tuple[float, float, float]] = field(default_factory=list)  # (compute, wall, best so far) per finish
    compute: float = 0.0
    wall: float = 0.0
    trials: int = 0
    pruned: int = 0

    def reached(self, target: float) -> tuple[float, float] | None:
        """(compute, wall) when the best finished trial first came within TOLERANCE of `target`."""
        for compute, wall, best in self.found:
            if best >= target - TOLERANCE:
                return compute, wall
        return None

    @property
    def best(self) -> float:
        return max((best for _, _, best in self.found), default=float("nan"))


class GridPhase:
    """The grid as a phase: every point once, in grid order, to the end."""

    def __init__(self, points: list[Point], total_iters: int) -> None:
        self.queue = list(points)
        self.records: dict[str, Any] = {}
        self.total_iters = total_iters

    def next_trial(self) -> Any:
        if not self.queue:
            return None
        point = self.queue.pop(0)
        record = _GridRecord(key=str(point), values=dict(point), total_iters=self.total_iters)
        self.records[record.key] = record
        return record

    def on_result(self, key: str, row: dict[str, Any]) -> bool:
        self.records[key].results.append(row)
        return True

    def on_end(self, key: str, error: str | None) -> None:
        self.records[key].state = "COMPLETE"


@dataclass
class _GridRecord:
    key: str
    values: dict[str, Any]
    total_iters: int
    state: str = "RUNNING"
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        return self.results[-1]["iteration"] if self.results else 0

    @property
    def final_miou(self) -> float | None:
        return self.results[-1]["val_miou"] if self.state == "COMPLETE" and self.results else None


def replay(phase: Any, curves: dict[Point, list[dict[str, Any]]]) -> Replay:
    """Run `phase` with SLOTS trials at once on a simulated clock, each evaluation taking its recorded time."""
    from fakd.study.phases import FINISHED

    out, clock, done_compute = Replay(), 0.0, 0.0
    running: dict[str, Running] = {}
    best = float("-inf")

    def compute_now() -> float:
        return done_compute + sum(clock - r.window_start for r in running.values())

    while True:
        while len(running) < SLOTS:
            record = phase.next_trial()
            if record is None or record == FINISHED:
                break
            curve = curves[_point(record.values)]
            done = sum(1 for row in curve if row["iteration"] <= record.iterations)
            if done:  # a trial resumed from its checkpoint reports it again first
                phase.on_result(record.key, dict(curve[done - 1]))
            else:
                out.trials += 1
            running[record.key] = Running(record.key, done, clock, clock + curve[done]["window_seconds"])
        if not running:
            break
        current = min(running.values(), key=lambda r: (r.window_end, r.key))
        clock = current.window_end
        record = phase.records[current.key]
        curve = curves[_point(record.values)]
        row = curve[current.evaluation]
        done_compute += row["window_seconds"]
        current.evaluation += 1
        keep = phase.on_result(current.key, dict(row))
        if keep and row["iteration"] < record.total_iters:
            current.window_start, current.window_end = clock, clock + curve[current.evaluation]["window_seconds"]
            continue
        del running[current.key]
        phase.on_end(current.key, None)
        if record.state == "PRUNED":
            out.pruned += 1
        if record.final_miou is not None:
            best = max(best, record.final_miou)
            out.found.append((compute_now(), clock, best))
    out.compute, out.wall = done_compute, clock
    return out


def search_replay(sampler: str, scheduler: str, seed: int, curves: dict[Point, list[dict[str, Any]]],
                  root: Path) -> Replay:
    from fakd.results.layout import FORMAT, StudyDir, write_json
    from fakd.spec import validate_spec
    from fakd.study.optuna_link import OptunaLink, open_storage
    from fakd.study.phases import SearchPhase

    spec = validate_spec(_raw_spec(sampler, scheduler, seed), str(SPEC))
    study = StudyDir(root / f"{sampler}-{scheduler}-{seed}")
    study.root.mkdir(parents=True)
    write_json(study.marker, {"format": FORMAT, "name": "bench", "optuna_prefix": "bench"})
    phase = SearchPhase(study, spec, lambda line: None, OptunaLink(spec, open_storage(spec, study), "bench"))
    return replay(phase, curves)


def main() -> list[dict[str, Any]]:
    from fakd.spec import validate_spec
    from fakd.train import ensure_teacher

    raw = _raw_spec()
    spec = validate_spec(copy.deepcopy(raw), str(SPEC))
    points = [dict(zip(GRID, combo, strict=True)) for combo in itertools.product(*GRID.values())]
    cache = Path(os.environ["FAKD_SEARCH_CURVES"]) if os.environ.get("FAKD_SEARCH_CURVES") else None
    with tempfile.TemporaryDirectory() as root:
        if cache is not None and cache.is_file():
            saved = json.loads(cache.read_text())
            curves = {_point(item["values"]): item["rows"] for item in saved["curves"]}
            teacher_seconds, grid_seconds = saved["teacher_seconds"], saved["grid_seconds"]
            print(f"(grid evaluations read from {cache}, recorded {saved['recorded']})\n")
        else:
            started = time.perf_counter()
            teacher = ensure_teacher(spec.run_config(ARM), Path(root) / "teachers", progress=False)
            teacher_seconds = time.perf_counter() - started
            started = time.perf_counter()
            with multiprocessing.get_context("spawn").Pool(SLOTS) as pool:
                curves = dict(pool.map(_grid_run, [(copy.deepcopy(raw), values, teacher) for values in points]))
            grid_seconds = time.perf_counter() - started
            if cache is not None:
                cache.write_text(json.dumps({
                    "recorded": time.strftime("%Y-%m-%d %H:%M"), "teacher_seconds": teacher_seconds,
                    "grid_seconds": grid_seconds,
                    "curves": [{"values": dict(point), "rows": rows} for point, rows in curves.items()]}))
        total_iters = spec.defaults.train.iters
        grid = replay(GridPhase([_point(p) for p in points], total_iters), curves)
        searches = {(name, seed): search_replay(*METHODS[name], seed, curves, Path(root) / "replays")
                    for name in METHODS for seed in SEEDS}

    finals = {point: curve[-1]["val_miou"] for point, curve in curves.items()}
    target = max(finals.values())
    ordered = sorted(finals.values(), reverse=True)

    def rank(best: float) -> int:
        """1 for the grid's best: the position of a held-out mIoU among the grid's."""
        return 1 + sum(value > best + 1e-12 for value in ordered)

    best_point = max(finals, key=finals.get)
    within = sum(value >= target - TOLERANCE for value in finals.values())
    top = ", ".join(f"{100 * value:.2f}" for value in ordered[:5])
    print(f"Grid: {len(points)} points ({', '.join(f'{k} {v}' for k, v in GRID.items())}), trained for real in "
          f"{grid_seconds:.0f} s ({SLOTS} at a time; teacher {teacher_seconds:.0f} s). Best held-out mIoU "
          f"{100 * target:.2f} at {dict(best_point)}; {within} of {len(points)} points within "
          f"{100 * TOLERANCE:.1f} mIoU of it; the five best: {top}. Held-out mIoU across the grid: "
          f"{100 * min(finals.values()):.2f}–{100 * target:.2f}. Each method: {TRIALS} trials, {SLOTS} at a time, "
          f"search seeds {SEEDS}.\n")
    rows = [{"method": "grid (all 27, in order)", "seed": "-", "trials": grid.trials, "pruned": 0,
             "reached": "yes", "compute to reach s": grid.reached(target)[0], "total compute s": grid.compute,
             "compute / grid": 1.0, "best mIoU %": 100 * grid.best, "rank in grid": 1, "gap to grid best": 0.0}]
    summary = []
    for name in METHODS:
        reached = []
        for seed in SEEDS:
            result = searches[(name, seed)]
            hit = result.reached(target)
            reached.append(hit)
            rows.append({"method": name, "seed": seed, "trials": result.trials, "pruned": result.pruned,
                         "reached": "yes" if hit else "no", "compute to reach s": hit[0] if hit else "-",
                         "total compute s": result.compute, "compute / grid": result.compute / grid.compute,
                         "best mIoU %": 100 * result.best, "rank in grid": rank(result.best),
                         "gap to grid best": 100 * (target - result.best)})
        hits = [hit[0] for hit in reached if hit]
        totals = [searches[(name, seed)].compute for seed in SEEDS]
        summary.append({"method": name, "reached (of 3)": len(hits),
                        "mean compute to reach s": sum(hits) / len(hits) if hits else "-",
                        "mean total compute s": sum(totals) / len(totals),
                        "total / grid": sum(totals) / len(totals) / grid.compute,
                        "mean gap to grid best": sum(100 * (target - searches[(name, s)].best) for s in SEEDS) / 3,
                        "ranks in grid": "/".join(str(rank(searches[(name, s)].best)) for s in SEEDS)})
    print(markdown(rows, list(rows[0])))
    print()
    print(markdown(summary, list(summary[0])))
    print(f"\ncompute: training + evaluation seconds of the windows run, one CPU per trial; the grid's total is "
          f"{grid.compute:.0f} s ({os.cpu_count()} cores, torch with 1 thread per trial)")
    return rows


if __name__ == "__main__":
    main()
