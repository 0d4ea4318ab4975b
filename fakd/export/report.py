"""The HTML report of a study: one self-contained file (inline CSS, plots as base64 PNG data URIs, no scripts
and no external resources) that opens offline."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from fakd.export.plots import CAPTIONS
from fakd.export.render import compact, decisions, html_table, missing, percent, render
from fakd.export.table import AblationTable

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
"""


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


def html_report(name: str, spec_text: str, table: AblationTable, note: str, plots: list[Path],
                skipped: list[str]) -> str:
    """The report's HTML: decisions, compact and full tables, teacher, plots (embedded), spec, notes."""
    esc = html.escape
    parts = compact(table)
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>fakd study {esc(name)}: ablation report</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
           f"<h1>Ablation report: {esc(name)}</h1>",
           '<p class="small">Validation-split results of the retrained runs of each arm\'s selected configuration '
           "(select-then-retrain); made by <code>launch.py export</code> from the study directory alone.</p>",
           f'<div class="note">{esc(note)}</div>']

    out += ["<h2>Decisions</h2>", '<ul class="decisions">']
    sentences = decisions(table)
    out += [f"<li>{esc(sentence)}</li>" for sentence in sentences] or ["<li>No arm has a base arm in this study."
                                                                       "</li>"]
    out += ["</ul>", '<p class="small">A comparison is resolved when its Holm-adjusted p-value is below 0.05. '
            "mIoU differences are in percentage points.</p>"]

    out += ["<h2>Summary</h2>", '<div class="scroll">',
            html_table([esc(h) for h in parts.header], [[esc(c) for c in row] for row in parts.rows], parts.right,
                       "compact"), "</div>"]
    out += [f'<p class="small">{esc(footnote)}</p>' for footnote in parts.footnotes]
    for title, header, rows, right in parts.blocks:
        out += [f"<p>{esc(title)}</p>", '<div class="scroll">',
                html_table([esc(h) for h in header], [[esc(c) for c in row] for row in rows], right, "block"),
                "</div>"]

    out += ["<h2>Teacher</h2>", _teacher(table)]

    out += ["<h2>Full table</h2>", '<p class="small">Every column: scores, deltas, SDs and MDEs are mIoU fractions '
            f"(0–1); hours are {esc(table.hours_column.split('_')[0].upper())} hours; the best mean of each student "
            "and budget in bold. The CSV export has the same columns unrounded.</p>", '<div class="scroll">',
            render(table.frame, "html"), "</div>"]

    out.append("<h2>Plots</h2>")
    if not plots:
        out.append("<p>No plots: the study has no data for them yet.</p>")
    for plot in plots:
        caption = CAPTIONS.get(plot.name, plot.stem.replace("_", " "))
        out += [f'<figure><img alt="{esc(plot.stem)}" src="{data_uri(plot)}">',
                f"<figcaption>{esc(caption)}</figcaption></figure>"]
    out += [f'<p class="small">{esc(line)}</p>' for line in skipped]

    out += ["<h2>Spec</h2>", '<p class="small">The study\'s <code>spec.yaml</code> (every override applied).</p>',
            f"<pre>{esc(spec_text)}</pre>", "</body>", "</html>"]
    return "\n".join(out) + "\n"
