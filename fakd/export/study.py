"""Export a study directory without changing it: tables or the HTML report to stdout or a file, plots beside the
file."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fakd.atomic import write_atomic
from fakd.errors import UserError
from fakd.export.render import FORMATS, compact_latex, compact_markdown, decisions, render
from fakd.export.table import AblationTable, build_table
from fakd.results import StudyDir, TrialRecord, open_study_dir, read_trials
from fakd.results.layout import check_no_links_out, check_writable_parent, enclosing_study
from fakd.spec import StudySpec


@dataclass(frozen=True)
class Export:
    """text: what was written to `out`, or what to print without it. note: how many retrained runs finished (and
    which plots were skipped). plots: the PNG files written beside `out`. compact: the compact table with its
    footnotes (Markdown; what `make demo` prints)."""

    text: str
    table: AblationTable
    note: str
    plots: list[Path] = field(default_factory=list)
    compact: str = ""


def check_output(study: StudyDir, out: str | Path) -> Path:
    """`--out` names a file to write, never a directory or a file of a study: inside any study directory only a
    file under the exported study's own `exports/` folder is accepted."""
    check_no_links_out(study)
    path = Path(out).expanduser().resolve()
    if path.is_dir():
        raise UserError(f"{path} is a directory; --out names the table file to write", key="--out")
    exports = study.exports.resolve()
    inside = enclosing_study(path.parent)
    if inside is not None and not (inside == study.root.resolve() and path.parent.is_relative_to(exports)
                                   and path != exports):
        which = "the study directory" if inside == study.root.resolve() else f"the study directory {inside}"
        raise UserError(f"{path} is inside {which}; write exports outside every study, or to a file under "
                        f"{study.exports}/", key="--out")
    check_writable_parent(path, "--out")
    return path


def export_study(study_path: str | Path, fmt: str = "md", out: str | Path | None = None, *,
                 plots: bool = True) -> Export:
    """The ablation table of a study in `fmt`, printed or, with `out`, written there with the plots beside it.

    Without `out`: md prints the compact table, latex the compact tabular, csv the full table (unrounded) and
    html the whole self-contained report (its plots drawn in a temporary directory). With `out`: md writes the
    compact table, the decisions and the full table; csv and latex the full table; html the report; and every
    format writes the plots beside the file (`plots=False` skips them, except for html which embeds them).
    A study without retrain runs has no table: a `UserError` saying what to run, and nothing is written.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}", key="--format")
    study = open_study_dir(study_path)
    target = check_output(study, out) if out is not None else None
    spec = study.read_spec()
    records = read_trials(study)
    if not any(r.phase == "retrain" for r in records):
        raise UserError(f"{study.root} has no retrain runs, so there is no ablation table to export; run "
                        f"`launch.py retrain {study.root} --seeds N` first (N fresh seeds per arm)", key="STUDY_DIR")
    table = build_table(study, spec, records)
    summary = compact_markdown(table)
    if table.missing:
        note = f"{table.missing} of {table.expected} retrained runs are missing (not finished yet)"
    else:
        note = f"all {table.expected} retrained runs finished"
    if target is None:
        if fmt == "html":
            with tempfile.TemporaryDirectory(prefix="fakd-plots-") as scratch:
                text = _report(study, spec, records, table, note, Path(scratch))[0]
        else:
            text = {"md": summary, "latex": compact_latex(table), "csv": render(table.frame, "csv")}[fmt]
        return Export(text, table, note, [], summary)
    target.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if fmt == "html":
        text, written, skipped = _report(study, spec, records, table, note, target.parent)
    else:
        if plots:
            from fakd.export.plots import write_plots

            written, skipped = write_plots(spec, records, target.parent)
        else:
            skipped = []
        text = render(table.frame, fmt)
        if fmt == "md":
            text = _markdown_file(spec.name, summary, decisions(table), text)
    write_atomic(target, text)
    note = "\n".join([note, *skipped])
    return Export(text, table, note, written, summary)


def _markdown_file(name: str, summary: str, sentences: list[str], full: str) -> str:
    """The Markdown export: the compact table, the decisions in words, then the full table."""
    lines = [f"# Ablation table: {name}", "", summary, "", "## Decisions", ""]
    lines += [f"- {sentence}" for sentence in sentences] or ["- no arm has a base arm in this study"]
    return "\n".join([*lines, "", "## Full table", "", full]) + "\n"


def _report(study: StudyDir, spec: StudySpec, records: list[TrialRecord], table: AblationTable, note: str,
            plot_dir: Path) -> tuple[str, list[Path], list[str]]:
    """The HTML report with its plots drawn into `plot_dir` and embedded; the plot files and skip notes."""
    from fakd.export.plots import write_plots
    from fakd.export.report import html_report, selection_rows, study_facts

    written, skipped = write_plots(spec, records, plot_dir)
    meta = study.metadata()
    facts = study_facts(str(meta.get("name") or spec.name), meta, spec, records, table)
    report = html_report(facts, study.spec.read_text(), table, note, written, skipped, selection_rows(spec, records))
    return report, written, skipped
