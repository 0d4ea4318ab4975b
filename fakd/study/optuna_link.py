"""The study's Optuna side: one Optuna study per (arm, selection repeat), told everything that happened.

Each evaluation is an intermediate value (single-objective studies); a trial ends COMPLETE (its final
mIoU, and its parameter count for a Pareto study), PRUNED (stopped by successive halving) or FAIL
(diverged or errored), so TPE and optuna-dashboard see the same trials as `launch.py status`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import GPSampler, QMCSampler, RandomSampler, TPESampler
from optuna.trial import TrialState

from fakd.errors import UserError
from fakd.results import COMPLETE, FAILED, PRUNED, TrialRecord
from fakd.results.layout import StudyDir
from fakd.results.records import learning_curve
from fakd.results.space import arm_space
from fakd.spec import STORAGE_FILES, StudySpec
from fakd.vocab import METRIC

TRIAL_ATTR = "fakd_trial"  # the Optuna trial's user attribute naming its study trial
HOME_ATTR = "fakd_home"  # an Optuna study's user attribute: the study directory that drives it (database storages)


def derived_seed(*parts: object) -> int:
    """A stable 32-bit seed from any parts (Python's hash() changes between processes)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def open_storage(spec: StudySpec, study: StudyDir, *, existing: bool = False) -> optuna.storages.BaseStorage:
    """The Optuna storage: a file inside the study (addressed from its current location) or the spec's URL.

    `existing`: the study's trials were suggested from this storage already, so a file storage that is missing or
    empty is damage (Optuna would silently start a new one), refused before anything is written."""
    logging.getLogger("optuna").setLevel(logging.WARNING)
    setting = spec.settings.search.storage
    where = str(study.root / STORAGE_FILES[setting]) if setting in STORAGE_FILES else setting
    if existing and setting in STORAGE_FILES and (not Path(where).is_file() or Path(where).stat().st_size == 0):
        state = "empty" if Path(where).is_file() else "missing"
        raise UserError(f"{where}: the Optuna storage the study's trials were suggested from is {state}; restore "
                        "it from a copy of the study, nothing was changed", key="STUDY_DIR")
    try:
        if setting == "journal":
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(where))
        url = f"sqlite:///{where}" if setting == "sqlite" else setting
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if setting != "sqlite"
                                             else None)
        storage.get_all_studies()  # a corrupt file or an unreachable server fails here, not mid-study
        return storage
    except Exception as exc:  # SQLAlchemy, the driver and Optuna raise many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot open the Optuna storage {where}: {first}; nothing was changed",
                        file=spec.path, key="search.storage") from None


class OptunaLink:
    """Per-(arm, repeat) Optuna studies of one fakd study, and the bookkeeping between them and the records."""

    def __init__(self, spec: StudySpec, storage: optuna.storages.BaseStorage, prefix: str) -> None:
        self.spec, self.storage, self.prefix = spec, storage, prefix
        self._trial_ids: dict[tuple[str, int, int], int] = {}
        objectives = spec.settings.search.objectives
        self.directions = ["maximize"] + ["minimize"] * (len(objectives) - 1)
        self.studies: dict[tuple[str, int], optuna.Study] = {}
        self.samplers: dict[tuple[str, int], optuna.samplers.BaseSampler] = {}
        self.home: dict[str, Any] | None = None

    def claim(self, study: StudyDir) -> None:
        """A database storage is shared: refuse to drive its Optuna studies from a copy of the study directory that
        drives them (both would write the same Optuna studies), and record this directory as theirs.

        A directory is known by its inode, so the same study mounted at another path (or moved within its file
        system) is the same study; one with another inode is a copy while the recorded directory still holds a
        study of the same Optuna studies, and the study's new place once that directory is gone (moved)."""
        if self.spec.settings.search.storage in STORAGE_FILES:
            return  # the file storage is copied and moved with the study
        here = {"path": str(study.root), "inode": study.root.stat().st_ino, "host": socket.gethostname()}
        mine = [s for s in self.storage.get_all_studies() if s.study_name.startswith(f"{self.prefix}/")]
        for summary in mine:
            home = summary.user_attrs.get(HOME_ATTR)
            if not isinstance(home, dict):
                continue
            other = Path(str(home.get("path")))
            if home.get("inode") != here["inode"] and other != study.root and _drives(other, self.prefix):
                raise UserError(
                    f"{study.root} is a copy of the study {other}: both hold the Optuna studies {self.prefix}/* of "
                    f"{self.spec.settings.search.storage}, so resuming the copy would write the original's search; "
                    "resume the original, or move (not copy) a study to another place", key="STUDY_DIR")
        self.home = here
        for summary in mine:
            self.storage.set_study_user_attr(summary._study_id, HOME_ATTR, here)

    def verify(self, records: list[TrialRecord]) -> None:
        """Every Optuna trial the records name is in the storage (read only: a missing study or trial is damage,
        or another storage than the one the study was run with)."""
        names = {summary.study_name: summary for summary in self.storage.get_all_studies()}
        for (arm, repeat), numbers in _numbers_by_stream(records).items():
            name = self.study_name(arm, repeat)
            where = self.spec.settings.search.storage
            if name not in names:
                raise UserError(f"the Optuna storage ({where}) has no study {name!r}, from which the study's {arm} "
                                "trials were suggested; restore the storage from a copy of the study, nothing was "
                                "changed", key="search.storage")
            count = len(self.storage.get_all_trials(names[name]._study_id, deepcopy=False))
            if max(numbers) >= count:
                raise UserError(f"the Optuna study {name!r} ({where}) holds {count} trials, but the study's records "
                                f"name trial {max(numbers)}; restore the storage from a copy of the study, nothing "
                                "was changed", key="search.storage")

    def study_name(self, arm: str, repeat: int) -> str:
        return f"{self.prefix}/{arm}" if repeat == 0 else f"{self.prefix}/{arm}/repeat-{repeat}"

    def study(self, arm: str, repeat: int) -> optuna.Study:
        if (arm, repeat) not in self.studies:
            self.studies[(arm, repeat)] = optuna.create_study(
                study_name=self.study_name(arm, repeat), storage=self.storage, directions=self.directions,
                load_if_exists=True)
            if self.home is not None:
                self.studies[(arm, repeat)].set_user_attr(HOME_ATTR, self.home)
        return self.studies[(arm, repeat)]

    def ask(self, arm: str, repeat: int, key: str, index: int | None = None) -> tuple[int, dict[str, Any]]:
        """A new Optuna trial for study trial `key`: its number and its values.

        With `index` (reproducible mode) the sampler is seeded from (seed, arm, repeat, index) alone, so the
        values depend on the finished trials and the order of asking, never on timing.
        """
        search = self.spec.settings.search
        study = self.study(arm, repeat)
        if index is not None:
            study.sampler = self._sampler(derived_seed(search.seed, arm, repeat, index), arm, repeat)
        else:  # one sampler per driver run, seeded also by the trials asked before: a resumed driver never
            # replays the random draws of the trials it already has
            if (arm, repeat) not in self.samplers:
                asked = len(study.get_trials(deepcopy=False))
                self.samplers[(arm, repeat)] = self._sampler(derived_seed(search.seed, arm, repeat, asked), arm, repeat)
            study.sampler = self.samplers[(arm, repeat)]
        trial = study.ask(arm_space(self.spec, arm))
        trial.set_user_attr(TRIAL_ATTR, key)
        return trial.number, dict(trial.params)

    def _sampler(self, seed: int, arm: str, repeat: int) -> optuna.samplers.BaseSampler:
        search = self.spec.settings.search
        if search.sampler == "random":
            return RandomSampler(seed=seed)
        if search.sampler == "qmc":  # one scrambling per arm: its points are the first of one Sobol sequence, in the
            # order they are asked (Optuna counts them in the study), whatever the trial's own seed
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning, module="fakd")
            return QMCSampler(qmc_type="sobol", scramble=True, seed=derived_seed(search.seed, arm, repeat, "qmc"),
                              independent_sampler=RandomSampler(seed=seed), warn_asynchronous_seeding=False,
                              warn_independent_sampling=False)
        if search.sampler == "gp":
            return GPSampler(seed=seed, n_startup_trials=search.tpe_startup, deterministic_objective=False,
                             independent_sampler=RandomSampler(seed=seed), warn_independent_sampling=False)
        return TPESampler(seed=seed, constant_liar=True, n_startup_trials=search.tpe_startup)

    def report(self, record: TrialRecord, evaluation: int, row: Mapping[str, Any]) -> None:
        """The evaluation as an intermediate value (single-objective studies: Optuna keeps learning curves
        for those only, and its TPE cannot rank pruned multi-objective trials that have them)."""
        value = row.get(METRIC)
        if record.optuna_number is None or not isinstance(value, (int, float)) or len(self.directions) > 1:
            return
        trial_id = self._trial_id(record)
        if isinstance(self.storage, optuna.storages.RDBStorage):  # checks the trial's state in its own transaction
            with contextlib.suppress(UpdateFinishedTrialError):
                self.storage.set_trial_intermediate_value(trial_id, evaluation, float(value))
        elif self.storage.get_trial(trial_id).state == TrialState.RUNNING:  # a journal would log the write first
            self.storage.set_trial_intermediate_value(trial_id, evaluation, float(value))

    def _trial_id(self, record: TrialRecord) -> int:
        """The storage's id of the record's Optuna trial (looked up once per trial)."""
        key = (record.arm, record.repeat, record.optuna_number)
        if key not in self._trial_ids:
            study = self.study(record.arm, record.repeat)
            self._trial_ids[key] = self.storage.get_trial_id_from_study_id_trial_number(study._study_id,
                                                                                          record.optuna_number)
        return self._trial_ids[key]

    def _restore_curves(self, arm: str, repeat: int, records: list[TrialRecord]) -> None:
        """The records' evaluations that their Optuna trials lack (lost when the storage failed mid-write)."""
        numbered = [r for r in records if r.optuna_number is not None]
        if not numbered:
            return
        study_id = self.storage.get_study_id_from_name(self.study_name(arm, repeat))
        trials = {t.number: t for t in self.storage.get_all_trials(study_id, deepcopy=False)}
        for record in numbered:
            trial = trials[record.optuna_number]
            missing = {step: value for step, value in learning_curve(record).items()
                       if step not in trial.intermediate_values}
            if not missing:
                continue
            if trial.state == TrialState.RUNNING:
                for step, value in missing.items():
                    self.storage.set_trial_intermediate_value(trial._trial_id, step, value)
            elif not restore_finished_intermediate_values(self.storage, trial._trial_id, missing):
                logging.getLogger(__name__).warning(
                    "the Optuna trial of %s lacks %d evaluations that its records hold; this storage cannot take "
                    "them back into a finished trial (the study's records and table are unaffected)", record.key,
                    len(missing))

    def tell(self, record: TrialRecord) -> None:
        """Tell Optuna how a finished trial ended (a no-op when it already knows)."""
        if record.optuna_number is None:
            return
        study = self.study(record.arm, record.repeat)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study._study_id, record.optuna_number)
        if self.storage.get_trial(trial_id).state != TrialState.RUNNING:
            return
        if record.state == COMPLETE:
            values = [record.final_miou if record.final_miou is not None else float("nan")]
            if len(self.directions) > 1:
                values.append(float(record.last.get("params", float("nan"))))
            study.tell(record.optuna_number, values)
        elif record.state == PRUNED:
            study.tell(record.optuna_number, state=TrialState.PRUNED)
        elif record.state == FAILED:
            self.storage.set_trial_user_attr(trial_id, "fakd_reason", record.reason or "failed")
            study.tell(record.optuna_number, state=TrialState.FAIL)

    def reconcile(self, arm: str, repeat: int, records: list[TrialRecord]) -> None:
        """After a crash: write back the evaluations Optuna lost (the study's records are the truth), tell it about
        trials that ended after its last word, and fail the trials it handed out that no record took (asked just
        before the driver stopped)."""
        if len(self.directions) == 1:
            self._restore_curves(arm, repeat, records)
        for record in records:
            if record.state in (COMPLETE, PRUNED, FAILED):
                self.tell(record)
        recorded = {r.optuna_number for r in records}
        study = self.study(arm, repeat)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in recorded:
                self.storage.set_trial_user_attr(trial._trial_id, "fakd_reason", "abandoned before it was recorded")
                study.tell(trial.number, state=TrialState.FAIL)


def restore_finished_intermediate_values(storage: optuna.storages.BaseStorage, trial_id: int,
                                         values: Mapping[int, float]) -> bool:
    """Write intermediate values into a finished trial, which Optuna's storage API refuses to change: possible in a
    database storage only, through Optuna's own table model. False where the storage cannot take them."""
    from optuna.storages._rdb import models

    if not isinstance(storage, optuna.storages.RDBStorage):
        return False
    session = storage.scoped_session()
    try:
        for step, value in values.items():
            stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
            session.add(models.TrialIntermediateValueModel(trial_id=trial_id, step=step, intermediate_value=stored,
                                                           intermediate_value_type=kind))
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()
    return True


def _numbers_by_stream(records: list[TrialRecord]) -> dict[tuple[str, int], list[int]]:
    found: dict[tuple[str, int], list[int]] = {}
    for record in records:
        if record.optuna_number is not None:
            found.setdefault((record.arm, record.repeat), []).append(record.optuna_number)
    return found


def _drives(directory: Path, prefix: str) -> bool:
    """Whether `directory` is a study whose Optuna studies are `prefix`/* (read only; any doubt is no)."""
    try:
        return json.loads((directory / "study.json").read_text()).get("optuna_prefix") == prefix
    except (OSError, ValueError, AttributeError):
        return False
