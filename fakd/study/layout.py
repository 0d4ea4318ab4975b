"""The study directory: everything needed to resume or export a study lives under one path."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fakd.errors import UserError

MARKER = "study.json"


def arm_slug(arm: str) -> str:
    """A directory-safe name for an arm (`kd+fakd` → `kd_fakd`)."""
    return arm.replace("+", "_")


@dataclass(frozen=True)
class StudyDir:
    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def teachers(self) -> Path:
        return self.root / "teachers"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    def experiment(self, arm: str, phase: str = "search") -> Path:
        return self.tune / f"{phase}-{arm_slug(arm)}"

    def done_flag(self, arm: str, phase: str = "search") -> Path:
        return self.root / "done" / f"{phase}-{arm_slug(arm)}"

    def optuna_url(self) -> str:
        return f"sqlite:///{self.root / 'optuna.db'}"

    def metadata(self) -> dict[str, Any]:
        return json.loads(self.marker.read_text())

    def update_metadata(self, **values: Any) -> None:
        data = {**self.metadata(), **values}
        tmp = self.marker.with_name(f".{MARKER}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, self.marker)


def check_new_study_dir(root: Path) -> None:
    """A new study needs an absent or empty directory: an existing study is resumed, never overwritten."""
    if root.exists() and any(root.iterdir()):
        is_study = StudyDir(root).marker.exists()
        what = "a study" if is_study else "a non-empty directory"
        hint = f"; resume it with: python launch.py resume {root}" if is_study else ""
        raise UserError(f"{root} is already {what}{hint}", key="--name")


def create_study_dir(root: Path, raw_spec: dict[str, Any], metadata: dict[str, Any]) -> StudyDir:
    """Create a new study directory; refuse to touch an existing one."""
    check_new_study_dir(root)
    study = StudyDir(root)
    root.mkdir(parents=True, exist_ok=True)
    study.spec.write_text(yaml.safe_dump(raw_spec, sort_keys=False))
    study.marker.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **metadata}, indent=2))
    return study


def open_study_dir(path: str | Path) -> StudyDir:
    """An existing study directory, or a `UserError` that says what is wrong with `path`."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise UserError(f"no such directory: {root}", key="STUDY_DIR")
    study = StudyDir(root)
    if not study.marker.is_file() or not study.spec.is_file():
        raise UserError(f"{root} is not a study directory (it has no {MARKER} and spec.yaml)", key="STUDY_DIR")
    return study
