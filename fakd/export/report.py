"""The HTML report of a study: one self-contained file (inline CSS, plots as base64 PNG data URIs, no scripts
and no external resources) that opens offline."""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fakd.export.plots import CAPTIONS
from fakd.export.render import (
    SIGNIFICANT,
    compact,
    decisions,
    html_table,
    mark_significant,
    missing,
    percent,
    render,
    score_cell,
    significant,
)
from fakd.export.stats import mean_ci
from fakd.export.table import ALPHA, AblationTable, budget_of, effective_batch
from fakd.results import TrialRecord
from fakd.results.compute import format_compute, planned_against_spent
from fakd.results.selection import confirmed_scores, select_best, selection_score
from fakd.spec import StudySpec

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 75rem;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.25rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.note { background: #f6f8fa; border-left: 4px solid #8a8f98; padding: .5rem .8rem; white-space: pre-line; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .88rem; margin: .5rem 0; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .25rem .6rem; text-align: left; white-space: nowrap; }
th { background: #f3f4f6; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
ul.decisions li { margin: .3rem 0; } .small { font-size: .85rem; color: #555; }
figure { display: inline-block; margin: .5rem 1rem 1rem 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; max-width: 36rem; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .85rem; }
table.facts th { background: none; font-weight: 600; vertical-align: top; }
table.facts td { white-space: normal; }
b.sig { color: #0a5c2a; } b.sig sup { font-size: .75em; }
"""


SELECTION_HEADER = ["student", "arm", "repeat", "selected trial", "mIoU % [95% CI] (runs)", "runner-up",
                    "mIoU % [95% CI] (runs)", "selected configuration"]


def selection_rows(spec: StudySpec, records: list[TrialRecord]) -> tuple[list[list[str]], bool]:
    """Each (student, arm, repeat)'s selected search trial and its runner-up, with the score each was chosen on: the
    mean [CI] of its confirmation runs where the arm was confirmed, else its one held-out search score; and whether
    any arm was confirmed."""
    confirmed = confirmed_scores(records)
    selected = select_best(records)
    searched: dict[tuple[str, int, str], list[TrialRecord]] = defaultdict(list)
    for record in records:
        if record.phase == "search" and record.final_miou is not None:
            searched[(record.arm, record.repeat, record.student)].append(record)

    def cell(record: TrialRecord | None) -> str:
        if record is None:
            return "-"
        runs = confirmed.get(record.key) or [float(record.final_miou)]
        mean, low, high = mean_ci(runs)
        return f"{score_cell(mean, low, high)} ({len(runs)}{' confirmed' if record.key in confirmed else ''})"

    rows = []
    order = {arm: i for i, arm in enumerate(spec.settings.arms)}
    for group in sorted(selected, key=lambda g: (g[2], order.get(g[0], len(order)), g[1])):
        arm, repeat, student = group
        best = selected[group]
        others = sorted((r for r in searched[group] if r.key != best.key),
                        key=lambda r: (selection_score(r, confirmed), -r.index))
        runner_up = others[-1] if others else None
        values = ", ".join(f"{k}={_short(v)}" for k, v in sorted(best.values.items())) or "(defaults)"
        rows.append([student, arm, str(repeat), best.key, cell(best), runner_up.key if runner_up else "-",
                     cell(runner_up), values])
    return rows, bool(confirmed)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class StudyFacts:
    """What the report's header states: (label, plain text) rows, e.g. ("Teacher", "resnet50, ...")."""

    name: str
    rows: list[tuple[str, str]]


def when(value: Any) -> str:
    """A study.json timestamp ("2025-01-31T14:05:09+0100") as "2025-01-31 14:05 +0100"; "not yet" when absent."""
    if not value:
        return "not yet"
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%S%z").strftime("%Y-%m-%d %H:%M %z")
    except ValueError:
        return str(value)


def _joined(values: set[int]) -> str:
    return "/".join(str(v) for v in sorted(values))


def study_facts(name: str, meta: dict[str, Any], spec: StudySpec, records: list[TrialRecord],
                table: AblationTable) -> StudyFacts:
    """The header of the report: study, teacher, dates, search and retrain budgets, effective batch."""
    teacher = table.frame[table.frame["arm"] == "teacher"].iloc[0]
    score = ("no validation mIoU recorded" if missing(teacher["miou_mean"])
             else f"validation mIoU {percent(teacher['miou_mean'], 2)}%")
    dates = (f"created {when(meta.get('created'))}; search finished {when(meta.get('search_finished'))}; "
             f"retrain finished {when(meta.get('retrain_finished'))}")
    search = spec.settings.search
    repeats = f" × {table.repeats} selection repeats" if table.repeats > 1 else ""
    retrain = [r for r in records if r.phase == "retrain"]
    seeds = len({r.seed for r in retrain})
    budgets = [f"search: {search.num_samples} trials per arm{repeats}, selected on held-out mIoU",
               f"retrain: {seeds} seed{'s' if seeds != 1 else ''} per selected configuration, scored on the "
               "validation split"]
    for budget in table.budgets:
        iters: dict[str, set[int]] = defaultdict(set)
        for r in retrain:
            if budget_of(r) == budget and isinstance(r.train_setting("iters"), int):
                iters[r.arm].add(r.train_setting("iters"))
        if len({_joined(v) for v in iters.values()}) == 1:
            budgets.append(f"{budget}: {_joined(next(iter(iters.values())))} iterations per run, every arm")
        elif iters:
            arms = [arm for arm in spec.settings.arms if arm in iters]
            budgets.append(f"{budget}: " + ", ".join(f"{arm} {_joined(iters[arm])}" for arm in arms) + " iterations")
    rows = [("Study", name), ("Teacher", f"{teacher['student']}, {score}"), ("Dates", dates),
            ("Budgets", "; ".join(budgets)), ("Effective batch", batch_text(table))]
    plan = meta.get("plan")
    if isinstance(plan, dict):
        rows.append(("Compute, spent of planned", "; ".join(format_compute(plan, planned_against_spent(
            plan, records))) + f" (planned hours at each arm's own rate; {plan.get('retrain', '')})"))
    return StudyFacts(name, rows)


def batch_text(table: AblationTable) -> str:
    """The effective batch (train.batch_size × train.accumulate × resources.workers) of the retrained runs, and
    which rows use it where they differ."""
    students = len({student for student, _, _ in table.batches}) > 1
    several = len(table.budgets) > 1
    rows: dict[tuple[int, int], set[str]] = defaultdict(set)
    for (student, arm, budget), pairs in table.batches.items():
        for pair in pairs:
            rows[pair].add(" ".join([student] * students + [arm] + [f"({budget})"] * several))

    def text(pair: tuple[int, int]) -> str:
        workers = f" × resources.workers {table.workers}" if table.workers > 1 else ""
        return (f"{effective_batch((pair,), table.workers)} (train.batch_size {pair[0]} × train.accumulate "
                f"{pair[1]}{workers})")

    if not rows:
        return "not recorded by the retrained runs"
    if len(rows) == 1:
        return f"{text(next(iter(rows)))} in every retrained run"
    return "; ".join(f"{text(pair)}: {', '.join(sorted(labels))}" for pair, labels in sorted(rows.items()))


def data_uri(png: Path) -> str:
    """A PNG file as a data URI (the report embeds its images instead of linking them)."""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _teacher(table: AblationTable) -> str:
    frame = table.frame
    teachers = frame[frame["arm"] == "teacher"]
    if teachers.empty:
        return "<p>No teacher recorded.</p>"
    row = teachers.iloc[0]
    if missing(row["miou_mean"]):
        return f"<p>Teacher <code>{html.escape(str(row['student']))}</code>: not trained yet (no metrics).</p>"
    text = (f"<p>Teacher <code>{html.escape(str(row['student']))}</code>: validation mIoU "
            f"<b>{percent(row['miou_mean'], 2)}%</b>.</p>")
    names = [name for name in table.class_names if not missing(row.get(f"iou_{name}"))]
    if names:
        text += html_table([html.escape(n) for n in names],
                           [[percent(row[f"iou_{n}"], 1) for n in names]], [True] * len(names), "teacher")
        text += '<p class="small">Per-class IoU in % on the validation split.</p>'
    return text


LEGEND = (f'<p class="small"><b class="sig">Bold<sup>{SIGNIFICANT}</sup></b>: a significant difference from the '
          f"base arm, Holm-adjusted p &lt; {ALPHA:g} (paired t-test, adjusted across the study's comparisons).</p>")


def _summary_cells(table: AblationTable) -> list[list[str]]:
    """The compact table's escaped cells, the Δ and p of significant comparisons marked."""
    parts = compact(table)
    marked = [i for i, h in enumerate(parts.header) if h.startswith("Δ") or h.startswith("p (Holm)")]
    cells = [[html.escape(c) for c in row] for row in parts.rows]
    for row_cells, (_, row) in zip(cells, table.frame.iterrows(), strict=True):
        if significant(row):
            for i in marked:
                row_cells[i] = mark_significant(row_cells[i])
    return cells


def html_report(facts: StudyFacts, spec_text: str, table: AblationTable, note: str, plots: list[Path],
                skipped: list[str], selection: tuple[list[list[str]], bool] = ([], False)) -> str:
    """The report's HTML: the study's facts, decisions, compact and full tables (significant comparisons
    marked), teacher, plots (embedded), spec, notes."""
    esc = html.escape
    name = facts.name
    parts = compact(table)
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>fakd study {esc(name)}: ablation report</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
           f"<h1>Ablation report: {esc(name)}</h1>",
           '<p class="small">Validation-split results of the retrained runs of each arm\'s selected configuration '
           "(select-then-retrain); made by <code>launch.py export</code> from the study directory alone.</p>",
           '<table class="facts">',
           *(f"<tr><th>{esc(label)}</th><td>{esc(text)}</td></tr>" for label, text in facts.rows),
           "</table>", f'<div class="note">{esc(note)}</div>']

    out += ["<h2>Decisions</h2>", '<ul class="decisions">']
    sentences = decisions(table)
    out += [f"<li>{esc(sentence)}</li>" for sentence in sentences] or ["<li>No arm has a base arm in this study."
                                                                       "</li>"]
    rule = ("A comparison is decided when its anytime-valid confidence sequence excludes 0 (better or worse) or lies "
            "within the margin (equivalent); the seed count was not fixed in advance, so no fixed-n p-value applies."
            if table.sequential else f"A comparison is resolved when its Holm-adjusted p-value is below {ALPHA:g}.")
    out += ["</ul>", f'<p class="small">{esc(rule)} mIoU differences are in percentage points.</p>']

    out += ["<h2>Summary</h2>", '<div class="scroll">',
            html_table([esc(h) for h in parts.header], _summary_cells(table), parts.right, "compact"), "</div>",
            LEGEND]
    out += [f'<p class="small">{esc(footnote)}</p>' for footnote in parts.footnotes]
    for title, header, rows, right in parts.blocks:
        out += [f"<p>{esc(title)}</p>", '<div class="scroll">',
                html_table([esc(h) for h in header], [[esc(c) for c in row] for row in rows], right, "block"),
                "</div>"]

    rows, confirmed = selection
    if rows:
        how = ("the best mean of its confirmation runs (its top search trials trained again with fresh seeds on the "
               "held-out split)" if confirmed else "the best held-out mIoU of one search run")
        out += ["<h2>Selection</h2>", f'<p class="small">Each arm\'s selected configuration: {how}, next to the '
                "runner-up.</p>", '<div class="scroll">',
                html_table([esc(h) for h in SELECTION_HEADER], [[esc(c) for c in row] for row in rows],
                           [False, False, True, False, False, False, False, False], "selection"), "</div>"]

    out += ["<h2>Teacher</h2>", _teacher(table)]

    out += ["<h2>Full table</h2>", '<p class="small">Every column: scores, deltas, SDs and MDEs are mIoU fractions '
            f"(0–1); hours are {esc(table.hours_column.split('_')[0].upper())} hours; the best mean of each student "
            "and budget in bold; effective_batch is train.batch_size × train.accumulate × resources.workers. The CSV "
            "export has the same columns unrounded.</p>", '<div class="scroll">', render(table.frame, "html"), "</div>",
            LEGEND]

    out.append("<h2>Plots</h2>")
    if not plots:
        out.append("<p>No plots: the study has no data for them yet.</p>")
    order = list(CAPTIONS)
    for plot in sorted(plots, key=lambda p: order.index(p.name) if p.name in order else len(order)):
        caption = CAPTIONS.get(plot.name, plot.stem.replace("_", " "))
        out += [f'<figure><img alt="{esc(plot.stem)}" src="{data_uri(plot)}">',
                f"<figcaption>{esc(caption)}</figcaption></figure>"]
    out += [f'<p class="small">{esc(line)}</p>' for line in skipped]

    out += ["<h2>Spec</h2>", '<p class="small">The study\'s <code>spec.yaml</code> (every override applied).</p>',
            f"<pre>{esc(spec_text)}</pre>", "</body>", "</html>"]
    return "\n".join(out) + "\n"
