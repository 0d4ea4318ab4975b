"""Decision-grade exports of synthetic studies written straight to disk (no Ray, no training): the table's
statistics checked against values computed here from the retrain trials' own files, selection stability,
budgets, divergence counts, the compact table's widths and the self-contained HTML report."""

from __future__ import annotations

import base64
import copy
import csv
import hashlib
import html
import io
import json
import math
import re
import shutil
import subprocess
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_SPEC, searched_spec
from scipy import integrate, stats

from fakd import spec_yaml
from fakd.cli import main
from fakd.config import RunConfig
from fakd.export import export_study
from fakd.export.render import WIDTH, compact_markdown
from fakd.export.table import batch_of, build_table
from fakd.results import FORMAT, StudyDir, TrialRecord
from fakd.results.records import OUT_OF_MEMORY, append_result, read_trials, write_trial
from fakd.spec import validate_spec
from fakd.vocab import ARM_TABLE

CLASSES = ["road", "car", "sky", "tree"]
ARMS = ["baseline", "kd", "kd+fakd", "cwd", "cwd+fakd"]
# true mean validation mIoU of each arm; each run adds a seed effect shared by the arms and its own noise
EFFECT = {"baseline": 0.400, "kd": 0.412, "kd+fakd": 0.430, "cwd": 0.405, "cwd+fakd": 0.409}


DATES = {"created": "2025-01-30T09:15:00+0100", "search_finished": "2025-01-30T11:02:41+0100",
         "retrain_finished": "2025-01-30T12:47:05+0100"}


def make_study(root: Path, *, arms: list[str] = ARMS, students: tuple[str, ...] = ("mobilenetv3_small_050",),
               seeds: tuple[int, ...] = (1, 2, 3, 4), repeats: int = 1,
               budgets: tuple[str | None, ...] = ("equal-iters",), diverged: dict[str, int] | None = None,
               pending: int = 0, seed: int = 0, batch: dict[str, tuple[int, int | None]] | None = None,
               retrain_values: bool = True) -> StudyDir:
    """A study directory as the driver leaves it: spec.yaml, study.json, search and retrain trial records.

    batch: arm → (train.batch_size, train.accumulate) of its retrain runs (None: no accumulate key, as older
    records); default 8 × 1. retrain_values=False leaves the retrain records' values empty (older records)."""
    rng = np.random.default_rng(seed)
    study = StudyDir(root)
    spec = searched_spec(arms, selection_repeats=repeats, retrain_seeds=len(seeds))
    spec["name"] = root.name
    if "cwd" in " ".join(arms):
        spec["loss"]["cwd"]["temperature"] = {"choice": [2.0, 4.0]}
    root.mkdir(parents=True)
    study.spec.write_text(spec_yaml.dump(spec))
    meta = {"format": FORMAT, "name": root.name, "data": {"class_names": CLASSES}, **DATES,
            "teacher": {"path": "teachers/x/teacher.pt", "metrics": {"val_miou": 0.6123, "val_iou": [0.9, 0.6, 0.7,
                                                                                                       0.25]}}}
    study.marker.write_text(json.dumps(meta))
    run = {"train": {"iters": 4, "eval_every": 2}}
    diverged = diverged or {}
    chosen: dict[str, dict[str, Any]] = {}  # search key → values of the trial each retrain run retrains
    for student in students:
        for arm in arms:
            slug = ARM_TABLE[arm].slug
            for repeat in range(repeats):
                for index in range(3 + diverged.get(arm, 0)):
                    values = {"train.lr": float(rng.uniform(0.002, 0.05))}
                    if ARM_TABLE[arm].distill:
                        values[f"loss.{ARM_TABLE[arm].distill}.temperature"] = float(rng.choice([2.0, 4.0]) if
                                                                                       arm.startswith("cwd")
                                                                                       else rng.choice([1.0, 2.0]))
                    if ARM_TABLE[arm].fakd:
                        values["loss.fakd.max_strength"] = float(rng.uniform(0.5, 2.0))
                    failed = index >= 3
                    record = TrialRecord(key=f"search/{student}-{slug}-r{repeat}-{index:03d}", phase="search",
                                         arm=arm, index=index, values=values, run=run, student=student, seed=0,
                                         repeat=repeat, state="FAILED" if failed else "COMPLETE",
                                         reason="diverged" if failed else None)
                    write_trial(study, record)
                    chosen[record.key] = values
                    for iteration in (2, 4):
                        row = {"iteration": iteration, "window_seconds": 30.0, "params": 1_000_000 + 1000 * index}
                        row["val_miou"] = math.nan if failed else float(EFFECT[arm] + rng.normal(0, 0.01))
                        append_result(study, record.key, row)
            for repeat in range(repeats):
                selection = rng.normal(0, 0.004)  # what the repeat's selected configuration adds
                source = f"search/{student}-{slug}-r{repeat}-000"
                size, accumulate = (batch or {}).get(arm, (8, 1))
                train = {**run["train"], "batch_size": size} | ({} if accumulate is None else
                                                                {"accumulate": accumulate})
                for budget in budgets:
                    for s in seeds:
                        key = f"retrain/{student}-{slug}-r{repeat}-{budget}-seed{s}"
                        record = TrialRecord(key=key, phase="retrain", arm=arm, index=s,
                                             values=dict(chosen[source]) if retrain_values else {},
                                             run={"train": train}, student=student, seed=s, repeat=repeat,
                                             state="COMPLETE", source=source, budget=budget)
                        write_trial(study, record)
                        # seeds shift every arm alike (pairing removes it); budgets differ a little
                        miou = EFFECT[arm] + 0.01 * math.sin(7 * s) + selection + rng.normal(0, 0.003)
                        miou += 0.002 if budget == "equal-time" else 0.0
                        ious = [float(v) for v in np.clip(miou + rng.normal(0, 0.05, len(CLASSES)), 0, 1)]
                        ious[3] = math.nan if s == seeds[0] else ious[3]  # a class absent from one run's split
                        for iteration in (2, 4):
                            append_result(study, key, {"iteration": iteration, "val_miou": float(miou) - (
                                0.05 if iteration == 2 else 0.0), "val_iou": ious, "window_seconds": 60.0})
    for i in range(pending):  # planned, never run
        write_trial(study, TrialRecord(key=f"retrain/pending-{i}", phase="retrain", arm=arms[0], index=99 + i,
                                       values={}, run=run, student=students[0], seed=99 + i, budget=budgets[0]))
    return study


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def finished_runs(root: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(trial.json, last results.jsonl row) of every finished retrain trial, read straight from its files."""
    found = []
    for trial in sorted((root / "trials" / "retrain").iterdir()):
        record = json.loads((trial / "trial.json").read_text())
        if record["state"] == "COMPLETE":
            found.append((record, json.loads((trial / "results.jsonl").read_text().splitlines()[-1])))
    return found


def group_of(record: dict[str, Any]) -> tuple[str, str, str]:
    return record["student"], record["arm"], record["budget"] or "equal-iters"


def runs_from_files(root: Path) -> dict[tuple[str, str, str], dict[tuple[int, int], float]]:
    """(student, arm, budget) → (repeat, seed) → final validation mIoU."""
    runs: dict[tuple[str, str, str], dict[tuple[int, int], float]] = defaultdict(dict)
    for record, last in finished_runs(root):
        runs[group_of(record)][(record["repeat"], record["seed"])] = last["val_miou"]
    return runs


def power(effect: float, n: int, alpha: float = 0.05) -> float:
    """Two-sided paired t-test power for a standardised effect: T = (Z + effect·√n) / √(V/df) with V ~ χ²(df),
    the normal tails integrated over V (no noncentral t involved)."""
    df = n - 1
    critical, shift = stats.t.ppf(1 - alpha / 2, df), effect * math.sqrt(n)

    def integrand(v: float) -> float:
        scale = critical * math.sqrt(v / df)
        return stats.chi2.pdf(v, df) * (stats.norm.sf(scale - shift) + stats.norm.cdf(-scale - shift))

    return integrate.quad(integrand, 0, np.inf, epsabs=1e-12, epsrel=1e-10, limit=200)[0]


def expected_comparison(arm: dict[tuple[int, int], float], base: dict[tuple[int, int], float]) -> dict[str, Any]:
    """The paired columns computed here: scipy's paired t-test and the t interval of the differences."""
    shared = sorted(set(arm) & set(base))
    ours, theirs = [arm[k] for k in shared], [base[k] for k in shared]
    diffs = np.subtract(ours, theirs)
    n, sd = len(diffs), float(np.std(diffs, ddof=1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return {"paired_n": n, "delta_vs_base": diffs.mean(), "delta_ci_low": diffs.mean() - half,
            "delta_ci_high": diffs.mean() + half, "delta_sd": sd, "p_value": stats.ttest_rel(ours, theirs).pvalue}


def check_power_columns(row: dict[str, str], sd: float) -> None:
    """The MDE has power 0.8 at the row's pairs; seeds_needed is the first n whose power for 1 mIoU is 0.8."""
    n, needed = int(row["paired_n"]), int(row["seeds_needed"])
    assert power(float(row["mde"]) / sd, n) == pytest.approx(0.8, abs=1e-6)
    assert power(0.01 / sd, needed) >= 0.8 - 1e-9
    assert needed == 2 or power(0.01 / sd, needed - 1) < 0.8


def holm_by_hand(p_values: list[float]) -> list[float]:
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p_values[i])
        adjusted[i] = min(1.0, running)
    return list(adjusted)


def csv_rows(study: StudyDir, capsys) -> list[dict[str, str]]:
    assert main(["export", str(study.root), "--format", "csv"]) == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def number(text: str) -> float:
    return float(text) if text != "" else math.nan


def test_table_statistics_match_the_trials_files(tmp_path, capsys):
    study = make_study(tmp_path / "synth", students=("mobilenetv3_small_050", "resnet18"), diverged={"kd+fakd": 2},
                       pending=1)
    before = tree_digest(study.root)
    rows = csv_rows(study, capsys)
    runs = runs_from_files(study.root)
    assert rows[0]["arm"] == "teacher" and float(rows[0]["miou_mean"]) == 0.6123
    assert rows[0]["iou_sky"] == "0.7"
    header = list(rows[0])
    assert header[:7] == ["student", "arm", "budget", "n", "miou_mean", "miou_ci_low", "miou_ci_high"]
    assert not {"repeats", "repeat_sd", "seed_sd"} & set(header), "K == 1: no stability columns"
    assert {"p_holm", "mde", "seeds_needed", "diverged", "cpu_hours"} <= set(header)

    tested = [r for r in rows if r["base_arm"]]
    assert len(tested) == 2 * 4  # (kd, kd+fakd, cwd, cwd+fakd) × 2 students
    for row in rows[1:]:
        group = (row["student"], row["arm"], row["budget"])
        scores = list(runs[group].values())
        assert int(row["n"]) == len(scores) == 4
        half = stats.t.ppf(0.975, 3) * np.std(scores, ddof=1) / 2
        assert float(row["miou_mean"]) == pytest.approx(np.mean(scores), abs=1e-12)
        assert float(row["miou_ci_high"]) == pytest.approx(np.mean(scores) + half, abs=1e-12)
        # per-class IoU: mean over the runs, a class missing from one run averaged over the others
        ious = [last["val_iou"] for record, last in finished_runs(study.root) if group_of(record) == group]
        assert float(row["iou_tree"]) == pytest.approx(np.nanmean(np.array(ious, dtype=float)[:, 3]))
        # compute: 3 search trials (+ diverged ones) × 60 s, 4 retrain runs × 120 s, at 1 CPU per trial
        searches = 3 + (2 if row["arm"] == "kd+fakd" else 0)
        assert float(row["cpu_hours"]) == pytest.approx((searches * 60 + 4 * 120) / 3600)
        assert int(row["diverged"]) == (2 if row["arm"] == "kd+fakd" else 0)
        if row["base_arm"]:
            assert row["base_arm"] == ARM_TABLE[row["arm"]].base
            expected = expected_comparison(runs[group], runs[(row["student"], row["base_arm"], row["budget"])])
            for column, value in expected.items():
                assert number(row[column]) == pytest.approx(value, rel=1e-9, abs=1e-12), column
            check_power_columns(row, expected["delta_sd"])
        else:
            assert row["p_value"] == row["p_holm"] == row["mde"] == ""
    adjusted = holm_by_hand([float(r["p_value"]) for r in tested])
    assert [float(r["p_holm"]) for r in tested] == pytest.approx(adjusted, rel=1e-12)
    assert any(a > float(r["p_value"]) for a, r in zip(adjusted, tested, strict=True))

    # unrounded in the CSV: the mean has all the digits a float has
    assert len(rows[1]["miou_mean"].split(".")[1]) > 6
    assert tree_digest(study.root) == before, "export changed the study directory"


def test_selection_repeats_give_stability_columns(tmp_path, capsys):
    study = make_study(tmp_path / "repeats", arms=["baseline", "kd", "kd+fakd"], repeats=3, seeds=(1, 2, 3))
    rows = csv_rows(study, capsys)
    runs = runs_from_files(study.root)
    for row in rows[1:]:
        scores = runs[(row["student"], row["arm"], row["budget"])]
        by_repeat = [[v for (r, _), v in scores.items() if r == repeat] for repeat in range(3)]
        assert int(row["n"]) == 9 and int(row["repeats"]) == 3
        assert float(row["repeat_sd"]) == pytest.approx(np.std([np.mean(v) for v in by_repeat], ddof=1))
        assert float(row["seed_sd"]) == pytest.approx(np.mean([np.std(v, ddof=1) for v in by_repeat]))
        if row["base_arm"]:
            expected = expected_comparison(scores, runs[(row["student"], row["base_arm"], row["budget"])])
            assert int(row["paired_n"]) == 9
            assert float(row["delta_vs_base"]) == pytest.approx(expected["delta_vs_base"])
            assert float(row["p_value"]) == pytest.approx(expected["p_value"], rel=1e-9)
    text = compact_markdown(build_table(study))
    assert "Selection stability" in text and "SD across repeats" in text
    assert max(len(line) for line in text.splitlines()) <= WIDTH


def test_budgets_are_rows_of_their_own(tmp_path, capsys):
    study = make_study(tmp_path / "budgets", arms=["baseline", "kd", "kd+fakd"], seeds=(1, 2, 3),
                       budgets=("equal-time", "equal-iters"))
    rows = csv_rows(study, capsys)
    assert [(r["arm"], r["budget"]) for r in rows[1:]] == [(arm, budget) for budget in ("equal-iters", "equal-time")
                                                          for arm in ("baseline", "kd", "kd+fakd")]
    runs = runs_from_files(study.root)
    for row in rows[1:]:
        assert float(row["miou_mean"]) == pytest.approx(np.mean(list(runs[(row["student"], row["arm"],
                                                                           row["budget"])].values())))
        # each budget row: the arm's search (3 × 60 s, shared) and its own retrain runs (3 × 120 s)
        assert float(row["retrain_cpu_hours"]) == pytest.approx(3 * 120 / 3600)
        assert float(row["cpu_hours"]) == pytest.approx((3 * 60 + 3 * 120) / 3600)
    assert sum(1 for r in rows if r["p_value"]) == 4  # kd and kd+fakd in each budget: one Holm family of four
    text = compact_markdown(build_table(study))
    assert "equal-time" in text and "budget" in text.splitlines()[0]


def test_records_without_a_budget_are_equal_iters(tmp_path, capsys):
    study = make_study(tmp_path / "legacy", arms=["baseline", "kd"], seeds=(1, 2), budgets=(None,))
    rows = csv_rows(study, capsys)
    assert {r["budget"] for r in rows[1:]} == {"equal-iters"}
    assert int(rows[2]["n"]) == 2


def test_compact_table_is_narrow_and_says_what_p_is(tmp_path, capsys):
    study = make_study(tmp_path / "compact", students=("mobilenetv3_small_050", "efficientnet_lite0"),
                       budgets=("equal-iters", "equal-time"), repeats=2, seeds=(1, 2), diverged={"cwd+fakd": 1},
                       pending=2)
    assert main(["export", str(study.root)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert max(len(line) for line in lines) <= WIDTH, max(lines, key=len)
    assert [cell.strip() for cell in lines[0].split("|")[1:-1]] == [
        "student", "arm", "budget", "n", "mIoU % [95% CI]", "Δ vs base, pp [CI]", "p (Holm)", "decision",
        "CPU hours"]
    assert "Holm-adjusted across the study's 16 tested comparisons" in " ".join(lines)
    assert "anytime-valid t confidence sequence" in captured.out and "0.05/16 per comparison" in captured.out
    assert "diverged trials" in captured.out and "cwd+fakd" in captured.out
    assert "MDE" in captured.out and "seeds" in captured.out
    assert "2 of " in captured.err and "retrained runs are missing" in captured.err
    # a data row: mIoU as a percentage with its interval, e.g. "41.2 [38.9, 43.5]"
    kd = next(line for line in lines if "| kd " in line and "equal-iters" in line)
    assert re.search(r"\d{2}\.\d \[\d{2}\.\d, \d{2}\.\d\]", kd)
    assert re.search(r"[+-]\d+\.\d{1,2}( \[-?\d+\.\d{1,2}, -?\d+\.\d{1,2}\])?", kd)


def sequential_columns(study: StudyDir) -> list[tuple[str, Any, Any, Any, Any]]:
    frame = build_table(study).frame
    rows = frame[frame["base_arm"].notna()]
    return [(r["arm"], r["decision"], None if pd.isna(r["decided_at"]) else int(r["decided_at"]), r["delta_cs_low"],
             r["delta_cs_high"]) for _, r in rows.iterrows()]


def test_every_comparison_has_its_sequential_verdict_from_the_trials_files(tmp_path):
    from fakd.results.sequential import verdict

    study = make_study(tmp_path / "verdicts", seeds=tuple(range(1, 9)))
    runs = finished_runs(study.root)
    score = {(record["arm"], record["seed"]): row["val_miou"] for record, row in runs}
    columns = sequential_columns(study)
    assert len(columns) == 4  # kd, kd+fakd, cwd, cwd+fakd against their base arms
    for arm, decision, decided_at, low, high in columns:
        base = ARM_TABLE[arm].base
        diffs = [score[(arm, s)] - score[(base, s)] for s in range(1, 9)]
        expected = verdict(diffs, margin=0.01, alpha=0.05 / 4, max_n=20)
        assert (decision, decided_at) == (expected.decision, expected.decided_at)
        if math.isfinite(expected.low):
            assert (low, high) == pytest.approx((expected.low, expected.high))
    assert {c[1] for c in columns} & {"better", "worse"}, "the synthetic effects of 1-3 points go undetected"


@pytest.mark.parametrize("meta", [{"retrain_mode": "fixed", "seeds_raised": True}, {"retrain_mode": "sequential"}])
def test_a_table_whose_seed_count_was_not_fixed_shows_verdicts_instead_of_p_values(tmp_path, capsys, meta):
    study = make_study(tmp_path / "raised", seeds=(1, 2, 3, 4, 5, 6))
    study.update_metadata(**meta)
    assert main(["export", str(study.root)]) == 0
    out = capsys.readouterr().out
    header = [cell.strip() for cell in out.splitlines()[0].split("|")[1:-1]]
    assert header[-3:] == ["Δ vs base, pp [CS]", "decision", "CPU hours"] and "p (Holm)" not in header
    raised = "fixed-n p-values no longer apply" in out
    assert raised == bool(meta.get("seeds_raised"))
    assert main(["export", str(study.root), "--format", "html"]) == 0
    report = capsys.readouterr().out
    assert "(anytime-valid)" in report and "decided_at" in report


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "a_student_backbone_with_a_very_long_name_indeed_x"])
def test_compact_table_fits_120_columns(tmp_path, name):
    study = make_study(tmp_path / "wide", students=(name,), budgets=("equal-iters", "equal-time"), seeds=(1, 2, 3))
    text = compact_markdown(build_table(study))
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    assert "| cwd+fakd" in text


def test_md_without_out_prints_the_compact_table_and_with_out_the_full_one(tmp_path, capsys):
    study = make_study(tmp_path / "md", arms=["baseline", "kd", "kd+fakd"], seeds=(1, 2, 3))
    assert main(["export", str(study.root), "--format", "md"]) == 0
    printed = capsys.readouterr().out
    assert "iou_road" not in printed and "p (Holm)" in printed
    out = tmp_path / "exports" / "ablation.md"
    assert main(["export", str(study.root), "--format", "md", "--out", str(out)]) == 0
    written = out.read_text()
    assert "iou_road" in written and "p_holm" in written and "**" in written
    assert "## Decisions" in written and "kd+fakd vs kd: " in written and "(Holm)" in written
    assert main(["export", str(study.root), "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert "\\begin{tabular}" in latex and "iou\\_road" not in latex and "\\toprule" in latex
    out = tmp_path / "exports" / "ablation.tex"
    assert main(["export", str(study.root), "--format", "latex", "--out", str(out)]) == 0
    assert "iou\\_road" in out.read_text() and "\\textbf{" in out.read_text()


def test_html_report_is_one_self_contained_file(tmp_path, capsys):
    study = make_study(tmp_path / "html", arms=["baseline", "kd", "kd+fakd"], seeds=(1, 2, 3), pending=1)
    before = tree_digest(study.root)
    out = tmp_path / "out" / "report.html"
    assert main(["export", str(study.root), "--format", "html", "--out", str(out)]) == 0
    capsys.readouterr()
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    sources = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)""", text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources
    assert "<script" not in text and "<link" not in text and "@import" not in text and "url(" not in text
    assert len(sources) == len(list(out.parent.glob("*.png"))) >= 3  # every plot written is embedded
    for name in ("miou_vs_strength", "importances", "retrain_curves"):
        assert f'alt="{name}"' in text
    assert "Ablation report: html" in text
    assert f"<pre>{html.escape(study.spec.read_text())}</pre>" in text  # the spec, verbatim
    assert "1 of 10 retrained runs are missing" in text
    assert "Teacher <code>test_resnet</code>: validation mIoU <b>61.23%</b>" in text
    assert re.search(r"kd\+fakd vs kd: [+−]\d+\.\d+ mIoU \[−?\d+\.\d+, −?\d+\.\d+\], p [=<] ?[\d.]+ \(Holm\): ", text)
    assert "seeds would detect 1 mIoU" in text and "smallest detectable Δ" in text
    assert "iou_road" in text and "p_holm" in text  # the full table
    # printed without --out: the same report, its plots drawn in a temporary directory
    assert main(["export", str(study.root), "--format", "html"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("data:image/png;base64,") == len(sources)
    assert tree_digest(study.root) == before
    check_balanced(text)


class TagBalance(HTMLParser):
    """Records every end tag that does not close the innermost open element."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input", "col", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.errors.append(tag)


def check_balanced(text: str) -> None:
    """Well-formed: every element closed in order (no browser is needed for that much)."""
    parser = TagBalance()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.open == [], (parser.errors, parser.open)


@pytest.mark.parametrize("retrain_values", [True, False], ids=["values", "older-records"])
def test_strength_plot_scatters_search_and_retrain_points(tmp_path, monkeypatch, retrain_values):
    from fakd.export import plots
    from fakd.results import read_trials

    study = make_study(tmp_path / "plot", arms=["baseline", "kd", "kd+fakd"], seeds=(1, 2),
                       retrain_values=retrain_values)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure) or path)
    records = read_trials(study)
    assert plots.strength_plot(records, tmp_path) is not None
    (axis,) = figures[0].axes
    assert axis.get_lines() == [], "points only, no joining line"
    found = {c.get_label(): c for c in axis.collections}
    search, retrained = found["kd+fakd: search (held-out)"], found["kd+fakd: retrained (validation)"]
    assert len(found) == 2
    by_key = {r.key: r for r in records}
    expected = sorted((by_key[r.source].values["loss.fakd.max_strength"], r.final_miou) for r in records
                      if r.phase == "retrain" and r.arm == "kd+fakd")  # the selected λ, validation mIoU
    assert np.allclose(sorted(map(tuple, retrained.get_offsets().tolist())), expected)
    assert len(search.get_offsets()) == 3
    # one colour per arm, two marker styles: filled search points, open retrain markers
    assert tuple(search.get_facecolor()[0]) == tuple(retrained.get_edgecolor()[0])
    assert len(retrained.get_facecolor()) == 0 or retrained.get_facecolor()[0][3] == 0
    assert search.get_paths()[0].vertices.shape != retrained.get_paths()[0].vertices.shape


def search_trial(arm: str, index: int, state: str, miou: float) -> TrialRecord:
    record = TrialRecord(key=f"search/{arm}-{index}", phase="search", arm=arm, index=index, values={}, run={},
                         student="s", seed=0, state=state)
    record.results = [{"iteration": 2, "val_miou": miou}]
    return record


def test_best_so_far_counts_every_finished_trial_in_index_order(tmp_path, monkeypatch):
    from fakd.export import plots

    records = [search_trial("kd", 10, "COMPLETE", 0.41), search_trial("kd", 3, "COMPLETE", 0.42),
               search_trial("kd", 1, "PRUNED", 0.55), search_trial("kd", 0, "COMPLETE", 0.40),
               search_trial("kd", 2, "FAILED", math.nan), search_trial("kd", 4, "RUNNING", 0.60),
               search_trial("baseline", 1, "COMPLETE", 0.30), search_trial("baseline", 0, "PRUNED", 0.35)]
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure) or path)
    assert plots.best_so_far_plot(records, tmp_path) is not None
    (axis,) = figures[0].axes
    curves = {line.get_label(): line for line in axis.get_lines() if line.get_drawstyle() == "steps-post"}
    # index order (0, 1, 2, 3, 10, not the keys' order); the pruned 0.55 and the running trial never count
    assert list(curves["kd"].get_xdata()) == [1, 2, 3, 4, 5]
    assert list(curves["kd"].get_ydata()) == pytest.approx([0.40, 0.40, 0.40, 0.42, 0.42])
    assert list(curves["baseline"].get_xdata()) == [1, 2]
    assert math.isnan(curves["baseline"].get_ydata()[0]) and curves["baseline"].get_ydata()[1] == 0.30
    assert curves["kd"].get_color() != curves["baseline"].get_color()


def test_export_without_retrain_runs_says_what_to_run(tmp_path, capsys):
    from fakd.export import FORMATS

    study = make_study(tmp_path / "fresh", arms=["baseline", "kd"], seeds=())
    before = tree_digest(study.root)
    elsewhere = tmp_path / "out"
    for fmt in FORMATS:
        for out in (None, elsewhere / f"table.{fmt}", study.exports / f"table.{fmt}"):
            assert main(["export", str(study.root), "--format", fmt, *(["--out", str(out)] if out else [])]) == 2
            captured = capsys.readouterr()
            assert captured.out == "" and captured.err.count("\n") == 1, captured
            assert "has no retrain runs" in captured.err
            assert f"`launch.py retrain {study.root} --seeds N`" in captured.err
    assert not elsewhere.exists() and not study.exports.exists()
    assert tree_digest(study.root) == before
    assert main(["status", str(study.root)]) == 0 and "6 search COMPLETE" in capsys.readouterr().out
    # planned retrain runs, none finished yet: a table (of empty rows) and a note saying what is missing
    write_trial(study, TrialRecord(key="retrain/planned", phase="retrain", arm="kd", index=1, values={},
                                   run={"train": {"iters": 4, "eval_every": 2}}, student="mobilenetv3_small_050",
                                   seed=1))
    assert main(["export", str(study.root)]) == 0
    captured = capsys.readouterr()
    assert "1 of 1 retrained runs are missing" in captured.err
    assert max(len(line) for line in captured.out.splitlines()) <= WIDTH
    assert "kd vs baseline: no paired runs yet." in export_study(study.root, "md", tmp_path / "a.md").text


def test_effective_batch_is_batch_size_times_accumulate(tmp_path, capsys):
    study = make_study(tmp_path / "batch", arms=["baseline", "kd", "kd+fakd"], seeds=(1, 2),
                       batch={"baseline": (16, None), "kd": (4, 4), "kd+fakd": (8, 2)})
    rows = {row["arm"]: row for row in csv_rows(study, capsys)}
    assert rows["teacher"]["effective_batch"] == ""
    assert [rows[arm]["effective_batch"] for arm in ("baseline", "kd", "kd+fakd")] == ["16", "16", "16"]
    report = export_study(study.root, "html").text
    assert ("16 (train.batch_size 4 × train.accumulate 4): kd; 16 (train.batch_size 8 × train.accumulate 2): "
            "kd+fakd; 16 (train.batch_size 16 × train.accumulate 1): baseline") in report
    # one run of kd+fakd retrained with another batch: the row says so
    trial = next((study.trials / "retrain").glob("*kd_fakd*seed2")) / "trial.json"
    record = json.loads(trial.read_text())
    record["run"]["train"].update(batch_size=16, accumulate=2)
    trial.write_text(json.dumps(record))
    rows = {row["arm"]: row for row in csv_rows(study, capsys)}
    assert rows["kd+fakd"]["effective_batch"] == "16/32" and rows["kd"]["effective_batch"] == "16"


def test_data_parallel_trials_count_every_worker_in_batch_and_hours(tmp_path, capsys):
    study = make_study(tmp_path / "one", arms=["baseline", "kd"], seeds=(1, 2))
    single = {row["arm"]: row for row in csv_rows(study, capsys)}
    spec = yaml.safe_load(study.spec.read_text())
    spec["resources"] = {"cpu": 2, "workers": 3}  # three processes of 2 CPUs each per trial
    study.spec.write_text(spec_yaml.dump(spec))
    rows = {row["arm"]: row for row in csv_rows(study, capsys)}
    for arm in ("baseline", "kd"):
        assert rows[arm]["effective_batch"] == str(3 * int(single[arm]["effective_batch"])) == "24"
        assert number(rows[arm]["cpu_hours"]) == pytest.approx(6 * number(single[arm]["cpu_hours"]))
    assert "24 (train.batch_size 8 × train.accumulate 1 × resources.workers 3)" in export_study(study.root,
                                                                                               "html").text


def test_report_states_the_study_and_marks_significant_comparisons(tmp_path, capsys):
    study = make_study(tmp_path / "facts")
    rows = {row["arm"]: row for row in csv_rows(study, capsys)}
    report = export_study(study.root, "html").text
    facts = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td></tr>", report))
    assert facts["Study"] == "facts"
    assert facts["Teacher"] == "test_resnet, validation mIoU 61.23%"
    assert facts["Dates"] == ("created 2025-01-30 09:15 +0100; search finished 2025-01-30 11:02 +0100; "
                              "retrain finished 2025-01-30 12:47 +0100")
    assert facts["Budgets"] == ("search: 2 trials per arm, selected on held-out mIoU; retrain: 4 seeds per "
                                "selected configuration, scored on the validation split; equal-iters: 4 iterations "
                                "per run, every arm")
    assert facts["Effective batch"] == "8 (train.batch_size 8 × train.accumulate 1) in every retrained run"
    significant = {arm for arm, row in rows.items() if row["p_holm"] and float(row["p_holm"]) < 0.05}
    assert significant and significant != {arm for arm, row in rows.items() if row["p_holm"]}, "data: both kinds"
    summary = re.search(r'<table class="compact">.*?</table>', report, re.S).group(0)
    marked = set()
    for row in re.findall(r"<tr>(.*?)</tr>", summary, re.S)[1:]:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        if 'class="sig"' in row:
            marked.add(html.unescape(cells[1]))
            assert cells[4].startswith('<b class="sig">') and cells[5].startswith('<b class="sig">')  # Δ and p
    assert marked == significant
    full = re.search(r'<table class="full">.*?</table>', report, re.S).group(0)
    assert full.count('class="sig"') == 2 * len(significant)
    assert report.count('<b class="sig">Bold<sup>*</sup></b>: a significant difference from the base arm, '
                        "Holm-adjusted p &lt; 0.05") == 2  # the legend under both tables
    names = re.findall(r'<img alt="(\w+)"', report)
    assert names == ["miou_vs_strength", "importances", "best_so_far", "retrain_curves", "pareto"]


def chromium() -> str | None:
    """Debian's chromium, where it is installed."""
    return shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IMAGE_CHECK = """<script>
addEventListener("load", () => {
  const seen = [...document.images].map(i => i.alt + "=" +
    (i.complete && i.naturalWidth > 0 ? i.naturalWidth + "x" + i.naturalHeight : "broken"));
  document.body.setAttribute("data-images", seen.join(" "));
});
</script>"""
"""Injected into a copy of the report only (the report itself has no scripts): each image's decoded size."""


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=120, check=True)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"chromium exited {exc.returncode}: {exc.stderr[-2000:]}")
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish within 120 s")


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (/usr/bin/chromium; .ci/run "
                    "installs it): the report is not rendered in a browser")
@pytest.mark.browser
def test_report_renders_in_a_headless_browser(tmp_path):
    from PIL import Image

    binary = chromium()
    study = make_study(tmp_path / "browser", arms=["baseline", "kd", "kd+fakd"], seeds=(1, 2, 3))
    report = tmp_path / "out" / "report.html"
    text = export_study(study.root, "html", report).text
    images = re.findall(r'<img alt="(\w+)" src="data:image/png;base64,([^"]+)"', text)
    expected = []
    for alt, data in images:
        width, height = Image.open(io.BytesIO(base64.b64decode(data))).size
        expected.append(f"{alt}={width}x{height}")
    assert len(expected) == 5

    # every image decodes in the browser, at its own size
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", IMAGE_CHECK + "\n</body>"))
    dom = run_chromium(binary, tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom",
                       probe.as_uri()).stdout
    seen = re.search(r'data-images="([^"]*)"', dom)
    assert seen, "the page's load event never ran: " + dom[:500]
    assert seen.group(1).split(" ") == expected
    assert "<title>fakd study browser: ablation report</title>" in dom

    # the report itself, as a person sees it: a page, not a blank window
    shot = tmp_path / "report.png"
    run_chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000",
                 report.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.width >= 1000 and image.height >= 1500, image.size
    colours = image.getcolors(maxcolors=image.width * image.height)
    background = max(count for count, _ in colours) / (image.width * image.height)
    assert len(colours) > 50 and background < 0.97, (len(colours), background)


def test_gpu_study_reports_gpu_hours(tmp_path, capsys):
    study = make_study(tmp_path / "gpu", arms=["baseline", "kd"], seeds=(1, 2))
    spec = yaml.safe_load(study.spec.read_text())
    spec = copy.deepcopy(spec)
    spec["resources"] = {"cpu": 4, "gpu": 0.5}
    study.spec.write_text(spec_yaml.dump(spec))
    rows = csv_rows(study, capsys)
    assert "gpu_hours" in rows[0] and float(rows[1]["gpu_hours"]) == pytest.approx(0.5 * (3 * 60 + 2 * 120) / 3600)
    assert main(["export", str(study.root)]) == 0
    assert "GPU hours" in capsys.readouterr().out


def test_report_shows_each_arms_selection_with_its_confirmation_mean_and_the_runner_up(tmp_path, capsys):
    study = make_study(tmp_path / "confirmed", arms=["baseline", "kd"])
    student = "mobilenetv3_small_050"
    scores = {"000": [0.41, 0.43], "001": [0.45, 0.46]}  # the second search trial confirms better
    for arm in ("baseline", "kd"):
        slug = ARM_TABLE[arm].slug
        for index, runs in scores.items():
            source = f"search/{student}-{slug}-r0-{index}"
            for seed, miou in zip((10_000, 10_001), runs, strict=True):
                key = f"confirm/{student}-{slug}-r0-{index}-seed{seed}"
                write_trial(study, TrialRecord(key=key, phase="confirm", arm=arm, index=seed, values={}, run={
                    "train": {"iters": 4, "eval_every": 2}}, student=student, seed=seed, state="COMPLETE",
                    source=source))
                append_result(study, key, {"iteration": 4, "val_miou": miou, "window_seconds": 10.0})
    assert main(["export", str(study.root), "--format", "html"]) == 0
    page = capsys.readouterr().out
    section = page[page.index("<h2>Selection</h2>"):page.index("<h2>Teacher</h2>")]
    assert "best mean of its confirmation runs" in section
    kd = next(row for row in section.split("<tr>") if "<td>kd</td>" in row)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", kd)
    assert cells[3] == f"search/{student}-kd-r0-001" and cells[5] == f"search/{student}-kd-r0-000"
    assert cells[4].startswith("45.5 [") and cells[4].endswith("(2 confirmed)")
    assert cells[6].startswith("42.0 [")


def test_until_decided_needs_a_comparison_and_changes_nothing_without_one(tmp_path, capsys):
    study = make_study(tmp_path / "alone", arms=["baseline"])
    digest = tree_digest(study.root)
    assert main(["retrain", str(study.root), "--until-decided"]) == 2
    err = capsys.readouterr().err
    assert "--until-decided: no arm of this study has its base arm (baseline)" in err and err.count("\n") == 1
    assert tree_digest(study.root) == digest


def test_out_of_memory_trials_are_named_under_the_table_with_batch_and_crop(tmp_path, capsys):
    study = make_study(tmp_path / "oom", arms=["baseline", "kd"], seeds=(1, 2))
    record = next(r for r in read_trials(study, "search") if r.arm == "kd")
    record.state, record.reason, record.error = "FAILED", OUT_OF_MEMORY, "batch 64, crop 512×1024: MemoryError: x"
    write_trial(study, record)
    assert main(["export", str(study.root)]) == 0
    shown = capsys.readouterr().out
    assert f"out of memory (failed, not retried): {record.key} (batch 64, crop 512×1024)" in shown
    assert main(["status", str(study.root)]) == 0
    assert f"FAILED ({OUT_OF_MEMORY})" in capsys.readouterr().out


def test_a_record_gives_its_configuration_typed_and_its_train_settings_defensively():
    spec = validate_spec(copy.deepcopy(TINY_SPEC), "tiny.yaml")
    run = spec.run_config("kd", {"train.lr": 0.03}).model_dump(mode="json")
    record = TrialRecord(key="search/kd-000", phase="search", arm="kd", index=0, values={"train.lr": 0.03}, run=run,
                         student="test_efficientnet", seed=0)
    assert isinstance(record.config, RunConfig) and record.config.train.lr == 0.03 and record.config.arm == "kd"
    assert record.config is record.config  # validated once
    assert record.train_setting("iters") == record.total_iters == TINY_SPEC["train"]["iters"]
    old = TrialRecord(key="search/kd-001", phase="search", arm="kd", index=1, values={}, run={"loss": {}},
                      student="s", seed=0)
    assert old.train_setting("iters") is None and batch_of(old) is None
