"""One table across studies, as a paper's main table: arms as rows (the teacher first), studies as columns.

A column is one study's (student, budget): labelled "dataset · student" (and the budget where a study has
several), or by `--labels`. A cell is the arm's mean validation mIoU over its retrained seeds, ± the half-width of
its 95% Student-t interval (or ± its seed SD), with the seed count where it differs from the table's usual one.
Each column's best arm is bold. A mark shows each arm decided better than its base arm, with the multiplicity
taken over every comparison of the table, not study by study: the Holm adjustment of the paired t-tests when every
study retrained a fixed number of seeds, else the anytime-valid verdicts at α / m (m the table's comparisons). The
footnote says which. Reading only: no study is changed.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fakd.atomic import write_atomic
from fakd.errors import UserError
from fakd.export.render import latex_escape, latex_table, markdown_table, missing
from fakd.export.stats import holm
from fakd.export.table import ALPHA, AblationTable, build_table
from fakd.results import StudyDir, TrialRecord, open_study_dir, read_trials
from fakd.results.layout import check_writable_parent, enclosing_study
from fakd.results.sequential import METHOD
from fakd.results.verdicts import retrain_scores, study_verdicts, table_comparisons, table_rule
from fakd.spec import StudySpec

SPREADS = ("ci", "sd")
MARK = "*"


@dataclass(frozen=True)
class Cell:
    """One arm in one column: scores are mIoU fractions; `better` is the table-wide decision against the base."""

    n: int
    mean: float
    half_width: float = math.nan
    sd: float = math.nan
    better: bool = False
    best: bool = False


@dataclass(frozen=True)
class Column:
    label: str
    study: Path
    student: str
    budget: str
    dataset: str
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass(frozen=True)
class CrossTable:
    """arms: the rows (teacher first); columns: one per study (student, budget); method: the footnote on the marks;
    comparisons: how many the marks are adjusted over."""

    arms: list[str]
    columns: list[Column]
    method: str
    comparisons: int


@dataclass
class _Study:
    root: StudyDir
    spec: StudySpec
    records: list[TrialRecord]
    table: AblationTable


def _open(path: str | Path) -> _Study:
    study = open_study_dir(path)
    spec = study.read_spec()
    records = read_trials(study)
    if not any(r.phase == "retrain" for r in records):
        raise UserError(f"{study.root} has no retrain runs, so it has no column to give; run `launch.py retrain "
                        f"{study.root} --seeds N` first", key="STUDY_DIR")
    return _Study(study, spec, records, build_table(study, spec, records))


def _check_compatible(studies: list[_Study]) -> None:
    """One study once; two studies of one dataset must score the same classes (else their columns are not the same
    measurement)."""
    seen: dict[Path, int] = {}
    classes: dict[str, tuple[tuple[str, ...], Path]] = {}
    for study in studies:
        root = study.root.root.resolve()
        if root in seen:
            raise UserError(f"{root} is given twice; name each study once", key="STUDY_DIR")
        seen[root] = 1
        dataset = study.spec.defaults.data.name
        names = study.table.class_names
        if dataset in classes and names and classes[dataset][0] and classes[dataset][0] != names:
            raise UserError(f"{root} scores other classes of {dataset} ({len(names)}) than {classes[dataset][1]} "
                            f"({len(classes[dataset][0])}): their mIoU is not the same measurement", key="STUDY_DIR")
        classes.setdefault(dataset, (names, root))


def build_cross_table(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> CrossTable:
    """The table across the studies at `paths`, in that order."""
    studies = [_open(path) for path in paths]
    _check_compatible(studies)
    keys = [(study, student, budget) for study in studies for student in _students(study.table)
            for budget in study.table.budgets]
    if labels is not None and len(labels) != len(keys):
        raise UserError(f"{len(labels)} labels for {len(keys)} columns (one per study, student and budget): "
                        + ", ".join(_default_label(s, student, budget) for s, student, budget in keys),
                        key="--labels")
    sequential = any(study.table.sequential for study in studies)
    comparisons = {id(study): table_comparisons(study.spec, study.records) for study in studies}
    total = sum(len(found) for found in comparisons.values())
    better = _better_sequential(studies, comparisons, total) if sequential else _better_holm(studies)
    arms = ["teacher"] + list(dict.fromkeys(arm for study in studies for arm in study.spec.settings.arms))
    columns = []
    for position, (study, student, budget) in enumerate(keys):
        label = labels[position] if labels is not None else _default_label(study, student, budget)
        cells = _cells(study, student, budget, better)
        columns.append(Column(label, study.root.root, student, budget, study.spec.defaults.data.name, cells))
    if sequential:
        method = (f"{MARK} decided better than its base arm by the {METHOD} at family-wise α = {ALPHA:g} over the "
                  f"table's {total} comparisons ({ALPHA:g}/{total} each), valid at any number of seeds.")
    else:
        method = (f"{MARK} better than its base arm: paired t-test over the seeds both were retrained with, "
                  f"Holm-adjusted over the table's {total} comparisons, p < {ALPHA:g}.")
    return CrossTable(arms, columns, method, total)


def _students(table: AblationTable) -> list[str]:
    frame = table.frame
    return list(dict.fromkeys(frame.loc[frame["arm"] != "teacher", "student"]))


def _default_label(study: _Study, student: str, budget: str) -> str:
    label = f"{study.spec.defaults.data.name} · {student}"
    return f"{label} · {budget}" if len(study.table.budgets) > 1 else label


Key = tuple[int, str, str, str]  # (id of the study, student, arm, budget)


def _better_holm(studies: list[_Study]) -> set[Key]:
    """The comparisons whose paired p-value, Holm-adjusted over the whole table, is below ALPHA, with Δ > 0."""
    found: list[tuple[Key, float, float]] = []
    for study in studies:
        frame = study.table.frame
        for _, row in frame[frame["arm"] != "teacher"].iterrows():
            if "p_value" in row and not missing(row["p_value"]):
                found.append(((id(study), row["student"], row["arm"], row["budget"]), float(row["p_value"]),
                              float(row["delta_vs_base"])))
    adjusted = holm([p for _, p, _ in found])
    return {key for (key, _, delta), p in zip(found, adjusted, strict=True) if p < ALPHA and delta > 0}


def _better_sequential(studies: list[_Study], comparisons: dict[int, list], total: int) -> set[Key]:
    """The comparisons decided `better` by their confidence sequence at ALPHA / total (every comparison of the
    table), each with its study's margin and maximum seed count."""
    better: set[Key] = set()
    for study in studies:
        mine = comparisons[id(study)]
        if not mine:
            continue
        rule = table_rule(study.spec, study.root.metadata(), study.records)
        rule = rule.model_copy(update={"alpha": ALPHA * len(mine) / total})  # so that each is decided at α/total
        verdicts = study_verdicts(study.spec, study.records, mine, rule).verdicts
        better |= {(id(study), student, arm, budget) for (student, arm, budget), found in verdicts.items()
                   if found.decision == "better"}
    return better


def _cells(study: _Study, student: str, budget: str, better: set[Key]) -> dict[str, Cell]:
    frame = study.table.frame
    scores = retrain_scores(study.records)
    cells: dict[str, Cell] = {}
    teacher = frame[frame["arm"] == "teacher"].iloc[0]
    if not missing(teacher["miou_mean"]):
        cells["teacher"] = Cell(1, float(teacher["miou_mean"]))
    rows = frame[(frame["student"] == student) & (frame["budget"] == budget) & (frame["arm"] != "teacher")]
    means = [float(m) for m in rows["miou_mean"] if not missing(m)]
    top = max(means) if means else math.nan
    for _, row in rows.iterrows():
        if missing(row["miou_mean"]):
            continue
        values = list(scores.get((student, row["arm"], budget), {}).values())
        half = (float(row["miou_ci_high"]) - float(row["miou_ci_low"])) / 2 if not missing(row["miou_ci_low"]) \
            else math.nan
        cells[row["arm"]] = Cell(int(row["n"]), float(row["miou_mean"]), half,
                                 float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan,
                                 (id(study), student, row["arm"], budget) in better, float(row["miou_mean"]) == top)
    return cells


# rendering


def _usual_n(table: CrossTable) -> int | None:
    counts = Counter(cell.n for column in table.columns for arm, cell in column.cells.items() if arm != "teacher")
    return counts.most_common(1)[0][0] if counts else None


def _cell_text(cell: Cell | None, arm: str, spread: str, usual: int | None, fmt: str) -> str:
    if cell is None:
        return "–" if fmt != "latex" else "--"
    pm = {"md": " ± ", "html": " ± ", "latex": " $\\pm$ "}[fmt]
    spread_value = cell.half_width if spread == "ci" else cell.sd
    text = f"{100 * cell.mean:.1f}"
    if arm != "teacher" and not math.isnan(spread_value):
        text += f"{pm}{100 * spread_value:.1f}"
    if cell.best:
        text = {"md": "**{}**", "html": "<b>{}</b>", "latex": "\\textbf{{{}}}"}[fmt].format(text)
    if cell.better:
        text += {"md": MARK, "html": f"<sup>{MARK}</sup>", "latex": f"$^{{{MARK}}}$"}[fmt]
    if arm != "teacher" and usual is not None and cell.n != usual:
        text += f" (n={cell.n})" if fmt != "latex" else f" ($n{{=}}{cell.n}$)"
    return text


def footnotes(table: CrossTable, spread: str) -> list[str]:
    usual = _usual_n(table)
    what = "the half-width of its 95% Student-t interval" if spread == "ci" else "the SD over seeds"
    seeds = f" over {usual} retrained seeds (n=… where there are more or fewer)" if usual is not None else ""
    return [f"Validation mIoU in %: mean{seeds} ± {what}; the teacher is one run. Bold: the best arm of each "
            "column.", table.method]


def render_cross(table: CrossTable, fmt: str, spread: str = "ci") -> str:
    """The table in `fmt` (md, latex, html or csv) with its footnotes (csv: one row per cell, unrounded)."""
    if fmt == "csv":
        return _csv(table)
    usual = _usual_n(table)
    escape = {"md": str, "html": html.escape, "latex": latex_escape}[fmt]
    header = ["arm", *(escape(column.label) for column in table.columns)]
    rows = [[escape(arm), *(_cell_text(column.cells.get(arm), arm, spread, usual, fmt) for column in table.columns)]
            for arm in table.arms]
    right = [False] + [True] * len(table.columns)
    notes = footnotes(table, spread)
    if fmt == "md":
        return "\n".join([markdown_table(header, rows, right), "", *notes]) + "\n"
    if fmt == "latex":
        return latex_table(header, rows, right) + "".join(f"% {note}\n" for note in notes)
    return _html_page(header, rows, notes)


def _csv(table: CrossTable) -> str:
    lines = ["column,study,dataset,student,budget,arm,n,miou_mean,ci_half_width,seed_sd,better_than_base,best"]
    for column in table.columns:
        for arm in table.arms:
            cell = column.cells.get(arm)
            if cell is None:
                continue
            values = [column.label, str(column.study), column.dataset, column.student, column.budget, arm,
                      str(cell.n), repr(cell.mean), "" if math.isnan(cell.half_width) else repr(cell.half_width),
                      "" if math.isnan(cell.sd) else repr(cell.sd), str(cell.better).lower(), str(cell.best).lower()]
            lines.append(",".join(f'"{v}"' if "," in v or '"' in v else v for v in values))
    return "\n".join(lines) + "\n"


def _html_page(header: list[str], rows: list[list[str]], notes: list[str]) -> str:
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "\n".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    items = "".join(f"<p>{html.escape(note)}</p>" for note in notes)
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}th,td{padding:.3em .8em;"
             "border-bottom:1px solid #ccc}td+td,th+th{text-align:right}p{color:#444;max-width:60em}")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Ablation table</title>'
            f"<style>{style}</style></head>\n<body>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n"
            f"</tbody>\n</table>\n{items}\n</body></html>\n")


def check_cross_output(out: str | Path) -> Path:
    """`--out` of a table across studies: a file outside every study directory, in a place we may write."""
    path = Path(out).expanduser().resolve()
    if path.is_dir():
        raise UserError(f"{path} is a directory; --out names the table file to write", key="--out")
    inside = enclosing_study(path.parent)
    if inside is not None:
        raise UserError(f"{path} is inside the study directory {inside}; a table across studies is written "
                        "outside every study", key="--out")
    check_writable_parent(path, "--out")
    return path


def export_across(paths: Sequence[str | Path], fmt: str = "md", out: str | Path | None = None, *,
                  labels: Sequence[str] | None = None, spread: str = "ci") -> tuple[str, CrossTable]:
    """The table across `paths` in `fmt`: returned, and with `out` also written there (atomically)."""
    if spread not in SPREADS:
        raise UserError(f"unknown spread {spread!r}; accepted: {', '.join(SPREADS)}", key="--spread")
    target = check_cross_output(out) if out is not None else None
    table = build_cross_table(paths, labels)
    text = render_cross(table, fmt, spread)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, text)
    return text, table
