"""Which search trial an arm selects: pure functions of the study's records (the driver plans the retrain from them,
the report shows them)."""

from __future__ import annotations

import statistics
from collections import defaultdict

from fakd.results.records import TrialRecord

Group = tuple[str, int, str]  # (arm, repeat, student)


def best_search_trials(records: list[TrialRecord], top: int) -> dict[Group, list[TrialRecord]]:
    """The `top` best finished search trials of each (arm, repeat, student), best first; ties go to the earlier
    trial."""
    found: dict[Group, list[TrialRecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.index):
        if record.phase == "search" and record.final_miou is not None:
            found[(record.arm, record.repeat, record.student)].append(record)
    return {group: sorted(trials, key=lambda r: (-r.final_miou, r.index))[:top] for group, trials in found.items()}


def confirmed_scores(records: list[TrialRecord]) -> dict[str, list[float]]:
    """Each confirmed search trial's finished confirmation scores (search key → mIoUs, in seed order)."""
    found: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in records:
        if record.phase == "confirm" and record.source and record.final_miou is not None:
            found[record.source].append((record.seed, record.final_miou))
    return {source: [score for _, score in sorted(pairs)] for source, pairs in found.items()}


def selection_score(record: TrialRecord, confirmed: dict[str, list[float]]) -> tuple[bool, float]:
    """What a search trial is selected on: (True, the mean of its confirmation runs) where it was confirmed, else
    (False, its held-out score); a confirmed trial ranks above every unconfirmed one."""
    runs = confirmed.get(record.key)
    return (True, statistics.fmean(runs)) if runs else (False, float(record.final_miou))


def select_best(records: list[TrialRecord]) -> dict[Group, TrialRecord]:
    """The selected search trial of each (arm, repeat, student): the best mean of its confirmation runs where the
    group was confirmed (the search trial's own score, chosen for being high, is left out of that mean), else the
    best finished search trial; ties go to the earlier trial."""
    confirmed = confirmed_scores(records)
    best: dict[Group, TrialRecord] = {}
    score: dict[Group, tuple[bool, float]] = {}
    for record in sorted(records, key=lambda r: r.index):
        if record.phase != "search" or record.final_miou is None:
            continue
        group = (record.arm, record.repeat, record.student)
        mine = selection_score(record, confirmed)
        if group not in best or mine > score[group]:
            best[group], score[group] = record, mine
    return best
