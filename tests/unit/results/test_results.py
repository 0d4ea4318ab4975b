"""Pure functions of a study's records: the Pareto front (`fakd.results.pareto`), planned against spent compute
(`fakd.results.compute`), which search trial an arm selects (`fakd.results.selection`) and each arm's search space
(`fakd.results.space`), checked against answers worked out by hand."""

import copy

from conftest import TINY_SPEC
from optuna.distributions import CategoricalDistribution, FloatDistribution

from fakd.results.compute import format_compute, planned_against_spent
from fakd.results.pareto import front_json, pareto_front
from fakd.results.records import TrialRecord
from fakd.results.selection import best_search_trials, confirmed_scores, select_best
from fakd.results.space import arm_space, search_stages
from fakd.spec import validate_spec


def record(key: str, miou: float | None, *, params: int = 1000, phase: str = "search", arm: str = "kd",
           index: int = 0, seed: int = 0, source: str | None = None, seconds: float = 10.0,
           iteration: int = 4) -> TrialRecord:
    state = "COMPLETE" if miou is not None else "FAILED"
    results = [{"iteration": iteration, "val_miou": miou, "params": params, "window_seconds": seconds}]
    return TrialRecord(key=key, phase=phase, arm=arm, index=index, values={}, run={}, student="s", seed=seed,
                       state=state, source=source, results=results)


def test_the_pareto_front_keeps_the_trials_no_other_beats_on_both_counts():
    small_good = record("a", 0.50, params=100)
    big_better = record("b", 0.60, params=300)
    dominated = record("c", 0.45, params=200)  # a beats it on both
    tied = record("d", 0.50, params=100)  # equal to a: neither dominates the other
    failed = record("e", None, params=50)
    front = pareto_front([small_good, big_better, dominated, tied, failed])
    assert [r.key for r in front] == ["a", "d", "b"]  # by parameters, then key
    assert front_json([big_better])[0] == {"trial": "b", "arm": "kd", "val_miou": 0.60, "params": 300,
                                           "config": {}}


def test_planned_hours_price_the_plan_at_the_arms_own_rate():
    plan = {"unit": "gpu", "units_per_trial": 2,
            "arms": {"kd": {"search": {"iterations": 30}, "retrain": {"iterations": 10}},
                     "baseline": {"search": {"iterations": 8}}, "edited": {"search": {"iterations": "many"}}}}
    records = [record("k1", 0.5, seconds=36.0, iteration=4), record("k2", 0.5, seconds=36.0, iteration=4)]
    (kd, baseline) = planned_against_spent(plan, records)
    assert (kd.arm, kd.planned_iterations, kd.done_iterations) == ("kd", 40.0, 8)
    assert kd.spent_hours == 72.0 * 2 / 3600  # two units a trial
    assert kd.planned_hours == 40 * (72.0 / 8) * 2 / 3600  # 9 s an iteration
    assert baseline.planned_hours is None and baseline.done_iterations == 0  # no rate before its first window
    assert format_compute(plan, [kd, baseline]) == [
        "kd: 0.04 of 0.2 GPU-hours planned (8 of 40 iterations)",
        "baseline: 0 of ? GPU-hours planned (0 of 8 iterations)",
    ]


def test_selection_takes_the_best_confirmed_mean_over_any_unconfirmed_score():
    first, second, third = (record(f"search/kd-00{i}", m, index=i) for i, m in enumerate((0.60, 0.58, 0.59)))
    assert [r.key for r in best_search_trials([first, second, third], top=2)[("kd", 0, "s")]] == [
        first.key, third.key]
    assert select_best([first, second, third])[("kd", 0, "s")] is first
    confirms = [record(f"confirm/{i}", m, phase="confirm", seed=s, source=src) for i, (src, s, m) in enumerate(
        [(first.key, 2, 0.50), (first.key, 1, 0.52), (second.key, 1, 0.57)])]
    assert confirmed_scores(confirms) == {first.key: [0.52, 0.50], second.key: [0.57]}  # in seed order
    assert select_best([first, second, third, *confirms])[("kd", 0, "s")] is second  # 0.57 beats 0.51


def test_an_add_on_arm_that_inherits_searches_its_own_term_after_its_base():
    raw = copy.deepcopy(TINY_SPEC)
    raw["train"]["lr"] = {"loguniform": [0.001, 0.1]}
    raw["loss"]["kd"]["temperature"] = {"choice": [1.0, 4.0]}
    raw["loss"]["fakd"]["max_strength"] = {"uniform": [0.5, 2.0]}
    raw["search"] = {**raw["search"], "add_on": "inherit"}
    spec = validate_spec(raw, "tiny.yaml")
    assert search_stages(spec) == [["baseline", "kd"], ["kd+fakd"]]
    assert arm_space(spec, "baseline") == {"train.lr": FloatDistribution(0.001, 0.1, log=True)}
    assert set(arm_space(spec, "kd")) == {"train.lr", "loss.kd.temperature"}
    assert arm_space(spec, "kd")["loss.kd.temperature"] == CategoricalDistribution([1.0, 4.0])
    assert arm_space(spec, "kd+fakd") == {"loss.fakd.max_strength": FloatDistribution(0.5, 2.0)}
    raw["search"]["add_on"] = "joint"
    joint = validate_spec(raw, "tiny.yaml")
    assert search_stages(joint) == [["baseline", "kd", "kd+fakd"]]
    assert set(arm_space(joint, "kd+fakd")) == {"train.lr", "loss.kd.temperature", "loss.fakd.max_strength"}
