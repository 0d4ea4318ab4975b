"""Test-wide settings: offline hubs, offline W&B, few threads, and a tiny study spec."""

import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per test process: pytest-xdist runs two at once

import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from fakd import spec_yaml  # noqa: E402

TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "data": {"name": "synthetic", "num_classes": 4, "image_size": 32, "train_length": 16, "val_length": 4},
    "teacher": {"backbone": "test_resnet", "head": "fcn", "output_stride": 8, "head_channels": 16, "iters": 4},
    "student": {"backbone": "test_efficientnet", "head": "fcn", "output_stride": 8, "head_channels": 16},
    "train": {"iters": 4, "eval_every": 2, "batch_size": 2, "eval_batch_size": 4, "lr": 0.01},
    "loss": {"kd": {"weight": 1.0, "temperature": 2.0}, "cwd": {"weight": 1.0, "temperature": 4.0},
             "fakd": {"max_strength": 1.0, "schedule": "constant"}},
    "arms": ["baseline", "kd", "kd+fakd"],
    # every arm searched at once (the default protocol, inherit, is tested where it is named)
    "search": {"num_samples": 1, "max_concurrent": 1, "add_on": "joint"},
    "tracking": {"wandb": False},
}


FIXTURE_MARKS = {"ray_local": "ray", "searched_study": "ray", "postgres_url": "postgres"}
"""Fixtures that start a service: a test that uses one gets its mark, so `make test-fast` never starts it."""


SHARED_STUDY_MODULES = frozenset({"test_corrupt", "test_export", "test_retrain", "test_study"})
"""The modules that use the session's `searched_study`: pytest-xdist runs them on one worker, which builds the
study once (collection fails where a module uses it unlisted)."""

EXPECTED_SECONDS = {"driver": 30.0, "slow": 30.0, "ray": 5.0}
"""A rough cost of a test by its heaviest mark (else 0.1 s), to start the longest groups first."""


def test_group(nodeid: str) -> str:
    """The unit pytest-xdist gives one worker (`--dist loadscope`, see `pytest_xdist_make_scheduler`): a test
    module, or every module of the shared study, so module and session fixtures are built once."""
    module = nodeid.split("::", 1)[0]
    return "searched_study" if Path(module).stem in SHARED_STUDY_MODULES else module


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope` by `test_group` (pytest-xdist's own `loadgroup` cannot tag node ids under pytest 9)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return test_group(nodeid)

    return GroupScheduling(config, log)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the services its fixtures start."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for fixture in fixtures & set(FIXTURE_MARKS):
            item.add_marker(FIXTURE_MARKS[fixture])
        if "searched_study" in fixtures and item.module.__name__ not in SHARED_STUDY_MODULES:
            raise pytest.UsageError(f"{item.nodeid} uses searched_study: add its module to SHARED_STUDY_MODULES "
                                    "in tests/conftest.py")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(LongestGroupsFirst(), "fakd-longest-groups-first")


class LongestGroupsFirst:
    """Orders the groups of the tests that run longest first (with `--no-loadscope-reorder`, pytest-xdist hands them
    out in this order), so that the two workers end together."""

    @pytest.hookimpl(trylast=True)  # after `-m` and `-k` deselected: a deselected slow test weighs nothing
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        cost: dict[str, float] = {}
        for item in items:
            marks = {mark.name for mark in item.iter_markers()}
            group = test_group(item.nodeid)
            cost[group] = cost.get(group, 0.0) + max([EXPECTED_SECONDS.get(name, 0.1) for name in marks] + [0.1])
        items.sort(key=lambda item: -cost[test_group(item.nodeid)])  # stable: a group keeps its order


def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.2,
             driver: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds, or at once (with the end of `log`)
    when `driver` ends before it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if driver is not None and driver.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.is_file() else ""
            raise AssertionError(f"the driver ended (exit {driver.returncode}) before {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def write_spec(directory: Path, spec: dict[str, Any] | None = None, name: str = "spec.yaml") -> Path:
    path = directory / name
    path.write_text(spec_yaml.dump(spec if spec is not None else TINY_SPEC))
    return path


@pytest.fixture
def tiny_spec_path(tmp_path: Path) -> Path:
    return write_spec(tmp_path)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray runtime (2 CPUs, loopback) shared by the in-process study tests."""
    import ray

    env = {name: os.environ[name] for name in ("HF_HUB_OFFLINE", "WANDB_MODE", "WANDB_SILENT")}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def given_teacher(tmp_path_factory) -> Path:
    """The tiny spec's teacher, trained once in this process, for the studies whose subject is not a teacher's
    training: given as `teacher.checkpoint`, a study copies it instead of training one in a Ray task (a process
    that spends seconds of CPU importing torch and timm)."""
    from fakd.spec import validate_spec
    from fakd.train import ensure_teacher

    spec = validate_spec(copy.deepcopy(TINY_SPEC), "tiny.yaml")
    cfg = spec.run_config(spec.settings.arms[0])
    return ensure_teacher(cfg, tmp_path_factory.mktemp("given-teacher"), progress=False).path


def searched_spec(arms: list[str] | None = None, **search: Any) -> dict[str, Any]:
    """The tiny spec with a real search space (every arm has something to tune); with `arms`, only those
    arms and the searched keys they use."""
    spec = copy.deepcopy(TINY_SPEC)
    spec["train"]["lr"] = {"loguniform": [0.002, 0.05]}
    arms = arms or spec["arms"]
    if any(arm.startswith("kd") for arm in arms):
        spec["loss"]["kd"]["temperature"] = {"choice": [1.0, 2.0]}
    if any(arm.endswith("+fakd") for arm in arms):
        spec["loss"]["fakd"]["max_strength"] = {"uniform": [0.5, 2.0]}
    spec["arms"] = list(arms)
    # one trial at a time unless a test needs more: Tune then reuses one trial process for the phase, where each
    # further concurrent trial costs a process start (importing torch and timm takes seconds of CPU); no
    # confirmation (on by default) unless a test asks for it, as `searched_study` does
    spec["search"] = {"num_samples": 2, "max_concurrent": 1, "seed": 0, "add_on": "joint", "confirm": False,
                      **search}
    return spec


@pytest.fixture(scope="session")
def searched_study(tmp_path_factory, ray_local):
    """A real tiny study: 3 arms × 2 search trials, the default confirmation (both trials of each arm × 2 fresh
    seeds), then the best of each retrained with 2 seeds."""
    from fakd.study import sweep

    tmp_path = tmp_path_factory.mktemp("study")
    spec = write_spec(tmp_path, searched_spec(retrain_seeds=2, confirm=None))
    return spec, sweep(str(spec), storage=tmp_path / "studies")


@pytest.fixture(scope="session")
def postgres_url():
    """A SQLAlchemy URL of a fresh database on a throwaway PostgreSQL server (see tests/postgres.py)."""
    from postgres import MISSING, find_bindir, postgres_server

    bindir = find_bindir()
    if bindir is None:
        pytest.skip(MISSING)
    with postgres_server(bindir) as url:
        yield url
