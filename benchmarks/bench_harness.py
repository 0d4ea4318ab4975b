"""Harness overhead: N identical trials through Ray Tune versus the same trials run by a bare process pool
over the trainer, at equal concurrency (one CPU per trial)."""

from __future__ import annotations

import math
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import markdown
from fakd import spec_yaml
from fakd.spec import apply_override, load_spec

SPEC = Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml"
TRIALS, CONCURRENCY, TARGET_SECONDS, ARM = 4, 2, 60.0, "kd+fakd"


def _write_spec(path: Path, iters: int) -> Path:
    """The quickstart with `iters` student iterations (and a short teacher run: it is trained once, untimed)."""
    raw = yaml.safe_load(SPEC.read_text())
    for item in (f"train.iters={iters}", f"train.eval_every={max(1, iters // 4)}", "teacher.iters=20"):
        apply_override(raw, item, str(path))
    path.write_text(spec_yaml.dump(raw))
    return path


def _bare_trial(args: tuple) -> float:
    import torch

    from fakd.train import train_student

    spec_path, teacher = args
    cfg = load_spec(spec_path).run_config(ARM, split="holdout")
    torch.set_num_threads(1)  # what Ray gives a trial with one CPU
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        train_student(cfg, teacher, Path(work), progress=False)
    return time.perf_counter() - start


def main() -> list[dict]:
    import ray
    from ray import tune

    from fakd.study.handoff import TASK, StudyTeacher, TrialContext, TrialTask
    from fakd.study.tune_glue import make_trainable
    from fakd.train import ensure_teacher

    with tempfile.TemporaryDirectory() as root:
        short, long = _write_spec(Path(root) / "short.yaml", 10), _write_spec(Path(root) / "long.yaml", 40)
        teacher = ensure_teacher(load_spec(short).run_config(ARM), Path(root) / "teachers", progress=False)
        relative_teacher = str(teacher.path.relative_to(root))
        fixed_and_10, fixed_and_40 = _bare_trial((short, teacher)), _bare_trial((long, teacher))
        per_iter = (fixed_and_40 - fixed_and_10) / 30  # the fixed start-up cost cancels
        iters = max(10, math.ceil((TARGET_SECONDS - (fixed_and_10 - 10 * per_iter)) / per_iter))
        spec_path = _write_spec(Path(root) / "spec.yaml", iters)

        start = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(CONCURRENCY) as pool:
            trial_seconds = pool.map(_bare_trial, [(spec_path, teacher)] * TRIALS)
        bare = time.perf_counter() - start

        start = time.perf_counter()
        ray.init(address="local", num_cpus=CONCURRENCY, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter()
        run = load_spec(spec_path).run_config(ARM, split="holdout")
        tuner = tune.Tuner(  # the study's trainable, each trial with a directory of its own as in a study
            make_trainable(TrialContext(root, StudyTeacher(teacher.key, relative_teacher, teacher.metrics)), cpu=1,
                           gpu=0),
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=CONCURRENCY, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(Path(root) / "tune"), name="bench", verbose=0),
            param_space={TASK: tune.grid_search([TrialTask(f"bench/{i}", ARM, run) for i in range(TRIALS)])},
        )
        tuner.fit()
        tuned = time.perf_counter() - started
        with_startup = time.perf_counter() - start
        ray.shutdown()

    rows = [
        {"what": "bare process pool", "wall s": bare, "ratio": 1.0},
        {"what": "Ray Tune (runtime already up)", "wall s": tuned, "ratio": tuned / bare},
        {"what": "Ray Tune incl. ray.init", "wall s": with_startup, "ratio": with_startup / bare},
    ]
    print(f"{TRIALS} identical {ARM} trials of the quickstart student, {iters} iterations each "
          f"(≈{sum(trial_seconds) / len(trial_seconds):.0f} s per bare trial), {CONCURRENCY} at a time, "
          f"{os.cpu_count()} cores\n")
    print(markdown(rows, ["what", "wall s", "ratio"]))
    return rows


if __name__ == "__main__":
    main()
