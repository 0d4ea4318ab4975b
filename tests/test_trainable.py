"""`fakd.study.trainable.run_trial`: how a trial's own failures reach the phase (as reports, so Tune does not
retry what would fail again)."""

import pytest
import torch
from conftest import TINY_SPEC

from fakd.errors import UserError
from fakd.spec import validate_spec
from fakd.study import trainable
from fakd.study.trainable import TrialContext, run_trial
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
    run = validate_spec(TINY_SPEC, "tiny.yaml").run_config("kd", phase="search").model_dump(mode="json")
    run_trial({"trial": "search/kd-000", "run": run}, TrialContext(str(tmp_path), None))
    assert reports == [reported or {"user_error": raised.format()}]
