"""Reading study directories: layout, trial records, Pareto front. No Ray, no torch, no data needed.

`fakd.study` (resume, retrain) and `fakd.export` (tables, plots) both read studies through this package and
never through each other.
"""

from fakd.results.layout import FORMAT, StudyDir, check_new_study_dir, open_study_dir, read_lock_holder
from fakd.results.pareto import front_json, pareto_front
from fakd.results.records import TrialRecord, read_trials
from fakd.vocab import COMPLETE, FAILED, PENDING, PRUNED, RUNNING, TERMINAL

__all__ = [
    "COMPLETE",
    "FAILED",
    "FORMAT",
    "PENDING",
    "PRUNED",
    "RUNNING",
    "TERMINAL",
    "StudyDir",
    "TrialRecord",
    "check_new_study_dir",
    "front_json",
    "open_study_dir",
    "pareto_front",
    "read_lock_holder",
    "read_trials",
]
