"""Export a study directory without changing it: tables to stdout or a file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fakd.export.render import FORMATS, render
from fakd.export.table import AblationTable, build_table
from fakd.spec import load_spec
from fakd.study.layout import open_study_dir
from fakd.study.status import study_trials


@dataclass(frozen=True)
class Export:
    text: str
    table: AblationTable
    note: str
    plots: list[Path] = field(default_factory=list)


def class_names(spec) -> list[str]:  # noqa: ANN001 - StudySpec
    """The dataset's class names (indices when the dataset cannot be opened here)."""
    try:
        from fakd.train.data import build_splits

        return list(build_splits(spec.defaults).class_names)
    except Exception:  # the data may live on another machine: the table is still useful
        count = spec.defaults.data.num_classes
        return [str(i) for i in range(count)]


def export_study(study_path: str | Path, fmt: str = "md", out: str | Path | None = None) -> Export:
    """The ablation table of a study in `fmt`; with `out`, written there with the plots beside it."""
    from fakd.errors import UserError

    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}", key="--format")
    study = open_study_dir(study_path)
    spec = load_spec(study.spec)
    records = study_trials(study)
    table = build_table(spec, study, records, class_names(spec))
    text = render(table.frame, fmt)
    if table.expected == 0:
        note = "no retrained runs yet: run `launch.py retrain STUDY_DIR --seeds N` for the table's statistics"
    elif table.missing:
        note = f"{table.missing} of {table.expected} retrained runs are missing (not finished yet)"
    else:
        note = f"all {table.expected} retrained runs finished"
    plots: list[Path] = []
    if out is not None:
        from fakd.export.plots import write_plots

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        plots, skipped = write_plots(spec, study, records, Path(out).parent)
        note = "\n".join([note, *skipped])
    return Export(text, table, note, plots)
