"""`fakd.study.data_parallel` without a cluster: the relay between a Tune trial and its Train run (rank 0's
evaluations out, go-on or stop back), how a worker's `UserError` is found in a failed run, and the resources a run
asks for. Data-parallel training itself is tested in tests/unit/train/test_distributed.py."""

from __future__ import annotations

import queue
from typing import Any

import pytest

from fakd.errors import UserError
from fakd.study.data_parallel import Scaling


class FakeQueue:
    """The part of ray.util.queue.Queue that `forward_reports` uses, in one process."""

    def __init__(self) -> None:
        self.items: queue.Queue = queue.Queue()

    def put(self, item: Any) -> None:
        self.items.put(item)

    def get(self, timeout: float | None = None) -> Any:
        from ray.util.queue import Empty

        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            raise Empty from None

    def empty(self) -> bool:
        return self.items.empty()


def fake_run(results: FakeQueue, replies: FakeQueue, iterations: list[int], trained: list[int]) -> Any:
    """A Train run whose rank 0 reports `iterations` and trains the next window only when told to go on."""

    def fit() -> None:
        for iteration in iterations:
            trained.append(iteration)
            results.put({"iteration": iteration})
            if not replies.get(timeout=5):
                return
        results.put(None)

    return fit


def test_a_data_parallel_trial_steps_through_its_reports_and_stops_where_tune_stops_it():
    from fakd.study.data_parallel import RunRelay

    results, replies, trained = FakeQueue(), FakeQueue(), []
    relay = RunRelay(fake_run(results, replies, [2, 4, 6], trained), results, replies, poll_s=0.05)
    steps = [relay.next_result() for _ in range(4)]
    assert steps == [{"iteration": 2}, {"iteration": 4}, {"iteration": 6}, None] and trained == [2, 4, 6]

    # Tune decides after each step: a stop (cleanup) before the next step leaves the window after 4 untrained
    results, replies, trained = FakeQueue(), FakeQueue(), []
    relay = RunRelay(fake_run(results, replies, [2, 4, 6], trained), results, replies, poll_s=0.05)
    assert [relay.next_result(), relay.next_result()] == [{"iteration": 2}, {"iteration": 4}]
    relay.stop()
    assert trained == [2, 4] and not relay.thread.is_alive()

    def failing() -> None:
        results.put({"iteration": 2})
        raise RuntimeError("worker 1 died")

    results, replies = FakeQueue(), FakeQueue()
    relay = RunRelay(failing, results, replies, poll_s=0.05)
    assert relay.next_result() == {"iteration": 2}  # reported before the error is raised
    with pytest.raises(RuntimeError, match="worker 1 died"):
        relay.next_result()


def test_a_data_error_of_any_worker_is_reported_as_the_single_process_trial_reports_it():
    """A worker's `UserError` (a damaged data file) stops the study (the `user_error` report), whatever wraps it;
    another failure is raised, so Tune retries the trial."""
    import ray.train

    from fakd.study.data_parallel import RunRelay, user_error_in

    damaged = UserError("cannot read label file", file="data/trainannot/a.png")

    def failing(error: BaseException) -> Any:
        def fit() -> None:
            results.put({"iteration": 2})
            raise error

        return fit

    wrapped = ray.train.WorkerGroupError("worker 1 failed", {1: damaged})
    for error in (wrapped, RuntimeError("the run failed")):
        if isinstance(error, RuntimeError):
            error.__cause__ = wrapped
        results, replies = FakeQueue(), FakeQueue()
        relay = RunRelay(failing(error), results, replies, poll_s=0.05)
        assert relay.next_result() == {"iteration": 2}
        assert relay.next_result() == {"user_error": "data/trainannot/a.png: cannot read label file"}
    assert user_error_in(ray.train.WorkerGroupError("worker 0 failed", {0: OSError("gloo")})) is None
    results, replies = FakeQueue(), FakeQueue()
    relay = RunRelay(failing(ray.train.WorkerGroupError("worker 0 failed", {0: OSError("gloo")})), results, replies,
                     poll_s=0.05)
    assert relay.next_result() == {"iteration": 2}
    with pytest.raises(ray.train.WorkerGroupError):
        relay.next_result()


def test_scaling_asks_for_each_workers_resources():
    config = Scaling(workers=3, cpu=2.0, gpu=0.5).scaling_config()
    assert (config.num_workers, config.use_gpu, config.resources_per_worker) == (3, True, {"CPU": 2.0, "GPU": 0.5})
    assert Scaling(workers=2).scaling_config().resources_per_worker == {"CPU": 1.0}
