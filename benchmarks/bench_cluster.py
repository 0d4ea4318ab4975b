"""Simulated cluster: the study engine (searcher, halving, Optuna, records, Ray Tune) on 8 declared GPU slots,
with trials whose training is emulated, to measure how well the engine keeps a cluster busy.

Ray runs locally with 8 declared GPUs; every trial asks for one GPU and a small CPU share. A trial's evaluation
window sleeps for a fixed time and reports a score from a fixed learning-curve model of its hyperparameters
(best at lr = 0.01, arms at different levels), so the searcher, successive halving, the Optuna studies, the
trial records and Tune's trial handling are all real; only the training is not. A trial started again (the
synchronous halving of reproducible mode stops a trial at an undecided rung and re-launches it when promoted)
reads its recorded results and first re-reports the last one, as the real trainable does from its checkpoint.

Cases, 5 arms × 16 trials, 8 slots, ASHA (grace 1, η = 2, 8 evaluations per trial):

- (a) all arms in one experiment, asynchronous ASHA (the engine's default);
- (b) the same engine arm after arm: one phase per arm (a spec with that arm only), run one after the other;
- (c) reproducible mode (synchronous halving, generations of 4 trials per arm), all arms in one experiment;
- (d) reproducible mode arm after arm. Its decisions are those of (c) (they are a function of the spec), so
  (c) against (d) compares the two ways of running at identical work, which (a) against (b) cannot promise:
  asynchronous halving's promotions depend on the order of reports.

Busy time is the time trials spend inside the trainable: every invocation of the emulated trainable appends
its entry, the end of each window, each return from `tune.report` and its exit to an event file. Utilisation
is busy slot-seconds / (8 × wall), wall being the `run_phase` call(s). "Useful" counts the emulated training
(the sleeping windows) only; the rest of the busy time is the trial waiting in `tune.report` for the driver.
The idle slot-seconds are split by what each empty slot was waiting for:

- set-up: Tune's experiment set-up, before the searcher is first asked for a trial;
- start-up: the searcher handed out the trial, its trainable had not started yet (Ray placement group, actor
  start or reuse, the function's thread);
- turnaround: the slot was free and the phase had trials to give, but Tune had not asked for one yet (the
  previous trial's teardown and Tune's event loop);
- waiting: the phase had nothing to start now, though trials remained (reproducible mode: the next generation
  waits for the whole current one, a promoted trial for its rung);
- tail: every trial was handed out, the last ones are finishing.

The trainable's module imports nothing heavy (a new worker imports Ray's worker, Tune and this module); a real
trial's worker imports torch and timm as well, so a real cold start costs more (docs/benchmarks.md).

`FAKD_CLUSTER_WINDOWS` (seconds per window, comma-separated: "1.5,6" runs every case at both),
`FAKD_CLUSTER_CASES` (which cases, e.g. "c,d") and `FAKD_CLUSTER_SAMPLES` (trials per arm, for a quick smoke
run) change the defaults.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import markdown
from fakd import spec_yaml
from fakd.config import RunConfig
from fakd.results import PRUNED, StudyDir, TrialRecord, read_trials
from fakd.results.layout import FORMAT, write_json
from fakd.results.records import RESULTS_FILE, read_results
from fakd.study.handoff import trial_task
from fakd.vocab import ARM_TABLE

# Light at import on purpose: a trial's worker imports this module to unpickle `emulated_trial`, and the
# engine's modules (fakd.study: torch, Optuna) are imported by the driver only, inside the functions below.

SLOTS = 8  # declared GPUs; one per trial
RAY_CPUS = 8  # logical CPUs declared to Ray (the VM has 2 cores: trials sleep, they need no CPU)
TRIAL_CPU = 0.5
ARMS = ("baseline", "kd", "kd+fakd", "cwd", "cwd+fakd")
SAMPLES = int(os.environ.get("FAKD_CLUSTER_SAMPLES", "16"))
ITERS, EVAL_EVERY, GENERATION = 8, 1, 4
WINDOWS = tuple(float(w) for w in os.environ.get("FAKD_CLUSTER_WINDOWS", "1.5").split(","))
LEVEL = {"baseline": 0.50, "kd": 0.55, "kd+fakd": 0.58, "cwd": 0.56, "cwd+fakd": 0.60}  # final mIoU at the best
CASES = (  # name, what, arms of each phase (run one after the other), reproducible
    ("a", "all arms, one experiment, async ASHA", [list(ARMS)], False),
    ("b", "arm after arm, async ASHA", [[arm] for arm in ARMS], False),
    ("c", "reproducible: sync halving, generations of 4", [list(ARMS)], True),
    ("d", "reproducible, arm after arm", [[arm] for arm in ARMS], True),
)
SELECTED = os.environ.get("FAKD_CLUSTER_CASES", "a,b,c,d").split(",")


# --- the emulated trial (runs in Ray workers)

def score(arm: str, run: RunConfig, evaluation: int) -> float:
    """A fixed learning curve: the arm sets the level, lr (best at 0.01), the temperature (best at 2) and the
    FAKD strength (best at 1) the quality, the evaluation the progress along the curve."""
    quality = max(0.0, 1.0 - abs(math.log10(run.train.lr) + 2.0) / 1.5)
    distill = ARM_TABLE[arm].distill
    if distill:
        quality *= 1.0 - 0.1 * abs(math.log2(getattr(run.loss, distill).temperature) - 1.0)
    if ARM_TABLE[arm].fakd:
        quality *= 1.0 - 0.05 * abs(run.loss.fakd.max_strength - 1.0)
    return LEVEL[arm] * (0.6 + 0.4 * quality) * (1.0 - 0.6 * math.exp(-evaluation / 2.0))


def emulated_trial(config: dict[str, Any], *, study_root: str, window: float, events: str) -> None:
    """The study's trainable with training replaced by sleeping: same config, same reports, same resume."""
    from ray import tune

    task = trial_task(config)
    key, run = task.key, task.run
    invocation = uuid.uuid4().hex[:12]

    def event(what: str, iteration: int | None = None) -> None:
        with open(events, "a") as handle:
            handle.write(json.dumps({"inv": invocation, "key": key, "what": what, "t": time.time(),
                                     "it": iteration, "pid": os.getpid()}) + "\n")

    event("enter")
    try:
        done = read_results(StudyDir(Path(study_root)).trial_dir(key) / RESULTS_FILE)
        iteration = int(done[-1]["iteration"]) if done else 0
        if done:  # as from a checkpoint: the last recorded evaluation again, first
            tune.report(dict(done[-1]))
            event("resumed", iteration)
        iters, every = run.train.iters, run.train.eval_every
        while iteration < iters:
            start = time.perf_counter()
            time.sleep(window)
            iteration = min(iteration + every, iters)
            event("window", iteration)
            tune.report({"iteration": iteration, "val_miou": score(task.arm, run, math.ceil(iteration / every)),
                         "window_seconds": time.perf_counter() - start})
            event("resumed", iteration)
    finally:
        event("exit")


# --- the driver side

class PhaseTiming:
    """Wraps a phase's `next_trial` and `on_result` (the engine's code, unchanged) to time the driver's work
    and record when each trial was handed to Tune and when the phase had nothing to hand out."""

    def __init__(self, phase: Any) -> None:
        self.handed: list[tuple[float, str]] = []  # (when, trial key) for every trial given to Tune
        self.starved: list[tuple[float, float]] = []  # intervals in which the phase had nothing to start
        self.since: float | None = None
        self.suggest_seconds: list[float] = []
        self.result_seconds: list[float] = []
        next_trial, on_result = phase.next_trial, phase.on_result

        def timed_next_trial() -> TrialRecord | str | None:
            start = time.time()
            record = next_trial()
            end = time.time()
            self.suggest_seconds.append(end - start)
            if isinstance(record, TrialRecord):
                self.handed.append((end, record.key))
                if self.since is not None:
                    self.starved.append((self.since, end))
                    self.since = None
            elif self.since is None:
                self.since = end
            return record

        def timed_on_result(key: str, result: dict[str, Any]) -> bool:
            start = time.perf_counter()
            try:
                return on_result(key, result)
            finally:
                self.result_seconds.append(time.perf_counter() - start)

        phase.next_trial, phase.on_result = timed_next_trial, timed_on_result

    def close(self, end: float) -> None:
        if self.since is not None:
            self.starved.append((self.since, end))
            self.since = None


def trial_starts() -> Any:
    """A Tune callback noting when Tune reports each trial started (its actor is up, training is scheduled)."""
    from ray import tune

    class TrialStarts(tune.Callback):
        def __init__(self) -> None:
            self.started: list[tuple[float, str]] = []

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.started.append((time.time(), trial_task(trial.config).key))

    return TrialStarts()


def raw_spec(name: str, arms: list[str], reproducible: bool) -> dict[str, Any]:
    """A spec whose search space every arm uses something of (and holds only what its arms use)."""
    uses = lambda key: any(ARM_TABLE[arm].uses(key) for arm in arms)  # noqa: E731
    searched = lambda key, choices, fixed: {"choice": choices} if uses(key) else fixed  # noqa: E731
    search = {"num_samples": SAMPLES, "max_concurrent": SLOTS, "seed": 0, "scheduler": "asha", "grace_period": 1,
              "reduction_factor": 2}
    if reproducible:
        search.update(reproducible=True, generation_size=GENERATION)
    return {
        "name": name,
        "data": {"name": "synthetic", "num_classes": 4, "image_size": 32, "train_length": 16, "val_length": 4},
        "teacher": {"backbone": "test_resnet", "head": "fcn", "output_stride": 8, "head_channels": 16, "iters": 4},
        "student": {"backbone": "test_efficientnet", "head": "fcn", "output_stride": 8, "head_channels": 16},
        "train": {"iters": ITERS, "eval_every": EVAL_EVERY, "batch_size": 2, "lr": {"loguniform": [0.001, 0.1]}},
        "loss": {
            "kd": {"weight": 1.0, "temperature": searched("loss.kd.temperature", [1.0, 2.0, 4.0], 2.0)},
            "cwd": {"weight": 1.0, "temperature": searched("loss.cwd.temperature", [1.0, 2.0, 4.0], 2.0)},
            "fakd": {"max_strength": searched("loss.fakd.max_strength", [0.5, 1.0, 2.0], 1.0),
                     "schedule": "constant"},
        },
        "arms": list(arms),
        "search": search,
        "resources": {"cpu": TRIAL_CPU, "gpu": 1},
        "tracking": {"wandb": False},
    }


def new_study(root: Path, raw: dict[str, Any]) -> tuple[StudyDir, Any]:

    from fakd.spec import validate_spec

    study = StudyDir(root)
    root.mkdir(parents=True)
    study.spec.write_text(spec_yaml.dump(raw))
    write_json(study.marker, {"format": FORMAT, "name": raw["name"], "optuna_prefix": raw["name"]})
    return study, validate_spec(raw, str(study.spec))


def run_one_phase(root: Path, arms: list[str], reproducible: bool, window: float, signals: Any) -> dict[str, Any]:
    """One phase through the real `run_phase`, with the emulated trainable; its timeline and records."""
    from ray import tune

    from fakd.study.optuna_link import OptunaLink, open_storage
    from fakd.study.phases import SearchPhase
    from fakd.study.trainable import TrialContext
    from fakd.study.tune_glue import run_phase

    study, spec = new_study(root, raw_spec(root.name, arms, reproducible))
    link = OptunaLink(spec, open_storage(spec, study), study.metadata()["optuna_prefix"])
    phase = SearchPhase(study, spec, lambda line: None, link)
    timing, starts = PhaseTiming(phase), trial_starts()
    events = study.root / "bench-events.jsonl"
    trainable = tune.with_resources(
        tune.with_parameters(emulated_trial, study_root=str(study.root), window=window, events=str(events)),
        {"cpu": TRIAL_CPU, "gpu": 1})
    start = time.time()
    run_phase(phase, TrialContext(str(study.root), None), cpu=TRIAL_CPU, gpu=1, max_concurrent=SLOTS,
              max_failures=spec.settings.search.max_failures, tune_dir=study.tune, callbacks=[starts],
              signals=signals, trainable=trainable)
    end = time.time()
    signals.check()
    timing.close(end)
    if not phase.is_finished():
        raise RuntimeError(f"{root.name}: the phase ended with unfinished trials")
    lines = [json.loads(line) for line in events.read_text().splitlines()] if events.is_file() else []
    return {"start": start, "end": end, "timing": timing, "tune_starts": starts.started,
            "records": read_trials(study, "search"), "events": lines}


def _spans_at(spans: list[tuple[float, float]], moment: float) -> int:
    return sum(s <= moment < e for s, e in spans)


def timeline(run: dict[str, Any], window: float) -> Counter:
    """Slot-seconds of one phase run by what the slots did (see the module docstring), and latencies."""
    timing: PhaseTiming = run["timing"]
    start, end = run["start"], run["end"]
    invocations: dict[str, dict[str, Any]] = {}
    for item in sorted(run["events"], key=lambda e: e["t"]):
        inv = invocations.setdefault(item["inv"], {"key": item["key"], "enter": item["t"], "pid": item["pid"],
                                                   "windows": 0, "last": item["t"], "exit": None, "pending": None,
                                                   "round_trips": []})
        inv["last"] = item["t"]
        if item["what"] == "window":
            inv["windows"] += 1
            inv["pending"] = item["t"]
        elif item["what"] == "resumed" and inv["pending"] is not None:
            inv["round_trips"].append(item["t"] - inv["pending"])
            inv["pending"] = None
        elif item["what"] == "exit":
            inv["exit"] = item["t"]
    ordered = sorted(invocations.values(), key=lambda inv: inv["enter"])
    busy = [(inv["enter"], inv["exit"] or inv["last"]) for inv in ordered]
    handed: dict[str, list[float]] = {}
    for when, key in timing.handed:
        handed.setdefault(key, []).append(when)
    tune_started: dict[str, list[float]] = {}
    for when, key in run["tune_starts"]:
        tune_started.setdefault(key, []).append(when)
    starting, found, pids = [], Counter(), set()
    for inv in ordered:
        kind = "warm" if inv["pid"] in pids else "cold"  # cold: the first trial in a new worker process
        pids.add(inv["pid"])
        if handed.get(inv["key"]):
            starting.append((handed[inv["key"]].pop(0), inv["enter"]))
            found[f"{kind}_startups"] += 1
            found[f"{kind}_startup"] += inv["enter"] - starting[-1][0]
            if tune_started.get(inv["key"]):
                found["to_actor"] += tune_started[inv["key"]].pop(0) - starting[-1][0]
    first_handout = min((when for when, _ in timing.handed), default=end)
    last_handout = max((when for when, _ in timing.handed), default=start)
    cuts = sorted({start, end, first_handout, last_handout,
                   *(t for span in busy + starting + timing.starved for t in span)})
    cuts = [t for t in cuts if start <= t <= end]
    for a, b in zip(cuts, cuts[1:], strict=False):
        mid, dt = (a + b) / 2, b - a
        running = min(SLOTS, _spans_at(busy, mid))
        launching = min(SLOTS - running, _spans_at(starting, mid))
        empty = SLOTS - running - launching
        starved = _spans_at(timing.starved, mid) > 0
        found["busy"] += running * dt
        found["start-up"] += launching * dt
        where = ("set-up" if mid < first_handout else "tail" if mid >= last_handout and starved
                 else "waiting" if starved else "turnaround")
        found[where] += empty * dt
    round_trips = [t for inv in ordered for t in inv["round_trips"]]
    found.update({
        "slot_seconds": SLOTS * (end - start), "useful": sum(inv["windows"] for inv in ordered) * window,
        "windows": sum(inv["windows"] for inv in ordered), "invocations": len(ordered),
        "processes": len({inv["pid"] for inv in ordered}), "round_trip": sum(round_trips),
        "round_trips": len(round_trips), "suggest": sum(timing.suggest_seconds),
        "suggests": len(timing.suggest_seconds), "on_result": sum(timing.result_seconds),
        "on_results": len(timing.result_seconds),
    })
    return found


def run_case(root: Path, case: tuple, window: float, signals: Any) -> dict[str, Any]:
    name, what, groups, reproducible = case
    total: Counter = Counter()
    wall, records = 0.0, []
    for arms in groups:
        label = f"{name}-{window:g}s-" + ("all" if len(arms) > 1 else ARM_TABLE[arms[0]].slug)
        run = run_one_phase(root / label.replace(".", "_"), arms, reproducible, window, signals)
        wall += run["end"] - run["start"]
        total.update(timeline(run, window))
        records += run["records"]
        print(f"  {label}: {run['end'] - run['start']:.1f} s", flush=True)
    per_arm = Counter(r.arm for r in records)
    pruned = Counter(r.arm for r in records if r.state == PRUNED)
    budget_ok = set(per_arm) == set(ARMS) and set(per_arm.values()) == {SAMPLES}
    share = lambda part: total[part] / total["slot_seconds"]  # noqa: E731
    mean = lambda part, count: total[part] / max(1, total[count])  # noqa: E731
    return {
        "case": f"({name}) {what}", "key": name, "window s": window, "wall s": wall,
        "utilisation": share("busy"), "useful": total["useful"] / total["slot_seconds"],
        "trials per arm": f"{SAMPLES} each" if budget_ok else ", ".join(f"{a} {n}" for a, n in sorted(per_arm.items())),
        "pruned": f"{sum(pruned.values())} ({'/'.join(str(pruned[arm]) for arm in ARMS)})",
        "trial starts": int(total["invocations"]), "processes": int(total["processes"]),
        "windows": int(total["windows"]), "set-up": share("set-up"), "start-up": share("start-up"),
        "turnaround": share("turnaround"), "waiting": share("waiting"), "tail": share("tail"),
        "cold starts": int(total["cold_startups"]), "cold s": mean("cold_startup", "cold_startups"),
        "warm s": mean("warm_startup", "warm_startups"),
        "to actor": total["to_actor"] / max(1e-9, total["cold_startup"] + total["warm_startup"]),
        "report ms": 1000 * mean("round_trip", "round_trips"), "suggest ms": 1000 * mean("suggest", "suggests"),
        "on_result ms": 1000 * mean("on_result", "on_results"), "budget ok": budget_ok,
        "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def _log(line: str) -> None:  # Tune saves the stopper, and with it the log function: a module-level one
    print(line, flush=True)


def main() -> list[dict]:
    import ray

    from fakd.study.signals import StopSignals

    started = time.perf_counter()
    ray.init(address="local", num_cpus=RAY_CPUS, num_gpus=SLOTS, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    rows = []
    try:
        with StopSignals(log=_log) as signals, tempfile.TemporaryDirectory(prefix="fakd-cluster-") as tmp:
            # warm-up, not measured: the driver's first Tune experiment and Optuna storage
            run_one_phase(Path(tmp) / "warm-up", ["kd"], False, 0.05, signals)
            for window in WINDOWS:
                for case in CASES:
                    if case[0] in SELECTED:
                        rows.append(run_case(Path(tmp), case, window, signals))
    finally:
        ray.shutdown()

    print(f"\n{len(ARMS)} arms × {SAMPLES} trials, {SLOTS} declared GPU slots (1 GPU + {TRIAL_CPU} CPU per trial, "
          f"Ray with {RAY_CPUS} logical CPUs on {os.cpu_count()} cores, ray.init {ray_start:.1f} s, not counted), "
          f"ASHA grace 1, η 2, {ITERS} evaluations per trial; reproducible: generations of {GENERATION}. load: the "
          "machine's 1/5/15-minute load average when the case ended (others' jobs included)\n")
    print(markdown(rows, ["case", "window s", "wall s", "utilisation", "useful", "trials per arm", "pruned",
                          "trial starts", "processes", "windows", "load"]))
    print("\nIdle slot-time, as a share of 8 × wall, by what the empty slot waited for. Trial start-up (hand-out to"
          " the trainable's first line), mean s: cold = first trial in a new worker process, warm = a reused actor;"
          " to actor = the share of start-up before Tune reports the trial started. report: the trial's wait in "
          "`tune.report` per window; suggest, on_result: the driver's time in the phase per call:\n")
    print(markdown(rows, ["key", "window s", "set-up", "start-up", "turnaround", "waiting", "tail", "cold starts",
                          "cold s", "warm s", "to actor", "report ms", "suggest ms", "on_result ms"]))
    print()
    for window in WINDOWS:
        print(f"- {window:g} s windows: " + "; ".join(_verdicts({row["key"]: row for row in rows
                                                                 if row["window s"] == window})))
    return rows


def _verdicts(case: dict[str, dict[str, Any]]) -> list[str]:
    """The targets and comparisons that the cases run allow."""
    found = []
    if "a" in case:
        a = case["a"]
        found.append(f"utilisation of (a) {a['utilisation']:.3f}, target ≥ 0.85: "
                     f"{'met' if a['utilisation'] >= 0.85 else 'MISSED'}")
        if "b" in case:
            b = case["b"]
            found.append(f"wall (a)/(b) = {a['wall s'] / b['wall s']:.3f}, target ≤ 0.7: "
                         f"{'met' if a['wall s'] <= 0.7 * b['wall s'] else 'MISSED'} ((a) ran {a['windows']} "
                         f"windows, (b) {b['windows']})")
        if "c" in case:
            c = case["c"]
            found.append(f"reproducible (c) utilisation {c['utilisation']:.3f} "
                         f"({c['utilisation'] - a['utilisation']:+.3f} vs (a)), "
                         f"wall {c['wall s'] / a['wall s']:.2f}× (a)")
    if "c" in case and "d" in case:
        c, d = case["c"], case["d"]
        same = (c["windows"], c["pruned"]) == (d["windows"], d["pruned"])
        found.append(f"wall (c)/(d) = {c['wall s'] / d['wall s']:.3f} ({'the same' if same else 'NOT the same'} "
                     f"work: {c['windows']} and {d['windows']} windows)")
    found.append(f"every arm got its {SAMPLES} trials: "
                 f"{'yes' if all(row['budget ok'] for row in case.values()) else 'NO'}")
    return found


if __name__ == "__main__":
    main()
