"""The study directory: where each file lives, and the atomic writes every writer goes through.

A study directory is self-contained and relocatable: nothing in it is addressed by an absolute path, so
it can be read (status, export) from any place it was copied or moved to, without the data or Ray.

    study.json          format, name, dataset facts (class names), teacher (relative path, metrics), times
    spec.yaml           the spec with every override applied (the study's single source of settings)
    trials/<phase>/<trial>/trial.json     one trial: arm, values, resolved run config, state
    trials/<phase>/<trial>/results.jsonl  its evaluations, one JSON object a line
    trials/<phase>/<trial>/checkpoints/   its latest full-state checkpoint (written by the trial)
    teachers/<hash>/teacher.pt            the study's teacher
    optuna.db | optuna.journal            the per-arm Optuna studies (unless search.storage is a URL)
    tune/<phase>-<n>/                     Ray Tune's logs of each driver run (never read back)
    wandb/, exports/, .lock
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fakd.atomic import write_atomic
from fakd.errors import UserError

if TYPE_CHECKING:
    from fakd.spec import StudySpec

MARKER = "study.json"
FORMAT = 2
LOCK_FILE = ".lock"
TRAINING_LOCK_FILE = ".training.lock"  # shared by every process that trains in the study (fakd.study.lock)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path, what: str) -> Any:
    """The JSON in `path`; a corrupt or unreadable file is one `UserError` naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise UserError(f"{path}: the study's {what} cannot be read ({reason}); restore it from a copy of the "
                        "study, nothing was changed", key="STUDY_DIR") from None


@dataclass(frozen=True)
class StudyDir:
    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    def read_spec(self) -> StudySpec:
        """The study's validated spec, read with the defaults it was made with (see `fakd.spec.load_spec`)."""
        from fakd.spec import load_spec  # the spec's models only where a command needs them, not for `status`

        return load_spec(self.spec, study=True)

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def teachers(self) -> Path:
        return self.root / "teachers"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def training_lock_file(self) -> Path:
        return self.root / TRAINING_LOCK_FILE

    def trial_dir(self, key: str) -> Path:
        """The directory of trial `key` ("search/kd_fakd-003")."""
        return self.trials / key

    def path(self, relative: str) -> Path:
        """A path recorded relative to the study root, resolved at the study's current location."""
        return self.root / relative

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root.resolve()))

    def metadata(self) -> dict[str, Any]:
        data = read_json(self.marker, "metadata file")
        if not isinstance(data, dict):
            raise UserError(f"{self.marker}: not a study metadata file (a JSON object)", key="STUDY_DIR")
        return data

    def update_metadata(self, **values: Any) -> None:
        write_json(self.marker, {**self.metadata(), **values})


def check_no_links_out(study: StudyDir) -> None:
    """No directory a driver or an export writes into is a symbolic link that leads out of the study, and `exports`
    is no link at all (a link to the study itself would let an export overwrite the study's own files): a
    `UserError` naming the first such link; nothing is written before this check."""
    root = study.root.resolve()
    if study.exports.is_symlink():
        raise UserError(f"{study.exports} is a symbolic link (to {os.readlink(study.exports)}); a study writes its "
                        "exports into a directory of its own: replace the link by a directory, nothing was changed",
                        key="STUDY_DIR")
    places = [study.teachers, study.tune, study.trials]
    if study.trials.is_dir() and not study.trials.is_symlink():
        for phase in sorted(study.trials.iterdir()):
            places.append(phase)
            if phase.is_dir() and not phase.is_symlink():
                places += sorted(phase.iterdir())
    for place in places:
        if place.is_symlink() and not place.resolve().is_relative_to(root):
            raise UserError(f"{place} is a symbolic link that leads out of the study (to {place.resolve()}); a driver "
                            "writes only inside the study: move what it holds into the study, nothing was changed",
                            key="STUDY_DIR")


# What a sweep that stopped before it wrote the study's metadata can leave: the lock, the spec, their temporary files.
UNSTARTED = (LOCK_FILE, "spec.yaml", ".spec.yaml.tmp-*", f".{MARKER}.tmp-*", "slurm")
"""What a study directory may hold before its study exists: a stopped sweep's leftovers, `launch.py slurm`'s job."""


def is_unstarted(root: Path) -> bool:
    """Whether `root` holds only what a sweep stopped before creating its study leaves (nothing a study needs)."""
    return all(any(p.match(pattern) for pattern in UNSTARTED) for p in root.iterdir())


def check_new_study_dir(root: Path) -> None:
    """A new study needs an absent or empty directory (or one a sweep stopped before it created the study): an
    existing study is resumed, never overwritten."""
    if root.exists() and (not root.is_dir() or not is_unstarted(root)):
        is_study = StudyDir(root).marker.exists()
        what = "a study" if is_study else "not an empty directory"
        hint = f"; resume it with: python launch.py resume {root}" if is_study else ""
        raise UserError(f"{root} is already {what}{hint}", key="--name")


def enclosing_study(path: str | Path) -> Path | None:
    """The study directory that `path` is (or lies inside), found by its metadata file; None outside every study."""
    resolved = Path(path).expanduser().resolve()
    return next((candidate for candidate in (resolved, *resolved.parents) if (candidate / MARKER).is_file()), None)


def check_outside_studies(path: Path, key: str) -> None:
    """`path`, a place a command is about to create, lies outside every study and can be written (nothing is
    created): only a study's driver writes into a study."""
    inside = enclosing_study(path)
    if inside is not None:
        raise UserError(f"{path} is inside the study directory {inside}, which only its driver writes; choose a place "
                        "outside every study", key=key)
    check_writable_parent(path / "placeholder", key)


def check_writable_parent(path: Path, key: str) -> None:
    """The nearest existing parent of `path` must be a directory we may write into (checked, nothing created)."""
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {path.parent}: {existing} is a file, not a directory", key=key)
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only(existing) else "permission denied"
        raise UserError(f"cannot write to {existing} ({why})", key=key)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def open_study_dir(path: str | Path) -> StudyDir:
    """An existing study directory, or a `UserError` that says what is wrong with `path`."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"no such directory: {root}", key="STUDY_DIR")
    study = StudyDir(root)
    if not study.marker.is_file() or not study.spec.is_file():
        raise UserError(f"{root} is not a study directory (it has no {MARKER} and spec.yaml)", key="STUDY_DIR")
    version = study.metadata().get("format")
    if version != FORMAT:
        raise UserError(f"{root} was written by an older fakd (study format {version or 1}, this version reads "
                        f"{FORMAT}); export it with that version, or start a new study", key="STUDY_DIR")
    return study


def read_lock_holder(study: StudyDir) -> dict[str, Any] | None:
    """Who holds (or last held) the study's driver lock, as written by the holder; None when never locked.

    Reading takes no lock: `status` and `export` never block.
    """
    try:
        text = study.lock_file.read_text().strip()
        return json.loads(text) if text else None
    except (OSError, json.JSONDecodeError):
        return None


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (it did not say which)"
    return (f"{holder.get('command', 'a driver')} (host {holder.get('host')}, PID {holder.get('pid')}, "
            f"since {holder.get('started')})")


def driver_state(study: StudyDir) -> str | None:
    """A line on the driver running the study, read without touching its lock; None when none runs.

    A holder on this host is checked in the kernel's table of locks (`/proc/locks`, else by its PID), so the holder
    named by a stale file (a copied study, a killed driver's) is not reported; a holder on another host of a shared
    file system cannot be checked from here and is reported as named."""
    holder = read_lock_holder(study)
    if not holder:
        return None
    if holder.get("host") == socket.gethostname():
        held = _locked_on_this_host(study.lock_file)
        if held is None:
            try:
                os.kill(int(holder.get("pid", -1)), 0)
                held = True
            except (OSError, ValueError):
                held = False  # it died without clearing the file (the kernel released the lock itself)
        if not held:
            return None
    return f"driven by {describe_holder(holder)}"


def _locked_on_this_host(path: Path) -> bool | None:
    """Whether a process of this host holds an exclusive flock on `path`, from /proc/locks (Linux; read only);
    None where that table cannot be read."""
    try:
        info = path.stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    return any(fields[1:2] == ["FLOCK"] and "WRITE" in fields and where in fields
               for fields in (line.split() for line in table.splitlines()))
