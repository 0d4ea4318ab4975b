"""`launch.py plan`: the bill before the launch. The arithmetic against counts worked out by hand for the
quickstart's halving and sequential retrain, the measurement on a tiny spec, and bad input."""

import copy
import json
import math

import pytest
from conftest import TINY_SPEC, searched_spec, write_spec
from test_report import make_study

from fakd.cli import main
from fakd.plan import StepCost, evaluations_per_trial, make_bill, measure_costs, plan_metadata
from fakd.results import read_trials
from fakd.results.compute import planned_against_spent
from fakd.spec import load_spec, validate_spec

QUICKSTART = "studies/quickstart.yaml"


def test_the_quickstart_bill_counts_every_iteration_and_evaluation_the_spec_asks_for():
    spec = load_spec(QUICKSTART)
    # 150 iterations, an evaluation every 50: 3 per run. Reproducible halving at evaluation 2 with η = 2 over one
    # generation of 4 trials: 4 trials reach evaluation 2 and 2 of them evaluation 3, 10 evaluations, 2.5 each.
    assert evaluations_per_trial(spec, 3) == 2.5
    costs = {"teacher": StepCost(0.3, 2.0), "baseline": StepCost(0.1, 1.0), "kd": StepCost(0.2, 1.0),
             "kd+fakd": StepCost(0.25, 1.0)}
    bill = make_bill(spec, costs, slots=2)
    for arm in ("baseline", "kd", "kd+fakd"):
        step, evaluation = costs[arm].iteration, costs[arm].evaluation
        search_s = 10 * (50 * step + evaluation)  # the 10 evaluation windows of the arm's 4 trials
        confirm_s = 2 * 2 * (150 * step + 3 * evaluation)  # the default confirmation: the best 2 × 2 fresh seeds
        retrain_s = 6 * (150 * step + 3 * evaluation)  # search.decide: at most 6 seeds
        assert bill.arms[arm].search == pytest.approx(search_s / 3600)
        assert bill.arms[arm].confirm == pytest.approx(confirm_s / 3600)
        assert bill.arms[arm].retrain == pytest.approx(retrain_s / 3600) and bill.arms[arm].retrain_runs == 6
    assert bill.teacher == pytest.approx((400 * 0.3 + 8 * 2.0) / 3600)  # 400 iterations, 8 evaluations
    others = sum(arm.total for arm in bill.arms.values())
    assert bill.total == pytest.approx(bill.teacher + others)
    assert bill.wall_clock(1) == pytest.approx(bill.teacher + others / 2)
    assert "at most 6 seeds" in bill.retrain_note


def test_asynchronous_halving_passes_a_rung_with_probability_one_over_eta():
    raw = copy.deepcopy(TINY_SPEC)
    raw["train"].update(iters=80, eval_every=10)
    raw["search"] = {"num_samples": 8, "scheduler": "asha", "grace_period": 1, "reduction_factor": 3}
    spec = validate_spec(raw, "tiny.yaml")
    # rungs at evaluations 1 and 3 of 8: 1 + (3 - 1)/3 + (8 - 3)/9
    assert evaluations_per_trial(spec, 8) == pytest.approx(1 + 2 / 3 + 5 / 9)
    raw["search"] = {"num_samples": 8, "scheduler": "none"}
    assert evaluations_per_trial(validate_spec(raw, "tiny.yaml"), 8) == 8


def test_plan_with_given_step_seconds_prints_the_bill_as_json(tmp_path, capsys):
    raw = copy.deepcopy(TINY_SPEC)
    raw["search"] = {"num_samples": 3, "scheduler": "none", "retrain_seeds": 2, "confirm": {"top": 1, "seeds": 2}}
    spec = write_spec(tmp_path, raw)
    given = "baseline=0.5,kd=1,kd+fakd=2,teacher=3"
    assert main(["plan", str(spec), "--step-seconds", given, "--json", "--slots", "3"]) == 0
    bill = json.loads(capsys.readouterr().out)
    assert bill["unit"] == "cpu_hours" and bill["slots"] == 3
    for arm, step in (("baseline", 0.5), ("kd", 1.0), ("kd+fakd", 2.0)):
        assert bill["arms"][arm]["search"] == pytest.approx(3 * 4 * step / 3600)  # 3 trials of 4 iterations
        assert bill["arms"][arm]["confirm"] == pytest.approx(2 * 4 * step / 3600)
        assert bill["arms"][arm]["retrain"] == pytest.approx(2 * 4 * step / 3600)
    assert bill["teacher"] == pytest.approx(4 * 3 / 3600)
    assert bill["total"] == pytest.approx(bill["teacher"] + sum(a["total"] for a in bill["arms"].values()))
    assert main(["plan", str(spec), "--step-seconds", given]) == 0
    text = capsys.readouterr().out
    assert "| kd+fakd" in text and "wall clock on 2 slots" in text  # search.max_concurrent by default


def test_a_measured_bill_is_finite_and_positive(tmp_path):
    spec = validate_spec(copy.deepcopy(TINY_SPEC), "tiny.yaml")
    costs = measure_costs(spec, ["teacher", *spec.settings.arms])
    assert set(costs) == {"teacher", "baseline", "kd", "kd+fakd"}
    for cost in costs.values():
        assert 0 < cost.iteration < 60 and 0 <= cost.evaluation < 60 and math.isfinite(cost.evaluation)


def test_bad_input_is_one_line(tmp_path, capsys):
    spec = write_spec(tmp_path)
    for args, expected in (
        (["--step-seconds", "dist=0.2"], "--step-seconds names 'dist', which is not an arm of the study"),
        (["--step-seconds", "kd=fast"], "seconds per iteration must be a positive number"),
        (["--step-seconds", "kd=-1"], "seconds per iteration must be a positive number"),
        (["--slots", "0"], "--slots"),
        (["--set", "train.iters=-5"], "train.iters"),
    ):
        assert main(["plan", str(spec), *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, (args, err)


def test_status_and_the_report_set_each_arms_spent_compute_against_its_plan(tmp_path, capsys):
    study = make_study(tmp_path / "study", arms=["baseline", "kd"], seeds=(1, 2))
    spec = validate_spec(searched_spec(["baseline", "kd"], retrain_seeds=2, scheduler="none"), "tiny.yaml")
    study.update_metadata(plan=plan_metadata(spec))
    iters, units = spec.defaults.train.iters, spec.settings.resources.cpu
    rows = {row.arm: row for row in planned_against_spent(study.metadata()["plan"], read_trials(study))}
    assert set(rows) == {"baseline", "kd"}
    for row in rows.values():
        assert row.planned_iterations == 4 * iters  # 2 search trials and 2 retrain seeds of train.iters each
        # made: 3 search runs of 2 × 30 s and 2 retrain runs of 2 × 60 s, 4 iterations each: 420 s, 21 s/iter
        assert row.done_iterations == 20
        assert row.spent_hours == pytest.approx(420 * units / 3600)
        assert row.planned_hours == pytest.approx(4 * iters * 21 * units / 3600)
    assert main(["status", str(study.root)]) == 0
    shown = capsys.readouterr().out
    assert "compute spent of planned" in shown and "retrain: 2 seeds per arm" in shown
    assert f"  kd: {420 * units / 3600:.3g} of {4 * iters * 21 * units / 3600:.3g} CPU-hours planned" in shown
    report = tmp_path / "report.html"
    assert main(["export", str(study.root), "--format", "html", "--out", str(report)]) == 0
    assert "<th>Compute, spent of planned</th><td>baseline: " in report.read_text()


def test_a_plan_edited_by_hand_shows_the_arms_it_still_describes():
    spec = validate_spec(searched_spec(["baseline", "kd"], retrain_seeds=2, scheduler="none"), "tiny.yaml")
    plan = plan_metadata(spec)
    plan["arms"]["kd"]["search"] = {"iterations": "many"}
    plan["units_per_trial"] = -3
    rows = planned_against_spent(plan, [])
    assert [row.arm for row in rows] == ["baseline"] and rows[0].planned_hours is None
    assert planned_against_spent({"arms": [1, 2]}, []) == []
