"""fakd.vocab: each vocabulary is defined once, and everything that names one of its words follows it."""

import typing

import pytest

from fakd.config import FAKDConfig, RunConfig, TeacherConfig
from fakd.data import ON_DISK
from fakd.losses.fakd import FORMS
from fakd.losses.schedule import strength_at
from fakd.vocab import (
    ARM_TABLE,
    BUDGET_KEY_SUFFIX,
    BUDGETS,
    DATASETS,
    FAKD_FORMS,
    SCHEDULES,
    SPLITS,
    TEACHER_SOURCES,
    TERMINAL,
    TRIAL_STATES,
    ZOO_SOURCES,
)


def literal(model: type, field: str) -> tuple[str, ...]:
    return typing.get_args(model.model_fields[field].annotation)


def test_the_config_accepts_exactly_the_words_of_the_vocabulary():
    assert literal(FAKDConfig, "form") == FAKD_FORMS == FORMS
    assert literal(FAKDConfig, "schedule") == SCHEDULES
    assert literal(RunConfig, "split") == SPLITS
    assert literal(TeacherConfig, "source") == TEACHER_SOURCES and set(ZOO_SOURCES) < set(TEACHER_SOURCES)


def test_every_dataset_has_a_loader_and_every_schedule_a_shape():
    assert {"synthetic", *ON_DISK} == set(DATASETS)
    for schedule in SCHEDULES:
        assert strength_at(10, 10, 2.0, schedule) == pytest.approx(2.0)  # every ramp ends at the maximum
    with pytest.raises(ValueError, match="accepted: linear, cosine, constant"):
        strength_at(0, 10, 1.0, "step")


def test_budgets_states_and_forms_agree():
    assert tuple(BUDGET_KEY_SUFFIX) == BUDGETS and BUDGET_KEY_SUFFIX[BUDGETS[0]] == ""
    assert set(TRIAL_STATES) > TERMINAL
    assert ARM_TABLE["kd+fakd"].fakd_forms == FAKD_FORMS and ARM_TABLE["cwd+fakd"].fakd_forms == ("exact",)
    assert ARM_TABLE["kd"].fakd_forms == ()


@pytest.mark.parametrize(("phase", "split"), [("search", "holdout"), ("final", "val")])
def test_a_run_stored_before_split_was_named_reads_with_its_split(phase, split):
    """A study's trial.json written before the rename names the split `phase` (search or final)."""
    stored = RunConfig(teacher=TeacherConfig(backbone="test_resnet"), student={"backbone": "test_resnet"}).model_dump()
    stored.pop("split")
    assert RunConfig.model_validate({**stored, "phase": phase}).split == split
    with pytest.raises(ValueError, match="split"):
        RunConfig.model_validate({**stored, "phase": "later"})
