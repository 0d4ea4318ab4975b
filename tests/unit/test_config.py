"""`fakd.config`: a run written out (a study's trial records, a run directory's run.json) reads back as the same run,
whatever its teacher; the rules against keys that have no effect judge what a person wrote, not written defaults."""

import pytest
from pydantic import ValidationError

from fakd.config import STORED, RunConfig

TEACHERS = [
    {"backbone": "resnet18", "head": "psp", "output_stride": 16, "iters": 10},
    {"source": "mmseg", "checkpoint": "/zoo/pspnet.pth", "output_stride": 16},
    {"source": "mmseg", "checkpoint": "/zoo/deeplabv3.pth"},
    {"source": "torchvision", "checkpoint": "/zoo/fcn.pth", "arch": "fcn_resnet50"},
]


@pytest.mark.parametrize("teacher", TEACHERS, ids=["timm", "mmseg-d16", "mmseg", "torchvision"])
def test_a_stored_run_reads_back_as_the_same_run(teacher):
    run = RunConfig(teacher=teacher, student={"backbone": "test_resnet"}, arm="kd")
    assert RunConfig.model_validate(run.model_dump(mode="json"), context=STORED) == run


def test_a_key_without_effect_is_still_refused_where_a_person_wrote_it():
    written = {"teacher": {"source": "torchvision", "checkpoint": "/zoo/fcn.pth", "arch": "fcn_resnet50",
                           "output_stride": 8}, "student": {"backbone": "test_resnet"}}
    with pytest.raises(ValidationError, match="has no effect with teacher.source: torchvision"):
        RunConfig.model_validate(written)
    stored = {**written, "teacher": {**written["teacher"], "head": "psp"}}
    with pytest.raises(ValidationError, match="has no effect"):  # not a default: someone wrote it, even stored
        RunConfig.model_validate(stored, context=STORED)
