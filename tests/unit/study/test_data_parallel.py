"""`fakd.study.data_parallel` without a cluster: the relay between a Tune trial and its Train run (rank 0's
evaluations out, go-on or stop back), and how a worker's `UserError` is found in a failed run. The data-parallel
study itself runs in tests/unit/train/test_distributed.py."""

import queue

import pytest
from ray.util.queue import Empty

from fakd.errors import UserError
from fakd.study.data_parallel import RunRelay, Scaling, user_error_in


class LocalQueue:
    """The part of `ray.util.queue.Queue` the relay uses, in one process."""

    def __init__(self) -> None:
        self.items: queue.Queue = queue.Queue()

    def put(self, item: object) -> None:
        self.items.put(item)

    def get(self, timeout: float | None = None) -> object:
        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            raise Empty from None

    def empty(self) -> bool:
        return self.items.empty()


def rank_zero(results: LocalQueue, replies: LocalQueue, evaluations: int, failure: BaseException | None = None):
    """A Train run's rank 0 as `ReportChannel` drives it: each evaluation out, then wait for go-on or stop."""
    answers: list[bool] = []

    def fit() -> None:
        for step in range(evaluations):
            results.put({"iteration": step + 1})
            go = replies.get()
            answers.append(go)
            if not go:
                return
        if failure is not None:
            raise failure
        results.put(None)

    return fit, answers


def test_the_relay_hands_out_each_evaluation_and_answers_go_on_before_the_next():
    results, replies = LocalQueue(), LocalQueue()
    fit, answers = rank_zero(results, replies, evaluations=2)
    relay = RunRelay(fit, results, replies, poll_s=0.01)
    assert relay.next_result() == {"iteration": 1} and answers == []  # rank 0 waits for the answer
    assert relay.next_result() == {"iteration": 2} and answers == [True]
    assert relay.next_result() is None and answers == [True, True]
    assert not relay.thread.is_alive()


def test_stopping_tells_rank_zero_to_stop_and_waits_for_the_run():
    results, replies = LocalQueue(), LocalQueue()
    fit, answers = rank_zero(results, replies, evaluations=3)
    relay = RunRelay(fit, results, replies, poll_s=0.01, grace_s=5)
    assert relay.next_result() == {"iteration": 1}
    relay.stop()
    assert answers == [False] and not relay.thread.is_alive()


def test_a_workers_user_error_becomes_a_report_and_any_other_failure_is_raised():
    class TrainingFailed(Exception):  # as Ray Train gathers the workers' errors by rank
        def __init__(self, failures: dict[int, BaseException]) -> None:
            super().__init__("a worker failed")
            self.worker_failures = failures

    damaged = UserError("cannot read label", file="a.png")
    for failure in (damaged, TrainingFailed({1: damaged})):
        results, replies = LocalQueue(), LocalQueue()
        fit, _ = rank_zero(results, replies, evaluations=1, failure=failure)
        relay = RunRelay(fit, results, replies, poll_s=0.01)
        assert relay.next_result() == {"iteration": 1}
        assert relay.next_result() == {"user_error": damaged.format()}
    results, replies = LocalQueue(), LocalQueue()
    fit, _ = rank_zero(results, replies, evaluations=0, failure=RuntimeError("NCCL timeout"))
    with pytest.raises(RuntimeError, match="NCCL timeout"):
        RunRelay(fit, results, replies, poll_s=0.01).next_result()


def test_user_error_in_follows_worker_failures_and_causes():
    inner = UserError("bad file")
    wrapped = RuntimeError("train run failed")
    wrapped.__cause__ = inner
    assert user_error_in(inner) is inner and user_error_in(wrapped) is inner
    assert user_error_in(RuntimeError("other")) is None


def test_scaling_asks_for_each_workers_resources():
    config = Scaling(workers=3, cpu=2.0, gpu=0.5).scaling_config()
    assert (config.num_workers, config.use_gpu, config.resources_per_worker) == (3, True, {"CPU": 2.0, "GPU": 0.5})
    assert Scaling(workers=2).scaling_config().resources_per_worker == {"CPU": 1.0}
