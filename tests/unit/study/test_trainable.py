"""`fakd.study.trainable.run_trial`: how a trial's own failures reach the phase (as reports, so Tune does not
retry what would fail again)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_SPEC

from fakd.errors import UserError
from fakd.spec import validate_spec
from fakd.study import trainable
from fakd.study.handoff import TrialContext, TrialTask
from fakd.study.trainable import run_trial
from fakd.train import NonFiniteLossError


@pytest.mark.parametrize(("raised", "reported"), [
    (MemoryError("cannot allocate 2 GiB"), {"out_of_memory": "MemoryError: cannot allocate 2 GiB"}),
    (torch.OutOfMemoryError("CUDA out of memory"), {"out_of_memory": "OutOfMemoryError: CUDA out of memory"}),
    (NonFiniteLossError("loss is nan", 3), {"iteration": 3, "diverged": True, "error": "loss is nan"}),
    (UserError("damaged label file", key="data"), None),
])
def test_a_failure_the_same_configuration_would_repeat_is_reported_not_raised(tmp_path, monkeypatch, raised,
                                                                                reported):
    """Memory is exhausted by injection: the trainer raises what PyTorch and Python raise when it runs out."""
    reports: list[dict] = []

    def train_student(*args, **kwargs):
        raise raised

    monkeypatch.setattr(trainable, "train_student", train_student)
    monkeypatch.setattr(trainable.tune, "report", reports.append)
    run = validate_spec(TINY_SPEC, "tiny.yaml").run_config("kd", split="holdout")
    run_trial(TrialTask("search/kd-000", "kd", run).as_config(), TrialContext(str(tmp_path), None))
    assert reports == [reported or {"user_error": raised.format()}]


LIMITED_TRIAL = """
import copy, json, resource, sys
from conftest import TINY_SPEC
from fakd.spec import validate_spec
from fakd.study import trainable
from fakd.study.handoff import TrialContext, TrialTask
from fakd.study.trainable import run_trial

reports = []
trainable.tune.report = reports.append
raw = copy.deepcopy(TINY_SPEC)
raw["data"].update(image_size=256, train_length=64)
raw["train"].update(batch_size=64)  # about 2 GiB of activations in the first forward pass
run = validate_spec(raw, "tiny.yaml").run_config("baseline", split="holdout")
status = open("/proc/self/status").read()
mapped = int(next(line for line in status.splitlines() if line.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (mapped + (1 << 30), resource.RLIM_INFINITY))  # 1 GiB more than mapped now
run_trial(TrialTask("search/baseline-000", "baseline", run).as_config(), TrialContext(sys.argv[1], None))
print(json.dumps(reports))
"""


@pytest.mark.slow
def test_a_trial_under_a_kernel_memory_limit_reports_out_of_memory(tmp_path):
    """A real limit, not an injection: the trial's process gets `RLIMIT_AS` (address space) 1 GiB above what it
    has mapped once torch is imported, and its batch needs more. The kernel refuses the allocation, PyTorch's CPU
    allocator raises a plain `RuntimeError`, and the trial reports it as out of memory rather than failing."""
    done = subprocess.run([sys.executable, "-c", LIMITED_TRIAL, str(tmp_path)], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(reports) == 1 and set(reports[0]) == {"out_of_memory"}, reports
    assert reports[0]["out_of_memory"].startswith("RuntimeError: DefaultCPUAllocator: can't allocate memory"), reports
