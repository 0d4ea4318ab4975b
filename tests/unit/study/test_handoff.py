"""`fakd.study.handoff`: the typed objects a driver hands its trials. The study's teacher is one `StudyTeacher` from
provisioning (recorded in study.json) to the trial, which finds its checkpoint wherever the study now lies."""

import pickle
from pathlib import Path

from conftest import TINY_SPEC

from fakd.spec import validate_spec
from fakd.study.handoff import StudyTeacher, TrialContext, TrialTask, trial_task
from fakd.train import TeacherArtifact


def test_the_teacher_round_trips_through_study_json_and_a_damaged_record_is_none():
    teacher = StudyTeacher("5f1191e5157e", "teachers/5f1191e5157e/teacher.pt", {"val_miou": 0.61})
    assert teacher.to_json() == {"key": "5f1191e5157e", "path": "teachers/5f1191e5157e/teacher.pt",
                                 "metrics": {"val_miou": 0.61}}  # no source, no zoo: not recorded
    assert StudyTeacher.from_json(teacher.to_json()) == teacher
    zoo = StudyTeacher("z", "teachers/given/teacher.pt", {}, "/data/deeplab.pth", "mmseg")
    assert StudyTeacher.from_json(zoo.to_json()) == zoo
    assert StudyTeacher.from_json({"path": "teachers/given/teacher.pt", "metrics": "?"}) == StudyTeacher(
        "given", "teachers/given/teacher.pt", {})
    for damaged in (None, [], {"key": "k"}, {"path": 3}):
        assert StudyTeacher.from_json(damaged) is None


def test_a_trial_finds_the_teacher_where_the_study_lies_now(tmp_path):
    teacher = StudyTeacher("k", "teachers/k/teacher.pt", {"val_miou": 0.5})
    moved = TrialContext(str(tmp_path / "moved"), teacher)
    assert moved.teacher_artifact() == TeacherArtifact(tmp_path / "moved" / "teachers" / "k" / "teacher.pt", "k",
                                                       {"val_miou": 0.5})
    assert TrialContext(str(tmp_path), None).teacher_artifact() is None
    run = validate_spec(TINY_SPEC, "tiny.yaml").run_config("kd")
    task = trial_task(pickle.loads(pickle.dumps(TrialTask("search/kd-003", "kd", run).as_config())))
    assert (task.name, task.run, task.work_dir(Path("/s"))) == ("kd-003", run, Path("/s/trials/search/kd-003"))
    assert pickle.loads(pickle.dumps(moved)) == moved  # what Tune ships to each trial's process
