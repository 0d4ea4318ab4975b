"""`fakd.tracking`: W&B's mode follows the user's WANDB_MODE, else a configured key; a study run with --no-wandb
tracks nothing; the commit is recorded."""

import json
import re

from conftest import TINY_SPEC

from fakd import tracking
from fakd.results.layout import StudyDir
from fakd.spec import validate_spec


def test_the_mode_is_the_users_else_online_only_with_a_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert not tracking.has_api_key() and tracking.wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password key\n")
    assert tracking.has_api_key() and tracking.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_mode() == "disabled"
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert tracking.has_api_key()


def test_a_study_run_with_no_wandb_tracks_nothing(tmp_path):
    spec = validate_spec({**TINY_SPEC, "tracking": {"wandb": True, "project": "p"}}, "tiny.yaml")
    study = StudyDir(tmp_path)
    study.marker.write_text(json.dumps({"name": "tiny"}))
    assert tracking.effective_tracking(spec, study).wandb
    study.marker.write_text(json.dumps({"name": "tiny", "no_wandb": True}))
    off = tracking.effective_tracking(spec, study)
    assert not off.wandb and off.project == "p"


def test_the_commit_is_the_repositorys_head():
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", tracking.git_commit())
