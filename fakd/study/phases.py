"""The phases of a study as its driver runs them (search, confirm, retrain): which trial runs next, what each
result decides, how each trial ends. Ray Tune only executes trials (`fakd.study.tune_glue` adapts these objects to
its API).

Everything a phase decides is written to the trial records before Tune acts on it, and a phase rebuilds
its state from the records when a driver starts, so a study stopped in any way resumes where it was:
finished trials stay finished, unfinished ones continue from their checkpoints, and no trial of the
budget runs twice or is lost.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from fakd.errors import UserError
from fakd.faults import CPU_ALLOCATOR_FAILED, kernel_oom_kills, killed_for_memory
from fakd.results import COMPLETE, FAILED, PENDING, PRUNED, RUNNING, TERMINAL, TrialRecord, read_trials
from fakd.results.layout import StudyDir, now
from fakd.results.records import OUT_OF_MEMORY, append_result, evaluation_of, write_trial
from fakd.results.selection import select_best
from fakd.results.space import inherits
from fakd.spec import StudySpec
from fakd.study.halving import CONTINUE, PRUNE, WAIT, AsyncHalving, SyncHalving, rung_milestones
from fakd.study.optuna_link import OptunaLink
from fakd.vocab import METRIC, arm_named

FINISHED = "FINISHED"
KERNEL_OOM_KILL = "the kernel's OOM killer ended the trial's process (the host's OOM kill count rose while it ran)"
MAX_UNFINISHED_ENDS = 3  # a trial whose process ends early this often, without an error, is failed
ROW_KEYS = ("iteration", "loss", "lr", "seconds_per_iter", "window_seconds", "params", METRIC, "val_pixel_acc",
            "val_iou", "fakd_strength", "diverged", "error")
Log = Callable[[str], None]


def is_memory_error(error: str) -> bool:
    """Whether a trial's error text is memory exhausted: `MemoryError`, a device's or Ray's `OutOfMemoryError` (Ray's
    memory monitor ends a worker that would push the host out of memory), or PyTorch's CPU allocator refused."""
    return "MemoryError" in error or CPU_ALLOCATOR_FAILED in error  # "MemoryError" ends "OutOfMemoryError" too


def memory_error_text(record: TrialRecord, error: str) -> str:
    """The error of an out-of-memory trial, with what sets its memory: the batch size and the crop."""
    cfg = record.config
    height, width = cfg.data.crop_size
    return f"batch {cfg.train.batch_size}, crop {height}×{width}: {error.strip().splitlines()[-1][:300]}"


def short_values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.4g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                     for k, v in sorted(values.items()))


class Phase:
    """What search and retrain share: the records, the trials handed to Tune, and how trials end."""

    name = ""

    def __init__(self, study: StudyDir, spec: StudySpec, log: Log, records: list[TrialRecord] | None = None) -> None:
        """`records`: the phase's records when the caller has just read them (else they are read here)."""
        self.study, self.spec, self.log = study, spec, log
        found = read_trials(study, self.name) if records is None else records
        self.records: dict[str, TrialRecord] = {r.key: r for r in found}
        self.live: set[str] = set()  # handed to Tune and not ended yet
        self.waiting: set[str] = set()  # stopped at a rung that is not decided yet
        self.ready: list[str] = []  # promoted from a rung: to be resumed
        self.prune_requested: set[str] = set()
        self.unfinished_ends: Counter[str] = Counter()
        self.out_of_memory: dict[str, str] = {}  # trial key -> the memory error it reported
        self.oom_kills_at_start: dict[str, int | None] = {}  # trial key -> the host's OOM kill count at its start
        self.stopping = False  # set when the study is interrupted: nothing new starts
        self.halt: str | None = None  # a mistake the user must fix (a damaged data file): the phase stops on it
        self.fault: str | None = None  # a fault of the machine (a full disk): the phase stops on it too
        self.halving: AsyncHalving | SyncHalving | None = None
        # every new evaluation gets the next number: a rebuilt scheduler sees the reports in their arrival order
        self.sequence = 1 + max((row.get("seq", -1) for r in self.records.values() for row in r.results), default=-1)

    # --- what subclasses provide
    def budget(self) -> int:
        raise NotImplementedError

    def create(self) -> TrialRecord | None:
        """A new trial of the budget, if one may start now."""
        return None

    def reported(self, record: TrialRecord, evaluation: int, row: dict[str, Any]) -> None:
        """Called for every new evaluation."""

    def ended(self, record: TrialRecord) -> None:
        """Called when a trial reaches its final state."""

    # --- what Tune asks
    def next_trial(self) -> TrialRecord | str | None:
        """The trial to run next, FINISHED when the budget is done, None when nothing may start now."""
        if self.stopping:
            return None
        record = self._resumable() or self.create()
        if record is not None:
            self.live.add(record.key)
            return record
        return FINISHED if self.is_finished() else None

    def on_start(self, key: str) -> None:
        """The trial's process started: it is RUNNING (from its last checkpoint, if it has one)."""
        self.oom_kills_at_start[key] = kernel_oom_kills()
        record = self.records[key]
        if record.state == PENDING:
            record.state = RUNNING
            write_trial(self.study, record)

    def on_result(self, key: str, result: dict[str, Any]) -> bool:
        """Record one report of a running trial; False when the trial must stop now."""
        record = self.records[key]
        if record.state in TERMINAL:  # failed while Tune retried it (out of memory): stop the retry
            return False
        if isinstance(result.get("user_error"), str):  # the trial is left as it is, to continue once it is fixed
            self.halt = self.halt or result["user_error"]
            self.stopping = True
            return False
        if isinstance(result.get("machine_fault"), str):  # the trial is left as it is, to continue on resume
            self.fault = self.fault or result["machine_fault"]
            self.stopping = True
            return False
        if isinstance(result.get("out_of_memory"), str):
            self.out_of_memory[key] = result["out_of_memory"]
            return False
        if not isinstance(result.get("iteration"), int):
            return True
        row = {k: result[k] for k in ROW_KEYS if k in result}
        if not row.get("diverged") and not isinstance(row.get(METRIC), (int, float)):
            raise RuntimeError(f"trial {key} reported iteration {row['iteration']} without {METRIC} (keys: "
                               f"{', '.join(sorted(result)[:20])}): a trial reports the study's metric at every "
                               "evaluation; halving would have ranked it last")
        if "node_ip" in result:
            row["node"] = result["node_ip"]
        self.on_start(key)
        if record.iterations < row["iteration"]:  # a resumed trial reports its checkpoint again: not new
            row["seq"] = self.sequence
            self.sequence += 1
            append_result(self.study, key, row)
            record.results.append(row)
            self.reported(record, evaluation_of(record, row["iteration"]), row)
        if row.get("diverged") or self.halving is None:
            return True
        decision = self.halving.decide((record.arm, record.repeat), key, evaluation_of(record, row["iteration"]),
                                       row.get(METRIC))
        if decision == PRUNE:
            self.prune_requested.add(key)
        elif decision == WAIT:
            self.waiting.add(key)
        self._settle_waiting()
        return decision == CONTINUE

    def on_end(self, key: str, error: str | None) -> None:
        """The trial's process ended: finished, stopped by a decision or by the driver, or errored."""
        self.live.discard(key)
        record = self.records[key]
        if record.state in TERMINAL:
            return
        last = record.last or {}
        if key in self.out_of_memory or (error is not None and self.is_memory_failure(key, error)):
            self.finish(record, FAILED, OUT_OF_MEMORY, memory_error_text(record, self.out_of_memory.get(key, error)))
        elif error is not None:
            self.finish(record, FAILED, "error", error)
        elif last.get("diverged"):
            self.finish(record, FAILED, "diverged", last.get("error"))
        elif key in self.prune_requested:
            self.finish(record, PRUNED, f"stopped by successive halving at iteration {record.iterations}")
        elif record.iterations >= record.total_iters:
            self.finish(record, COMPLETE)
        elif key in self.waiting or self.stopping:
            pass  # resumed from its checkpoint when promoted, or when the study is resumed
        else:
            self.unfinished_ends[key] += 1
            if self.unfinished_ends[key] >= MAX_UNFINISHED_ENDS:
                self.finish(record, FAILED, "error", "the trial's process ended before it finished, "
                                                     f"{MAX_UNFINISHED_ENDS} times")
        self._settle_waiting()

    def is_memory_failure(self, key: str, error: str) -> bool:
        """Whether the trial `key` failed for memory: an error saying so, or its process killed by the kernel's
        OOM killer while it ran (then the error gets a line saying that)."""
        if is_memory_error(error):
            return True
        if killed_for_memory(error, self.oom_kills_at_start.get(key)):
            self.out_of_memory[key] = f"{error}\n{KERNEL_OOM_KILL}"
            return True
        return False

    def is_finished(self) -> bool:
        return len(self.records) >= self.budget() and all(r.state in TERMINAL for r in self.records.values())

    # --- bookkeeping
    def add(self, record: TrialRecord) -> TrialRecord:
        record.created = now()
        write_trial(self.study, record)
        self.records[record.key] = record
        return record

    def finish(self, record: TrialRecord, state: str, reason: str | None = None, error: str | None = None) -> None:
        record.state, record.reason, record.error, record.finished = state, reason, error, now()
        write_trial(self.study, record)
        self.waiting.discard(record.key)
        self.ended(record)
        if state == FAILED and self.halving is not None:
            self.halving.forget((record.arm, record.repeat), record.key)
        done = sum(r.state in TERMINAL for r in self.records.values())
        miou = record.final_miou
        scored_on = "held-out" if record.config.split == "holdout" else "val"
        outcome = f"{scored_on} mIoU {miou:.4f}" if miou is not None else (reason or "").split("\n")[0]
        label = f"[{self.name} {done}/{self.budget()}] {record.arm} {record.key.split('/')[-1]}"
        self.log(f"{label} {state}: {outcome}" + (f" ({short_values(record.values)})" if record.values else ""))

    def _resumable(self) -> TrialRecord | None:
        """A promoted trial, else an unfinished one that is not running (a study resumed after a stop)."""
        while self.ready:
            key = self.ready.pop(0)
            if key not in self.live and self.records[key].state not in TERMINAL:
                return self.records[key]
        for key in sorted(self.records):
            record = self.records[key]
            if record.state not in TERMINAL and key not in self.live and key not in self.waiting:
                return record
        return None

    def _settle_waiting(self) -> None:
        if not isinstance(self.halving, SyncHalving):
            return
        for key in sorted(self.waiting - self.live):
            verdict = self.halving.waiting_promoted(key)
            if verdict is True:
                self.waiting.discard(key)
                self.ready.append(key)
            elif verdict is False:
                self.finish(self.records[key], PRUNED,
                            f"stopped by successive halving at iteration {self.records[key].iterations}")

    def rebuild_halving(self) -> None:
        """Feed the recorded evaluations to a fresh scheduler: rungs as they were when the driver stopped."""
        if self.halving is None:
            return
        reports = sorted(((row.get("seq", math.inf), key, row["iteration"], row)
                          for key, record in self.records.items() for row in record.results),
                         key=lambda report: report[:3])  # arrival order (key order for rows without one)
        decisions = dict.fromkeys(self.records, CONTINUE)
        for _, key, iteration, row in reports:
            record = self.records[key]
            if not row.get("diverged"):
                decisions[key] = self.halving.decide((record.arm, record.repeat), key, evaluation_of(record, iteration),
                                                     row.get(METRIC))
        for key in sorted(self.records):
            record, decision = self.records[key], decisions[key]
            if record.state == FAILED:
                self.halving.forget((record.arm, record.repeat), key)
            elif record.state not in TERMINAL and decision == WAIT:
                self.waiting.add(key)
            elif record.state not in TERMINAL and decision == PRUNE:
                self.prune_requested.add(key)
        for key in sorted(self.prune_requested):
            self.finish(self.records[key], PRUNED,
                        f"stopped by successive halving at iteration {self.records[key].iterations}")
        self._settle_waiting()


class SearchPhase(Phase):
    """Every arm searched with its own Optuna study, the same number of trials each, interleaved."""

    name = "search"

    def __init__(self, study: StudyDir, spec: StudySpec, log: Log, optuna: OptunaLink,
                 records: list[TrialRecord] | None = None, arms: Sequence[str] | None = None) -> None:
        """`arms`: the arms of this search stage (default: all; see `search_stages`). An add-on arm that inherits
        takes its base arm's selected values from the study's records, so its stage starts after its base's."""
        arms = list(spec.settings.arms if arms is None else arms)
        records = read_trials(study, self.name) if records is None else records
        super().__init__(study, spec, log, [r for r in records if r.arm in arms])
        search = spec.settings.search
        self.optuna = optuna
        self.streams = [(arm, repeat) for repeat in range(search.selection_repeats) for arm in arms]
        self.inherited = _inherited_values(study, spec, arms)
        self.per_stream = search.num_samples
        train = spec.defaults.train
        milestones = rung_milestones(math.ceil(train.iters / train.eval_every), search.grace_period,
                                     search.reduction_factor)
        if search.scheduler == "asha" and milestones:
            halving = SyncHalving if search.reproducible else AsyncHalving
            self.halving = halving(milestones, search.reduction_factor)
        for arm, repeat in self.streams:
            optuna.reconcile(arm, repeat, self._stream(arm, repeat))
        if search.reproducible:
            self._complete_generations()
        if isinstance(self.halving, SyncHalving):
            for (arm, repeat), generations in self._generations().items():
                for generation, keys in generations.items():
                    self.halving.add_bracket((arm, repeat, generation), keys)
        self.rebuild_halving()

    def budget(self) -> int:
        return len(self.streams) * self.per_stream

    def _stream(self, arm: str, repeat: int) -> list[TrialRecord]:
        return sorted((r for r in self.records.values() if r.arm == arm and r.repeat == repeat),
                      key=lambda r: r.index)

    def _generations(self) -> dict[tuple[str, int], dict[int, list[str]]]:
        found: dict[tuple[str, int], dict[int, list[str]]] = {}
        for arm, repeat in self.streams:
            for record in self._stream(arm, repeat):
                found.setdefault((arm, repeat), {}).setdefault(record.generation, []).append(record.key)
        return found

    def create(self) -> TrialRecord | None:
        if self.spec.settings.search.reproducible:
            return self._next_generation()
        counts = {stream: len(self._stream(*stream)) for stream in self.streams}
        open_streams = [s for s in self.streams if counts[s] < self.per_stream]
        if not open_streams:
            return None
        arm, repeat = min(open_streams, key=lambda s: (counts[s], self.streams.index(s)))
        return self._new(arm, repeat, counts[(arm, repeat)], generation=0, fixed_order=False)

    def _generation_size(self, generation: int) -> int:
        """How many trials generation `generation` of a stream holds (the last one may be smaller)."""
        size = self.spec.settings.search.generation
        return min(size, self.per_stream - generation * size)

    def _complete_generations(self) -> None:
        """A driver stopped while it created a generation: create the rest of it now, before any trial runs, so
        the generation is what an uninterrupted run makes (its suggestions are seeded by index, and the
        suggestion the stopped driver had asked for but not recorded is failed in Optuna by `reconcile`)."""
        for arm, repeat in self.streams:
            existing = self._stream(arm, repeat)
            if not existing:
                continue
            generation = existing[-1].generation
            missing = self._generation_size(generation) - sum(r.generation == generation for r in existing)
            for i in range(missing):
                self._new(arm, repeat, len(existing) + i, generation, fixed_order=True)

    def _next_generation(self) -> TrialRecord | None:
        """Reproducible mode: an arm's next generation is suggested, all at once and in index order, when
        every trial of its earlier generations has ended."""
        size = self.spec.settings.search.generation
        for arm, repeat in self.streams:
            existing = self._stream(arm, repeat)
            if len(existing) >= self.per_stream or any(r.state not in TERMINAL for r in existing):
                continue
            generation = len(existing) // size
            count = self._generation_size(generation)
            created = [self._new(arm, repeat, len(existing) + i, generation, fixed_order=True) for i in range(count)]
            if isinstance(self.halving, SyncHalving):
                self.halving.add_bracket((arm, repeat, generation), [r.key for r in created])
            return created[0]
        return None

    def _new(self, arm: str, repeat: int, position: int, generation: int, fixed_order: bool) -> TrialRecord:
        index = repeat * self.per_stream + position
        key = f"search/{arm_named(arm).slug}-{index:03d}"
        number, values = self.optuna.ask(arm, repeat, key, index=index if fixed_order else None)
        values = {**self.inherited.get((arm, repeat), {}), **values}
        cfg = self.spec.run_config(arm, values, split="holdout")
        return self.add(TrialRecord(
            key=key, phase="search", arm=arm, index=index, values=values, run=cfg.model_dump(mode="json"),
            student=cfg.student.backbone, seed=cfg.train.seed, repeat=repeat, generation=generation,
            optuna_number=number))

    def reported(self, record: TrialRecord, evaluation: int, row: dict[str, Any]) -> None:
        self.optuna.report(record, evaluation, row)

    def ended(self, record: TrialRecord) -> None:
        self.optuna.tell(record)
        shutil.rmtree(self.study.trial_dir(record.key) / "checkpoints", ignore_errors=True)


def _inherited_values(study: StudyDir, spec: StudySpec, arms: Sequence[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """The values each inheriting add-on arm of `arms` takes from its base arm's selection, per selection repeat:
    the base's searched values of every key the add-on uses but does not add."""
    inheriting = [arm for arm in arms if inherits(spec, arm)]
    if not inheriting:
        return {}
    selected = {(arm, repeat): record for (arm, repeat, _), record in select_best(read_trials(study)).items()}
    found = {}
    for arm in inheriting:
        base = arm_named(arm).base
        for repeat in range(spec.settings.search.selection_repeats):
            source = selected.get((base, repeat))
            if source is None:
                raise UserError(f"no search trial of {base} finished, so {arm} has no selection of {base} to add "
                                "FAKD to (search.add_on: inherit)", key=f"arms.{arm}")
            found[(arm, repeat)] = {k: v for k, v in source.values.items()
                                    if arm_named(arm).uses(k) and not arm_named(arm).adds(k)}
    return found


class RetrainPhase(Phase):
    """The selected configurations, each retrained with every seed. The plan is written lazily: a trial's record
    is created when it is handed out, so a large plan never writes thousands of waiting records up front."""

    name = "retrain"

    def __init__(self, study: StudyDir, spec: StudySpec, log: Log, plan: list[TrialRecord]) -> None:
        super().__init__(study, spec, log)
        self.planned = {record.key for record in plan}
        # retrain trials of another budget or seed count are not this phase's to run
        self.records = {key: record for key, record in self.records.items() if key in self.planned}
        self.unwritten = [record for record in plan if record.key not in self.records]

    def budget(self) -> int:
        return len(self.planned)

    def create(self) -> TrialRecord | None:
        return self.add(self.unwritten.pop(0)) if self.unwritten else None


class ConfirmPhase(RetrainPhase):
    """Each arm's best search trials trained again with fresh seeds on the held-out split (`search.confirm`):
    planned like the retrain; their checkpoints go once they end, like the search's."""

    name = "confirm"

    def ended(self, record: TrialRecord) -> None:
        shutil.rmtree(self.study.trial_dir(record.key) / "checkpoints", ignore_errors=True)
