"""`fakd.study.tracking`: the driver's W&B streamer opens one run per trial (its id from the trial's key), logs
every scalar and the per-class IoUs at the trial's iteration, finishes the run when the trial ends, and is silent
once the study was resumed with --no-wandb."""

import json
import sys
import types
from dataclasses import dataclass

from conftest import TINY_SPEC

from fakd.spec import TrackingConfig, validate_spec
from fakd.study import tracking
from fakd.study.handoff import TrialTask


class FakeRun:
    def __init__(self, **init) -> None:
        self.init, self.logged, self.exit_code = init, [], None

    def log(self, values, step) -> None:
        self.logged.append((step, values))

    def finish(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code


@dataclass
class Trial:
    config: dict


def fake_wandb(monkeypatch) -> list[FakeRun]:
    runs: list[FakeRun] = []

    def init(**kwargs):
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, Settings=lambda **k: k))
    return runs


def streamer(tmp_path, records):
    return tracking.WandbStreamer(TrackingConfig(wandb=True, project="p"), "tiny", str(tmp_path), "search",
                                  {"git_commit": "abc"}, records)


def test_one_run_per_trial_logs_its_results_and_ends_with_it(monkeypatch, tmp_path):
    runs = fake_wandb(monkeypatch)
    run = validate_spec(TINY_SPEC, "tiny.yaml").run_config("kd")
    record = types.SimpleNamespace(arm="kd", student="s", seed=3, repeat=0, values={"train.lr": 0.01})
    trial = Trial(TrialTask("search/kd-000", "kd", run).as_config())
    callback = streamer(tmp_path, {"search/kd-000": record})
    callback.setup()
    callback.on_trial_result(0, [], trial, {"iteration": 2, "val_miou": 0.5, "val_iou": [0.4, 0.6], "done": False,
                                            "note": "text"})
    callback.on_trial_result(0, [], trial, {"iteration": 4, "val_miou": 0.6})
    (only,) = runs
    assert only.init["id"] == "tiny-search_kd-000" and only.init["group"] == "tiny"
    assert only.init["config"] == {"git_commit": "abc", "trial": "search/kd-000", "arm": "kd", "student": "s",
                                   "seed": 3, "repeat": 0, "train.lr": 0.01}
    assert only.logged == [(2, {"iteration": 2, "val_miou": 0.5, "val_iou/0": 0.4, "val_iou/1": 0.6}),
                           (4, {"iteration": 4, "val_miou": 0.6})]  # scalars only: no flags, no text
    callback.on_trial_error(0, [], trial)
    assert only.exit_code == 1 and callback.runs == {}


def test_a_study_resumed_with_no_wandb_streams_nothing(monkeypatch, tmp_path):
    runs = fake_wandb(monkeypatch)
    (tmp_path / "study.json").write_text(json.dumps({"no_wandb": True}))
    callback = streamer(tmp_path, {})
    callback.setup()
    callback.on_trial_result(0, [], Trial({}), {"iteration": 2, "val_miou": 0.5})
    assert runs == []


def test_the_sync_hint_names_the_offline_runs_only_when_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    hint = tracking.sync_hint(tmp_path)
    assert hint == f"W&B ran offline; upload later with: wandb sync {tmp_path}/wandb/offline-run-*"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert tracking.sync_hint(tmp_path) is None
