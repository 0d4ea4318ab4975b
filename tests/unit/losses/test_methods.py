"""Distillation methods as plug-ins (`fakd.losses.methods`): declared in a spec by import path, preflighted, trained
through the same interface as the built-in KD, CWD and DIST, and with FAKD on top by Monte-Carlo."""

import pytest
import torch
from conftest import TINY_SPEC, write_spec

from fakd.cli import main
from fakd.config import LossConfig, MethodConfig
from fakd.errors import UserError
from fakd.losses import channel_wise_kd, dist_loss, pixel_kd
from fakd.losses.methods import BUILT_IN, DistillInputs, check_method, load_method
from fakd.losses.monte_carlo import augmented_copies, augmented_inputs, expected_loss
from fakd.models import SegmenterOutput
from fakd.preflight import preflight
from fakd.spec import load_spec
from fakd.train.objective import SegmentationObjective
from fakd.vocab import arm_named

PLUGINS = "tests.plugins.methods"


def inputs(classes: int = 4, dim: int = 6, seed: int = 0) -> DistillInputs:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (2, 8, 8), generator=generator)
    labels[0, :2] = 255
    return DistillInputs(torch.randn(2, classes, 8, 8, generator=generator, requires_grad=True),
                         torch.randn(2, classes, 16, 16, generator=generator), labels,
                         torch.randn(2, dim, 8, 8, generator=generator, requires_grad=True))


def plugin_spec(tmp_path, arms: list[str], **method) -> dict:
    raw = {**TINY_SPEC, "arms": arms}
    raw["methods"] = {"mine": {"loss": f"{PLUGINS}:kd_like", "params": {"temperature": 2.0}, **method}}
    return raw


def test_the_built_in_methods_are_the_losses_they_name():
    batch = inputs()
    assert torch.equal(BUILT_IN["kd"](batch, temperature=2.0),
                       pixel_kd(batch.student_logits, batch.teacher_logits, 2.0))
    assert torch.equal(BUILT_IN["cwd"](batch, temperature=4.0),
                       channel_wise_kd(batch.student_logits, batch.teacher_logits, 4.0))
    assert torch.equal(BUILT_IN["dist"](batch, temperature=1.0, beta=2.0, gamma=0.5),
                       dist_loss(batch.student_logits, batch.teacher_logits, beta=2.0, gamma=0.5))


def test_a_plug_in_written_independently_matches_the_built_in_kd():
    batch = inputs()
    mine = load_method(f"{PLUGINS}:kd_like")
    torch.testing.assert_close(mine(batch, temperature=3.0), BUILT_IN["kd"](batch, temperature=3.0))


@pytest.mark.parametrize(("path", "says"), [
    ("tests.plugins.methods", "is not an import path"),
    ("no_such_package_xyz.losses:loss", "cannot import no_such_package_xyz.losses (ModuleNotFoundError"),
    (f"{PLUGINS}:missing", "has no missing"),
    (f"{PLUGINS}:NOT_CALLABLE", "is a int, not a callable"),
])
def test_a_method_that_does_not_load_says_why(path, says):
    with pytest.raises(ValueError, match=None) as error:
        load_method(path)
    assert says in str(error.value)


@pytest.mark.parametrize(("name", "params", "says"), [
    ("no_params", {"beta": 1.0}, "signature does not take (inputs, **params) for params ['beta']"),
    ("per_pixel", {}, "returns a tensor of shape (2, 4, 4), not a scalar"),
    ("not_a_number", {}, "returns nan"),
    ("a_float", {}, "returns a float, not a torch.Tensor"),
    ("detached", {}, "no gradient"),
    ("raises", {}, "fails on a 2×3×4×4 batch: RuntimeError: shapes do not match"),
])
def test_preflight_calls_the_method_once_on_tiny_tensors(name, params, says):
    with pytest.raises(ValueError) as error:
        check_method(load_method(f"{PLUGINS}:{name}"), params)
    assert says in str(error.value)
    check_method(load_method(f"{PLUGINS}:kd_like"), {"temperature": 2.0})  # a sound one passes


def test_augmented_inputs_move_features_and_logits_together_through_the_classifier():
    """Each copy's features are f + e and its logits z + W e: the classifier maps the one move to the other, the
    teacher and labels are untouched, and the draws are those of `augmented_copies`."""
    batch = inputs(classes=3, dim=5)
    weight = torch.randn(3, 5)
    covariance = torch.rand(3, 5)
    copies = list(augmented_inputs(batch, weight, covariance, 1.5, 4, generator=torch.Generator().manual_seed(1)))
    logits = list(augmented_copies(batch.student_logits, batch.labels, weight, covariance, 1.5, 4,
                                   generator=torch.Generator().manual_seed(1)))
    for copy, expected in zip(copies, logits, strict=True):
        torch.testing.assert_close(copy.student_logits, expected)
        moved = copy.student_features - batch.student_features
        torch.testing.assert_close(torch.einsum("cd,ndhw->nchw", weight, moved),
                                   copy.student_logits - batch.student_logits, atol=1e-5, rtol=1e-5)
        assert copy.teacher_logits is batch.teacher_logits and copy.labels is batch.labels
        assert moved[0, :, :2].abs().max() == 0  # ignore pixels are not moved
    assert not torch.equal(copies[0].student_features, copies[1].student_features)


def objective_case(methods: dict, arm: str, samples: int = 8) -> tuple[SegmentationObjective, tuple]:
    loss = LossConfig(fakd={"max_strength": 1.0, "schedule": "constant", "samples": samples}).for_arm(arm)
    objective = SegmentationObjective(loss, num_classes=4, feature_dim=6, total_steps=10,
                                      methods={k: MethodConfig(**v) for k, v in methods.items()})
    batch = inputs()
    student = SegmenterOutput(batch.student_logits, batch.student_features)
    return objective, (student, batch.labels.repeat_interleave(2, 1).repeat_interleave(2, 2), 3,
                       torch.randn(4, 6), batch.teacher_logits)


def test_a_plug_in_arm_trains_through_the_objective_like_the_built_in():
    kd_like = {"mine": {"loss": f"{PLUGINS}:kd_like", "weight": 0.7, "params": {"temperature": 2.0}}}
    mine, args = objective_case(kd_like, "mine")
    builtin = SegmentationObjective(LossConfig(kd={"weight": 0.7, "temperature": 2.0}).for_arm("kd"), 4, 6, 10)
    total, terms = mine(*args)
    expected, expected_terms = builtin(*args)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(terms["loss_mine"], expected_terms["loss_kd"])
    assert mine.needs_teacher and mine.covariance is None


def test_a_plug_in_with_fakd_averages_it_over_sampled_augmentations():
    """`mine+fakd` is the mean of the method over K augmented copies (the draws of `augmented_inputs` with this
    step's class covariance), its gradient reaches the student, and a loss on the features sees them moved."""
    energy = {"mine": {"loss": f"{PLUGINS}:feature_energy"}}
    objective, args = objective_case(energy, "mine+fakd", samples=16)
    student, labels, step, weight, teacher = args
    torch.manual_seed(5)
    total, terms = objective(*args)

    reference, _ = objective_case(energy, "mine+fakd", samples=16)
    small = labels[:, ::2, ::2]
    reference.covariance.update(student.features.detach(), small)  # what the objective's step did first
    torch.manual_seed(5)
    copies = augmented_inputs(DistillInputs(student.logits, teacher, small, student.features), weight,
                              reference.covariance.covariance, 1.0, 16)
    expected = expected_loss(lambda c: c.student_features.pow(2).mean() ** 2, copies)
    torch.testing.assert_close(terms["loss_mine"], expected.detach())
    assert terms["fakd_strength"] == 1.0
    plain, _ = objective_case(energy, "mine")
    assert plain(*args)[1]["loss_mine"] < terms["loss_mine"]  # moved features carry more energy on average
    total.backward()
    assert student.features.grad is not None and student.features.grad.abs().sum() > 0


def test_a_spec_declares_a_method_with_searched_parameters_and_gets_its_two_arms(tmp_path):
    raw = plugin_spec(tmp_path, ["baseline", "mine", "mine+fakd"], weight={"uniform": [0.5, 2.0]},
                      params={"temperature": {"choice": [1.0, 4.0]}})
    spec = load_spec(write_spec(tmp_path, raw))
    assert set(spec.space) == {"methods.mine.weight", "methods.mine.params.temperature"}
    assert arm_named("mine").base == "baseline" and arm_named("mine+fakd").base == "mine"
    assert arm_named("mine+fakd").uses("loss.fakd.samples") and not arm_named("mine").uses("loss.fakd.samples")
    assert arm_named("mine").uses("methods.mine.weight") and not arm_named("kd").uses("methods.mine.weight")
    run = spec.run_config("mine+fakd", {"methods.mine.params.temperature": 4.0})
    assert run.arm_methods["mine"].params == {"temperature": 4.0} and run.distills
    assert run.effective_loss.fakd.enabled and not run.effective_loss.distills  # no built-in term
    assert spec.run_config("baseline").arm_methods == {} and not spec.run_config("baseline").distills


@pytest.mark.parametrize(("change", "key", "says"), [
    ({"arms": ["baseline", "theirs"]}, "arms.1", "'theirs' is not an arm; accepted: 'baseline'"),
    ({"arms": ["baseline", "kd"]}, "methods.mine", "no arm uses it; add mine or mine+fakd"),
    ({"methods": {"kd": {"loss": f"{PLUGINS}:kd_like"}}}, "methods", "kd is a built-in arm"),
    ({"methods": {"my+fakd": {"loss": f"{PLUGINS}:kd_like"}}}, "methods", "is not a method name"),
    ({"methods": {"mine": {"loss": "kd_like"}}}, "methods.mine.loss", "is not an import path"),
    ({"methods": {"mine": {"loss": f"{PLUGINS}:kd_like", "temperature": 2}}}, "methods.mine.temperature",
     "unknown key; accepted: loss, weight, params"),
    ({"methods": {"mine": {"loss": {"choice": ["a:b", "c:d"]}}}}, "methods.mine.loss", "cannot be searched"),
    ({"methods": {"mine": {"loss": f"{PLUGINS}:kd_like", "weight": -1}}}, "methods.mine.weight", "greater than"),
    ({"loss": {**TINY_SPEC["loss"], "fakd": {"samples": 0}}}, "loss.fakd.samples", "greater than or equal to 1"),
])
def test_a_bad_methods_section_is_one_line_naming_the_key(tmp_path, change, key, says):
    raw = {**plugin_spec(tmp_path, ["baseline", "mine"]), **change}
    with pytest.raises(UserError) as error:
        load_spec(write_spec(tmp_path, raw))
    assert error.value.key == key and says in error.value.message, error.value.format()


@pytest.mark.parametrize(("loss", "says"), [
    ("no_such_package_xyz:loss", "cannot import no_such_package_xyz"),
    (f"{PLUGINS}:per_pixel", "not a scalar"),
    (f"{PLUGINS}:not_a_number", "returns nan"),
    (f"{PLUGINS}:raises", "RuntimeError: shapes do not match"),
])
def test_preflight_refuses_a_broken_method_before_anything_trains(tmp_path, capsys, loss, says):
    spec = write_spec(tmp_path, plugin_spec(tmp_path, ["baseline", "mine"], loss=loss, params={}))
    with pytest.raises(UserError) as error:
        preflight(load_spec(spec))
    assert error.value.key == "methods.mine.loss" and f"method mine ({loss})" in error.value.message
    assert says in error.value.message
    out = tmp_path / "run"
    assert main(["train", str(spec), "--arm", "mine", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and not out.exists()


def test_train_runs_a_plug_in_arm_with_fakd(tmp_path, capsys):
    raw = plugin_spec(tmp_path, ["baseline", "mine", "mine+fakd"])
    raw["loss"] = {**raw["loss"], "fakd": {"max_strength": 1.0, "schedule": "constant", "samples": 2}}
    raw["train"] = {**raw["train"], "iters": 2, "eval_every": 2}
    out = tmp_path / "run"
    assert main(["train", str(write_spec(tmp_path, raw)), "--arm", "mine+fakd", "--out", str(out)]) == 0
    log = capsys.readouterr()
    assert "(mine+fakd): val mIoU" in log.out + log.err
    assert main(["train", str(write_spec(tmp_path, raw)), "--arm", "theirs"]) == 2
    assert "unknown arm 'theirs'; accepted: baseline" in capsys.readouterr().err
