"""Optuna's RDBStorage on a real PostgreSQL server: studies persist, and several writers share one study."""

import threading
import uuid

import optuna
import pytest

pytestmark = pytest.mark.postgres
optuna.logging.set_verbosity(optuna.logging.WARNING)


def unique(name: str) -> str:
    """Study names unique per test, since the database is shared by the whole session."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def storages(postgres_url):
    """Fresh RDBStorage objects (each its own engine and connection pool), disposed after the test."""
    made: list[optuna.storages.RDBStorage] = []

    def make() -> optuna.storages.RDBStorage:
        made.append(optuna.storages.RDBStorage(postgres_url, engine_kwargs={"pool_pre_ping": True}))
        return made[-1]

    yield make
    for storage in made:
        storage.remove_session()
        storage.engine.dispose()


def test_studies_persist_across_storage_objects(storages):
    writer = storages()
    assert writer.engine.dialect.name == "postgresql"
    specs = {unique("quadratic"): ("minimize", lambda x: (x - 2.0) ** 2),
             unique("concave"): ("maximize", lambda x: -abs(x + 1.0))}
    written = {}
    for name, (direction, f) in specs.items():
        study = optuna.create_study(storage=writer, study_name=name, direction=direction,
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(lambda trial, f=f: f(trial.suggest_float("x", -5.0, 5.0)), n_trials=6)
        written[name] = study

    reader = storages()
    assert set(specs) <= set(optuna.get_all_study_names(storage=reader))
    for name, (direction, _) in specs.items():
        before, after = written[name], optuna.load_study(study_name=name, storage=reader)
        assert after.direction.name.lower() == direction
        assert len(after.trials) == 6
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in after.trials)
        assert [(t.number, t.params, t.value) for t in after.trials] == \
               [(t.number, t.params, t.value) for t in before.trials]
        assert after.best_value == before.best_value
        assert after.best_params == before.best_params


def test_two_storages_write_one_study_concurrently(storages):
    name, per_writer = unique("shared"), 12
    optuna.create_study(storage=storages(), study_name=name)
    writers = [storages() for _ in range(2)]
    start, errors = threading.Barrier(len(writers)), []

    def write(index: int, storage: optuna.storages.RDBStorage) -> None:
        try:
            study = optuna.load_study(study_name=name, storage=storage,
                                      sampler=optuna.samplers.RandomSampler(seed=index))
            start.wait(timeout=30)
            for _ in range(per_writer):
                trial = study.ask()
                trial.set_user_attr("writer", index)
                study.tell(trial, trial.suggest_float("x", 0.0, 1.0) + index)
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i, s)) for i, s in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    assert not errors, errors

    trials = optuna.load_study(study_name=name, storage=storages()).trials
    assert len(trials) == 2 * per_writer
    assert sorted(t.number for t in trials) == list(range(2 * per_writer))  # no number handed out twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for index in range(len(writers)):
        mine = [t for t in trials if t.user_attrs["writer"] == index]
        assert len(mine) == per_writer
        assert all(index <= t.value == t.params["x"] + index < index + 1 for t in mine)
