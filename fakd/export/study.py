"""Export a study directory without changing it: tables to stdout or a file, plots beside the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fakd.errors import UserError
from fakd.export.render import FORMATS, render
from fakd.export.table import AblationTable, build_table
from fakd.results import StudyDir, open_study_dir, read_trials
from fakd.spec import load_spec


@dataclass(frozen=True)
class Export:
    text: str
    table: AblationTable
    note: str
    plots: list[Path] = field(default_factory=list)


def check_output(study: StudyDir, out: str | Path) -> Path:
    """`--out` may not overwrite a directory or a study file: inside the study only `exports/` is allowed."""
    path = Path(out).expanduser().resolve()
    if path.is_dir():
        raise UserError(f"{path} is a directory; --out names the table file to write", key="--out")
    root = study.root.resolve()
    if path.is_relative_to(root) and not path.is_relative_to(study.exports.resolve()):
        raise UserError(f"{path} is inside the study directory; write exports outside it or under "
                        f"{study.exports}", key="--out")
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {path.parent}: {existing} is a file", key="--out")
    return path


def export_study(study_path: str | Path, fmt: str = "md", out: str | Path | None = None) -> Export:
    """The ablation table of a study in `fmt`; with `out`, written there with the plots beside it."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}", key="--format")
    study = open_study_dir(study_path)
    target = check_output(study, out) if out is not None else None
    spec = load_spec(study.spec)
    records = read_trials(study)
    table = build_table(study, spec, records)
    text = render(table.frame, fmt)
    if table.expected == 0:
        note = "no retrained runs yet: run `launch.py retrain STUDY_DIR --seeds N` for the table's statistics"
    elif table.missing:
        note = f"{table.missing} of {table.expected} retrained runs are missing (not finished yet)"
    else:
        note = f"all {table.expected} retrained runs finished"
    plots: list[Path] = []
    if target is not None:
        from fakd.export.plots import write_plots

        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        plots, skipped = write_plots(spec, records, target.parent)
        note = "\n".join([note, *skipped])
    return Export(text, table, note, plots)
