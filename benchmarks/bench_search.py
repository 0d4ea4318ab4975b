"""Selection against true means on the quickstart task: which search protocol picks the configuration whose *mean*
held-out mIoU over seeds is best, for how much compute.

Two grids are trained for real as search trials (train minus the holdout, held-out mIoU at every evaluation, the
quickstart's teacher and schedule), each point with the search's own seed and the first confirmation seeds:
- `kd+fakd`: `train.lr` 0.02/0.05/0.1 × `loss.kd.temperature` 1/2/4 × `loss.fakd.max_strength` 0.5/2/5 (27 points);
- `kd`: `train.lr` × `loss.kd.temperature` (9 points), the base an inheriting `kd+fakd` takes its values from.
A point's truth is its mean over those seeds. Each protocol then searches the same points with the study engine's own
phases (`SearchPhase` with the arm's Optuna study and halving, `ConfirmPhase`, `select_best`), two trials at a time on a
simulated clock, each run's evaluations replayed from the grid run of its configuration and seed, over several search
seeds. Search seed s replays the search's own seed and the confirmation seeds from the grid's seed layers rotated by s
(`seen_layers`), so that each search sees another draw of the training noise, and each search's regret is also measured
against the truth over the layers it never saw. Reported per protocol: the true-mean regret of the selection (best true
mean − the selected point's true mean), how often the selection is within 1 mIoU of the best true mean, and its compute
as a fraction of one grid pass (27 runs at one seed). Compute is the training + evaluation seconds of the windows run,
one CPU per trial.

`inherit` protocols search `kd` (9 points) with the protocol, then `kd+fakd` in `loss.fakd.max_strength` alone on the
kd selection (its 3 values, each once); their compute is the add-on's own (the kd search is the kd arm's, paid by a
study anyway), with the kd stage's compute beside it.

`FAKD_SEARCH_CURVES=FILE` keeps the grids' recorded evaluations in FILE (JSON Lines, one run per line, appended as
each run finishes) and reuses them: a stopped grid resumes where it stopped, and the replays can be run again without
training. Runs are trained seed by seed, so a grid stopped early still has whole seeds. `FAKD_SEARCH_TRAIN_SEEDS=N`
(default 4) sets the seeds per grid point, `FAKD_SEARCH_SEEDS=N` (default 6) the search seeds.
"""

from __future__ import annotations

import copy
import itertools
import json
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import markdown

SPEC = Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml"
ARM, BASE = "kd+fakd", "kd"
GRID = {"train.lr": [0.02, 0.05, 0.1], "loss.kd.temperature": [1.0, 2.0, 4.0],
        "loss.fakd.max_strength": [0.5, 2.0, 5.0]}
TRIALS, SLOTS = 9, 2
SEARCH_SEEDS = tuple(range(int(os.environ.get("FAKD_SEARCH_SEEDS", "6"))))
CONFIRM = {"top": 2, "seeds": 2}
# per grid point: the search's seed, then the confirmation seeds
TRAIN_SEEDS = int(os.environ.get("FAKD_SEARCH_TRAIN_SEEDS", "4"))
WITHIN = 0.01  # "within 1 mIoU of the best true mean"
SAMPLERS = ("random", "tpe", "gp", "qmc")

Point = tuple[tuple[str, Any], ...]
Curves = dict[tuple[str, Point, int], list[dict[str, Any]]]  # (arm, point, seed) → evaluations


def _point(values: dict[str, Any]) -> Point:
    return tuple(sorted((key, float(value)) for key, value in values.items()))


def _raw_spec(arms: list[str], sampler: str = "random", scheduler: str = "none", seed: int = 0,
              confirm: dict[str, int] | None = None, add_on: str = "joint", trials: int = TRIALS) -> dict[str, Any]:
    """The quickstart with `arms`, the grid's values as the search space."""
    raw = yaml.safe_load(SPEC.read_text())
    raw["arms"] = list(arms)
    raw["train"]["lr"] = {"choice": GRID["train.lr"]}
    raw["loss"]["kd"]["temperature"] = {"choice": GRID["loss.kd.temperature"]}
    if ARM in arms:
        raw["loss"]["fakd"]["max_strength"] = {"choice": GRID["loss.fakd.max_strength"]}
    else:
        raw["loss"]["fakd"]["max_strength"] = GRID["loss.fakd.max_strength"][0]
    search = raw["search"]
    search.update(num_samples=trials, max_concurrent=SLOTS, seed=seed, sampler=sampler, scheduler=scheduler,
                  add_on=add_on)
    search.pop("decide", None)
    search["confirm"] = dict(confirm) if confirm else False
    if scheduler == "none":
        search.pop("grace_period", None)
        search.pop("reduction_factor", None)
    raw["tracking"] = {"wandb": False}
    return raw


def confirm_seed(spec: Any, i: int) -> int:
    from fakd.study.selection import confirm_seeds

    return confirm_seeds(spec, i + 1)[-1]


def _grid_run(args: tuple[dict[str, Any], str, dict[str, Any], int, Any]) -> tuple[tuple[str, Point, int], list]:
    """Train one grid point with one seed as a search trial; its evaluations."""
    import torch

    from fakd.spec import validate_spec
    from fakd.train import train_student

    raw, arm, values, seed, teacher = args
    torch.set_num_threads(1)  # what a trial with one CPU gets
    cfg = validate_spec(raw, str(SPEC)).run_config(arm, values, split="holdout")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
    rows: list[dict[str, Any]] = []

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        rows.append({k: metrics[k] for k in ("iteration", "val_miou", "window_seconds", "seconds_per_iter")})

    with tempfile.TemporaryDirectory() as work:
        train_student(cfg, teacher, Path(work), report=report, progress=False)
    return (arm, _point(values), seed), rows


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

    def reached(self, target: float, tolerance: float = 0.005) -> tuple[float, float] | None:
        """(compute, wall) when the best finished trial first came within `tolerance` of `target`."""
        for compute, wall, best in self.found:
            if best >= target - tolerance:
                return compute, wall
        return None

    @property
    def best(self) -> float:
        return max((best for _, _, best in self.found), default=float("nan"))


class GridPhase:
    """The grid as a phase: every point once, in grid order, to the end."""

    def __init__(self, points: list[Point], total_iters: int, seed: int = 0) -> None:
        self.queue = list(points)
        self.records: dict[str, Any] = {}
        self.total_iters, self.seed = total_iters, seed

    def next_trial(self) -> Any:
        if not self.queue:
            return None
        point = self.queue.pop(0)
        record = _GridRecord(key=str(point), values=dict(point), total_iters=self.total_iters, seed=self.seed)
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
    seed: int = 0
    state: str = "RUNNING"
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        return self.results[-1]["iteration"] if self.results else 0

    @property
    def final_miou(self) -> float | None:
        return self.results[-1]["val_miou"] if self.state == "COMPLETE" and self.results else None


def replay(phase: Any, curve_of: Callable[[Any], list[dict[str, Any]]]) -> Replay:
    """Run `phase` with SLOTS trials at once on a simulated clock, each evaluation taking its recorded time
    (`curve_of(record)`: the recorded evaluations of the run that record is)."""
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
            curve = curve_of(record)
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
        curve = curve_of(record)
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




def _study(root: Path, name: str) -> Any:
    from fakd.results.layout import FORMAT, StudyDir, write_json

    study = StudyDir(root / name)
    study.root.mkdir(parents=True)
    write_json(study.marker, {"format": FORMAT, "name": "bench", "optuna_prefix": "bench"})
    return study


@dataclass
class Selection:
    """What one protocol selected and what it cost."""

    point: Point
    compute: float  # the arm's own search (+ confirmation) compute
    base_compute: float = 0.0  # inherit: the base arm's search (+ confirmation)
    runs: int = 0
    pruned: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _stage(study: Any, raw: dict[str, Any], arms: list[str], curve_of: Callable[[Any], list]) -> tuple[float, int, int]:
    """Search `arms` of `raw` in `study` (and confirm them when `raw` asks): compute, runs, pruned."""
    from fakd.results import read_trials
    from fakd.spec import validate_spec
    from fakd.study.optuna_link import OptunaLink, open_storage
    from fakd.study.phases import ConfirmPhase, SearchPhase
    from fakd.study.selection import plan_confirm

    spec = validate_spec(copy.deepcopy(raw), str(SPEC))
    link = OptunaLink(spec, open_storage(spec, study), "bench")
    search = replay(SearchPhase(study, spec, lambda line: None, link, read_trials(study, "search"), arms), curve_of)
    compute, runs, pruned = search.compute, search.trials, search.pruned
    if spec.settings.search.confirmation is not None:
        plan = [r for r in plan_confirm(spec, read_trials(study)) if r.arm in arms]
        confirmed = replay(ConfirmPhase(study, spec, lambda line: None, plan), curve_of)
        compute, runs = compute + confirmed.compute, runs + confirmed.trials
    return compute, runs, pruned


def seen_layers(seed: int, layers: int) -> list[int]:
    """The grid's seed layers (indices into its training seeds) that the search with search seed `seed` trains on:
    the search's own seed and the confirmation seeds, rotated by the search seed, so that each search sees another
    draw of the training noise."""
    return [(i + seed) % layers for i in range(1 + CONFIRM["seeds"])]


def select(protocol: dict[str, Any], seed: int, curves: Curves, root: Path, seeds: list[int]) -> Selection:
    """Run one protocol with one search seed; the kd+fakd point it selects. `seeds`: the grid's training seeds,
    the search's own first, then the confirmation seeds; a run of `seeds[i]` is replayed from the grid's layer
    `seen_layers(seed, ...)[i]`."""
    from fakd.results import read_trials
    from fakd.results.selection import select_best

    layer_of = {seeds[i]: seeds[layer] for i, layer in enumerate(seen_layers(seed, len(seeds)))}

    def curve_of(record: Any) -> list[dict[str, Any]]:
        values = {k: v for k, v in record.values.items() if k in GRID}
        if record.arm == BASE:
            values.pop("loss.fakd.max_strength", None)
        return curves[(record.arm, _point(values), layer_of[record.seed])]

    settings = {k: protocol[k] for k in ("sampler", "scheduler", "confirm")}
    study = _study(root, f"{protocol['name']}-{seed}".replace(" ", "_").replace("+", "p"))
    if protocol["add_on"] == "joint":
        compute, runs, pruned = _stage(study, _raw_spec([ARM], seed=seed, **settings), [ARM], curve_of)
        base_compute = 0.0
    else:
        base_compute, _, _ = _stage(study, _raw_spec([BASE, ARM], seed=seed, add_on="inherit", **settings), [BASE],
                                    curve_of)
        own = {**settings, "scheduler": "none"}  # three trials: nothing to halve
        raw = _raw_spec([BASE, ARM], seed=seed, add_on="inherit", trials=len(GRID["loss.fakd.max_strength"]), **own)
        compute, runs, pruned = _stage(study, raw, [ARM], curve_of)
    chosen = select_best(read_trials(study))[(ARM, 0, "test_resnet")]
    point = _point({k: v for k, v in chosen.values.items() if k in GRID})
    return Selection(point, compute, base_compute, runs, pruned)


def protocols() -> list[dict[str, Any]]:
    found = []
    for add_on, sampler, scheduler, confirm in itertools.product(("joint", "inherit"), SAMPLERS, ("none", "asha"),
                                                                 (None, CONFIRM)):
        name = f"{add_on} {sampler}" + (" + halving" if scheduler == "asha" else "") + (" + confirm" if confirm else "")
        found.append({"name": name, "add_on": add_on, "sampler": sampler, "scheduler": scheduler, "confirm": confirm})
    return found


def _read_cache(cache: Path | None) -> Curves:
    """The runs recorded in `cache` (JSON Lines); a line cut short by a stop is skipped."""
    curves: Curves = {}
    if cache is None or not cache.is_file():
        return curves
    for line in cache.read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        curves[(item["arm"], _point(item["values"]), item["seed"])] = item["rows"]
    return curves


def train_grids(root: Path, cache: Path | None) -> tuple[Curves, dict[str, float]]:
    """Every grid point of both arms at every training seed, trained for real two at a time, seed by seed; runs
    already in `cache` are read, new ones appended to it as they finish."""
    from fakd.spec import validate_spec
    from fakd.train import ensure_teacher

    raw = _raw_spec([BASE, ARM])
    spec = validate_spec(copy.deepcopy(raw), str(SPEC))
    seeds = [spec.defaults.train.seed] + [confirm_seed(spec, i) for i in range(TRAIN_SEEDS - 1)]
    curves = _read_cache(cache)
    jobs = []
    for seed in seeds:
        for arm in (ARM, BASE):
            keys = list(GRID) if arm == ARM else ["train.lr", "loss.kd.temperature"]
            for combo in itertools.product(*(GRID[k] for k in keys)):
                values = dict(zip(keys, combo, strict=True))
                if (arm, _point(values), seed) not in curves:
                    jobs.append((copy.deepcopy(raw), arm, values, seed))
    timing: dict[str, float] = {"teacher_seconds": 0.0, "grid_seconds": 0.0, "runs_trained": len(jobs)}
    if jobs:
        print(f"training {len(jobs)} grid runs ({len(curves)} read from {cache})", flush=True)
        started = time.perf_counter()
        teacher = ensure_teacher(spec.run_config(ARM), root / "teachers", progress=False)
        timing["teacher_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(SLOTS) as pool:
            for done, (key, rows) in enumerate(pool.imap(_grid_run, [(*job, teacher) for job in jobs]), start=1):
                curves[key] = rows
                if cache is not None:
                    arm, point, seed = key
                    with cache.open("a") as out:
                        out.write(json.dumps({"arm": arm, "values": dict(point), "seed": seed, "rows": rows}) + "\n")
                if done % 9 == 0:
                    print(f"  {done}/{len(jobs)} runs, {time.perf_counter() - started:.0f} s", flush=True)
        timing["grid_seconds"] = time.perf_counter() - started
    return {key: rows for key, rows in curves.items() if key[2] in seeds}, timing


def regret_uncertainty(scores: dict[Point, list[float]], picks: dict[str, list[Point]], draws: int = 2000,
                       seed: int = 0) -> dict[str, dict[str, float]]:
    """How sure the protocols' mean regrets are, by a bootstrap over both of their sources of noise: each draw
    resamples the training seeds (the same resample for every point, as the points share their seeds) and so
    the truth, and the search seeds (the same for every protocol). `scores[point]`: the point's final mIoU per
    training seed; `picks[protocol]`: its selected point per search seed. Per protocol: the 5th and 95th
    percentiles of its mean regret (mIoU) and the share of draws in which its mean regret is the lowest (ties
    shared)."""
    rng = random.Random(seed)
    n_seeds = len(next(iter(scores.values())))
    n_searches = len(next(iter(picks.values())))
    regrets: dict[str, list[float]] = {name: [] for name in picks}
    lowest = dict.fromkeys(picks, 0.0)
    for _ in range(draws):
        train = [rng.randrange(n_seeds) for _ in range(n_seeds)]
        search = [rng.randrange(n_searches) for _ in range(n_searches)]
        truth = {point: statistics.fmean(values[i] for i in train) for point, values in scores.items()}
        best = max(truth.values())
        means = {name: 100 * statistics.fmean(best - truth[chosen[i]] for i in search)
                 for name, chosen in picks.items()}
        floor = min(means.values())
        winners = [name for name, mean in means.items() if mean <= floor + 1e-12]
        for name, mean in means.items():
            regrets[name].append(mean)
        for name in winners:
            lowest[name] += 1 / len(winners)
    out = {}
    for name, values in regrets.items():
        values.sort()
        out[name] = {"low": values[int(0.05 * (draws - 1))], "high": values[int(0.95 * (draws - 1))],
                     "lowest": lowest[name] / draws}
    return out


def main() -> list[dict[str, Any]]:
    cache = Path(os.environ["FAKD_SEARCH_CURVES"]) if os.environ.get("FAKD_SEARCH_CURVES") else None
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        curves, timing = train_grids(root, cache)
        seeds = sorted({seed for _, _, seed in curves})
        finals = {(arm, point): [curves[(arm, point, s)][-1]["val_miou"] for s in seeds]
                  for arm, point, _ in curves}
        truth = {point: statistics.fmean(values) for (arm, point), values in finals.items() if arm == ARM}
        points = sorted(truth)
        search_seed = seeds[0]
        grid = replay(GridPhase(points, curves[(ARM, points[0], search_seed)][-1]["iteration"], search_seed),
                      lambda record: curves[(ARM, _point(record.values), record.seed)])
        results = {(p["name"], s): select(p, s, curves, root / "replays", seeds)
                   for p in protocols() for s in SEARCH_SEEDS}

    best = max(truth.values())
    ranked = sorted(truth, key=truth.get, reverse=True)
    single = {point: finals[(ARM, point)][0] for point in points}  # the one-seed score a search sees
    seed_sd = statistics.fmean(statistics.stdev(finals[(ARM, p)]) for p in points)
    print(f"Grid: {len(points)} kd+fakd points ({', '.join(f'{k} {v}' for k, v in GRID.items())}) and 9 kd points, "
          f"each trained with seeds {seeds} ({timing['runs_trained']:.0f} runs trained now: "
          f"{timing['grid_seconds']:.0f} s, {SLOTS} at a time, teacher {timing['teacher_seconds']:.0f} s). "
          f"Best true mean {100 * best:.2f} mIoU at {dict(ranked[0])}; next "
          f"{', '.join(f'{100 * truth[p]:.2f}' for p in ranked[1:5])}; "
          f"{sum(v >= best - WITHIN for v in truth.values())} points within 1 mIoU of it. Mean per-point seed SD "
          f"{100 * seed_sd:.2f} mIoU. The best single-seed "
          f"(search-seed) point has true mean {100 * truth[max(single, key=single.get)]:.2f} (rank "
          f"{ranked.index(max(single, key=single.get)) + 1} of {len(points)}). One grid pass (27 runs, one seed): "
          f"{grid.compute:.0f} s of compute.\n")
    def unseen_regret(s: int, point: Point) -> float:
        """Regret against the truth over the seed layers search seed `s` never trained on (free of its luck there)."""
        unseen = [i for i in range(len(seeds)) if i not in seen_layers(s, len(seeds))]
        truth_there = {p: statistics.fmean(finals[(ARM, p)][i] for i in unseen) for p in points}
        return 100 * (max(truth_there.values()) - truth_there[point])

    rows = []
    sure = regret_uncertainty({point: finals[(ARM, point)] for point in points},
                              {p["name"]: [results[(p["name"], s)].point for s in SEARCH_SEEDS] for p in protocols()})
    for protocol in protocols():
        picks = [results[(protocol["name"], s)] for s in SEARCH_SEEDS]
        regrets = [100 * (best - truth[pick.point]) for pick in picks]
        spread = sure[protocol["name"]]
        rows.append({
            "protocol": protocol["name"], "mean regret, mIoU": statistics.fmean(regrets),
            "90% interval": f"[{spread['low']:.2f}, {spread['high']:.2f}]", "P(lowest)": spread["lowest"],
            **({"regret, unseen seeds": statistics.fmean(unseen_regret(s, pick.point)
                                                          for s, pick in zip(SEARCH_SEEDS, picks, strict=True))}
               if len(seeds) > len(seen_layers(0, len(seeds))) else {}),
            "max regret": max(regrets), "within 1 mIoU": f"{sum(r <= 100 * WITHIN for r in regrets)}/{len(picks)}",
            "compute / grid": statistics.fmean(p.compute for p in picks) / grid.compute,
            "base stage / grid": statistics.fmean(p.base_compute for p in picks) / grid.compute,
            "runs": statistics.fmean(p.runs for p in picks),
            "ranks": "/".join(str(ranked.index(p.point) + 1) for p in picks)})
    print(markdown(rows, list(rows[0])))
    print(f"\nregret: best true mean − the selected point's true mean (means over {len(seeds)} seeds), over search "
          f"seeds {SEARCH_SEEDS}; compute: the kd+fakd arm's search (+ confirmation) windows, as a fraction of one "
          f"grid pass ({grid.compute:.0f} s); base stage: an inheriting protocol's kd search, paid by the kd arm. "
          f"90% interval and P(lowest): a bootstrap over the training seeds (the truth) and the search seeds "
          f"(`regret_uncertainty`). Search seed s trains on the grid's seed layers `seen_layers(s)` (its own seed "
          f"and the confirmation seeds, rotated by s); regret, unseen seeds: against the means over the other layers. "
          f"{TRIALS} trials per arm, confirm = top {CONFIRM['top']} × {CONFIRM['seeds']} seeds.")
    return rows


if __name__ == "__main__":
    main()
