"""The search benchmark's replay: a simulated clock with two slots, compute counted window by window."""

from benchmarks.bench_search import CONFIRM, GridPhase, _point, regret_uncertainty, replay, seen_layers


def curve(seconds: list[float], mious: list[float]) -> list[dict]:
    return [{"iteration": 50 * (i + 1), "val_miou": miou, "window_seconds": s, "seconds_per_iter": s / 50}
            for i, (s, miou) in enumerate(zip(seconds, mious, strict=True))]


def test_replay_runs_two_trials_at_a_time_and_counts_every_window():
    points = [_point({"train.lr": lr}) for lr in (0.1, 0.2, 0.3)]
    curves = {
        points[0]: curve([10, 10, 10], [0.1, 0.2, 0.30]),  # ends at t = 30
        points[1]: curve([5, 5, 5], [0.1, 0.2, 0.40]),  # ends at t = 15, then the third point starts
        points[2]: curve([2, 2, 2], [0.1, 0.2, 0.35]),  # runs from t = 15 to t = 21
    }
    result = replay(GridPhase(points, total_iters=150), lambda record: curves[_point(record.values)])
    assert result.trials == 3 and result.compute == 30 + 15 + 6 and result.wall == 30
    # finishes: point 1 at t=15 (compute 15 + 15 of point 0's windows), point 2 at t=21, point 0 at t=30
    assert result.found == [(30.0, 15.0, 0.40), (6 + 15 + 21, 21.0, 0.40), (51.0, 30.0, 0.40)]
    assert result.reached(0.40) == (30.0, 15.0) and result.reached(0.46) is None


def test_regret_uncertainty_bootstraps_the_truth_and_the_search_seeds():
    high, low, mid = (_point({"train.lr": lr}) for lr in (0.1, 0.2, 0.3))
    # `high` is best under every resample of the training seeds; `mid` beats `low` on average but not on seed 0
    scores = {high: [0.50, 0.52, 0.51], mid: [0.30, 0.45, 0.45], low: [0.40, 0.30, 0.30]}
    picks = {"always best": [high, high], "always mid": [mid, mid], "mixed": [high, low]}
    sure = regret_uncertainty(scores, picks, draws=400)
    assert (sure["always best"]["low"], sure["always best"]["high"]) == (0.0, 0.0)
    # "mixed" ties with it (shared) where both resampled search seeds are the first: a quarter of the draws
    assert sure["always mid"]["lowest"] == 0.0
    assert abs(sure["always best"]["lowest"] + sure["mixed"]["lowest"] - 1.0) < 1e-9
    assert 0.08 < sure["mixed"]["lowest"] < 0.17
    # resampling the search seeds alone can give "mixed" all `high` (regret 0) or all `low` (its whole gap)
    assert sure["mixed"]["low"] < sure["mixed"]["high"]
    assert 5.0 <= sure["always mid"]["low"] <= sure["always mid"]["high"] <= 20.0


def test_each_search_seed_trains_on_its_own_rotation_of_the_seed_layers():
    assert CONFIRM["seeds"] == 2 and seen_layers(0, 8) == [0, 1, 2] and seen_layers(7, 8) == [7, 0, 1]
    assert seen_layers(8, 8) == seen_layers(0, 8)
