"""fakd.study.integrity: before a driver runs trials of an existing study, the checkpoints its unfinished trials
will load are sound; a damaged or mismatched one is one line naming it."""

from pathlib import Path

import pytest
import torch
from conftest import TINY_SPEC

from fakd.errors import UserError
from fakd.results import StudyDir, TrialRecord
from fakd.spec import validate_spec
from fakd.study.integrity import CHECKPOINT_KEYS, check_resumable
from fakd.train.checkpoint import write_checkpoint

SPEC = validate_spec(TINY_SPEC, "tiny.yaml")


def trial(state: str, key: str = "search/kd-000") -> TrialRecord:
    return TrialRecord(key=key, phase="search", arm="kd", index=0, values={}, run={}, student="s", seed=0, state=state)


def checkpoint(study: StudyDir, record: TrialRecord, **state: object) -> Path:
    full = {name: {} for name in CHECKPOINT_KEYS} | {"iteration": 2, "rng": {"cpu": torch.zeros(1)}} | state
    return write_checkpoint(full, study.trial_dir(record.key) / "checkpoints", 2)


def test_sound_checkpoints_and_finished_trials_pass(tmp_path):
    study = StudyDir(tmp_path)
    running, done = trial("RUNNING"), trial("COMPLETE", "search/kd-001")
    checkpoint(study, running)
    (checkpoint(study, done) / "state.pt").write_bytes(b"damaged, but the trial is finished: never loaded")
    check_resumable(study, SPEC, {}, [running, done, trial("PENDING", "search/kd-002")])


def test_a_partial_checkpoint_is_named(tmp_path):
    study = StudyDir(tmp_path)
    record = trial("RUNNING")
    path = checkpoint(study, record)
    state = torch.load(path / "state.pt", weights_only=True)
    del state["optimizer"]
    torch.save(state, path / "state.pt")
    with pytest.raises(UserError, match=r"trial search/kd-000: .*iter_0000002 is not a full training checkpoint "
                                        r"\(no optimizer\)") as error:
        check_resumable(study, SPEC, {}, [record])
    assert error.value.key == "STUDY_DIR"


def test_a_checkpoint_of_other_workers_is_refused_naming_the_setting(tmp_path):
    study = StudyDir(tmp_path)
    record = trial("RUNNING")
    checkpoint(study, record, world_size=2)
    with pytest.raises(UserError, match="written by 2 worker") as error:
        check_resumable(study, SPEC, {}, [record])
    assert error.value.key == "resources.workers"
